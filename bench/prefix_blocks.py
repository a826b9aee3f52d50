"""How much does the KV block size matter when prompts share their start? A session's turn requests are sent
together and carry the same persona, statements and recent turns before their own round; one template's label
requests share their instructions. vLLM's prefix cache reuses a shared start in whole blocks only, and its CPU
build defaults to 128-token blocks. This starts one embedded engine per block size in turn and sends each the
same batches, shaped like the factory's: groups of `--group` prompts that share a `--shared-words` start, then
`--own-words` of their own (a batch's last group may be smaller), each writing exactly 64 tokens,
`teacher.max_num_seqs` at once. It prints each block size's rate and its ratio to the first's.

    .venv/bin/python bench/prefix_blocks.py [--block-sizes 128 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.engine_ceiling import context  # noqa: E402
from persona_factory.config import load_config  # noqa: E402
from persona_factory.teacher.embedded import EmbeddedServer  # noqa: E402
from persona_factory.teacher.utilization import full_batch_throughput  # noqa: E402

TOKENS = 64


def batch_prompts(round_: int, sequences: int, group: int, shared_words: int, own_words: int) -> list[str]:
    """`sequences` prompts in groups of `group` sharing a start; nothing is shared across groups or rounds."""
    prompts: list[str] = []
    while len(prompts) < sequences:
        g = len(prompts) // group
        shared = f"User {round_}-{g}: " + context(shared_words, 5000 * round_ + 400 * g)
        prompts += [f"{shared}\nRound {k}: " + context(own_words, 90000 + 5000 * round_ + 400 * g + 50 * k)
                    for k in range(group)]
    return prompts[:sequences]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[128, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--group", type=int, default=5, help="prompts sharing one start (a session's turns)")
    parser.add_argument("--shared-words", type=int, default=170)
    parser.add_argument("--own-words", type=int, default=40)
    args = parser.parse_args()
    base = load_config("tiny").teacher
    rows, first = [], 0.0
    for block_size in args.block_sizes:
        settings = base.model_copy(update={"block_size": block_size})
        with EmbeddedServer(settings, Path(tempfile.mkdtemp()) / "server.log") as server:
            full_batch_throughput(server.base_url, server.served_name, ["warm up"] * settings.max_num_seqs,
                                  "warm-up", tokens=TOKENS, timeout_s=900)
            # every engine gets the same prompts; each round's are new to it, so only a batch's own starts are shared
            measured = [full_batch_throughput(server.base_url, server.served_name, batch_prompts(
                r + 1, settings.max_num_seqs, args.group, args.shared_words, args.own_words), f"round-{r}",
                tokens=TOKENS, timeout_s=900) for r in range(args.rounds)]
        rate = statistics.mean(m.tokens_per_s for m in measured)
        first = first or rate
        prompt_tokens = round(measured[0].prompt_tokens / measured[0].sequences)
        rows.append({"block_size": block_size, "prompt_tokens": prompt_tokens, "tok_s": round(rate, 1),
                     "of_first": round(rate / first, 3)})
        print(f"block size {block_size:4d}: {rate:6.1f} tok/s at a full batch of {settings.max_num_seqs} "
              f"({prompt_tokens} prompt tokens, {args.group} per shared start)   {rows[-1]['of_first']:.3f} "
              f"of the first", flush=True)
    print(json.dumps({"group": args.group, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
