"""How fast can the embedded engine write at a full batch when its prompts are as long as the factory's? The demo's
utilization line divides by the engine's full-batch rate on a one-line prompt; the factory's own requests carry a
persona, what the user told before and recent turns. This measures, in one run on one embedded engine, the
full-batch rate (`teacher.max_num_seqs` sequences at once, each writing exactly 64 tokens) for prompts of growing
length that share no prefix, against the one-line probe, and prints each rate's ratio to it.

    .venv/bin/python bench/engine_ceiling.py [--context-words 0 150 300 600] [--rounds 2]

A run's mean prompt tokens per request (from its response cache) says which row it sits on:

    .venv/bin/python bench/engine_ceiling.py --cache output/teacher_cache.sqlite
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from persona_factory.config import load_config  # noqa: E402
from persona_factory.teacher.embedded import EmbeddedServer  # noqa: E402
from persona_factory.teacher.utilization import full_batch_throughput, probe_prompts  # noqa: E402

# plain English with no repeated 16-token block at a fixed offset, so prefix caching cannot shorten a prompt
FILLER = ("Maria is a nurse in Lyon who walks to work along the river, cooks for her two brothers on Sundays, keeps "
          "a notebook of recipes from her grandmother, plays tennis on Thursday evenings, and is saving for a trip to "
          "Japan next spring while learning a few words of the language every night before she sleeps. ").split()


def context(words: int, start: int) -> str:
    return " ".join(FILLER[(start + k) % len(FILLER)] for k in range(words))


def run_prompt_tokens(cache: Path) -> float:
    with sqlite3.connect(f"file:{cache}?mode=ro", uri=True) as con:
        prompt, n = con.execute("SELECT sum(prompt_tokens), count(*) FROM responses WHERE ok").fetchone()
    return prompt / n


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--context-words", type=int, nargs="+", default=[0, 150, 300, 600])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=None, help="a run's teacher_cache.sqlite: its mean prompt")
    args = parser.parse_args()
    settings = load_config("tiny").teacher
    rows = []
    with EmbeddedServer(settings, Path(tempfile.mkdtemp()) / "server.log") as server:
        full_batch_throughput(server.base_url, server.served_name, probe_prompts(settings.max_num_seqs), "warm-up",
                              tokens=8)
        rates: dict[int, list[float]] = {w: [] for w in args.context_words}
        prompts: dict[int, float] = {}
        for r in range(args.rounds):  # rounds interleave the lengths, so a drift in load hits all of them
            for words in args.context_words:
                # a different first block in every round and length, so no prompt reuses another's cached blocks
                probe = full_batch_throughput(server.base_url, server.served_name, probe_prompts(
                    settings.max_num_seqs, context(words, 1000 * r + words)), f"round-{r}")
                rates[words].append(probe.tokens_per_s)
                prompts[words] = probe.prompt_tokens / probe.sequences
    base = statistics.mean(rates[args.context_words[0]])
    for words in args.context_words:
        rate = statistics.mean(rates[words])
        rows.append({"context_words": words, "prompt_tokens": round(prompts[words]), "tok_s": round(rate, 1),
                     "of_first_row": round(rate / base, 3)})
        print(f"{prompts[words]:7.0f} prompt tokens  {rate:7.1f} tok/s at a full batch of {settings.max_num_seqs}"
              f"   {rate / base:.3f} of the first row", flush=True)
    out = {"sequences": settings.max_num_seqs, "rows": rows}
    if args.cache is not None:
        out["run_mean_prompt_tokens"] = round(run_prompt_tokens(args.cache), 1)
        print(f"the run's mean prompt: {out['run_mean_prompt_tokens']} tokens per request")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
