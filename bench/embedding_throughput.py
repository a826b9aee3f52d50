"""Embedding throughput and what embedding retrieval adds to a build, side by side in one run.

    .venv/bin/python bench/embedding_throughput.py                        # synthetic texts only
    .venv/bin/python bench/embedding_throughput.py --db output/pipeline.duckdb   # plus the stage costs of a build

1. Throughput (texts/s) on the same texts, torch at `--threads` threads, the best of `--rounds` alternating passes:
   the pipeline's `TextEmbedder` (forward passes of exactly 16 texts padded to a multiple of 8 tokens, so a vector
   depends on its text alone), sentence-transformers' own `encode` with its default batch of 32 (length-sorted,
   padded to the batch's longest: vectors depend on the batch), and one text at a time as PersonaVLM's retriever
   calls it. Texts are
   shaped like the ones retrieval embeds: keyword lists (2-6 words), memory sentences (8-25 words) and questions
   (6-14 words), drawn from the planner's vocabulary, all distinct.
2. Exact search: the numpy squared-L2 top-k of stages/retrieval.py against FAISS `IndexFlatL2`, per query, over a
   user's memories of one kind (100 vectors: a 100-turn history; 1,000 and 5,000: far longer ones).
3. With `--db` (a built `pipeline.duckdb`): what the reasoning stage and the question dedup add, on an empty
   embedding cache: loading the model (import included, in a fresh process), embedding every text the probes'
   searches need, running the probes with both retrievers against the keyword retriever alone, and the dedup's
   embedding pass. Timings exclude reading the database.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from persona_factory.embeddings import BATCH_ROWS, DIM, TextEmbedder, load_encoder  # noqa: E402
from persona_factory.stages.retrieval import nearest  # noqa: E402

SHAPES = ((2, 6), (8, 25), (6, 14))  # keywords, memory sentences, questions


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    from persona_factory.stages.plans import vocabulary

    vocab = vocabulary()
    words = sorted({w for v in vocab.values() for item in (v if isinstance(v, list) else list(v))
                    for w in str(item).replace(",", " ").split()})
    rng = random.Random(seed)
    texts: set[str] = set()
    while len(texts) < n:
        lo, hi = SHAPES[len(texts) % 3]
        texts.add(" ".join(rng.choice(words) for _ in range(rng.randint(lo, hi))))
    return sorted(texts)


def best_rates(methods: dict, n: int, rounds: int) -> dict[str, float]:
    """Per method, items per second: the best of `rounds` passes, the methods alternating within each round (other
    work on a shared machine only ever slows a pass down)."""
    best = dict.fromkeys(methods, float("inf"))
    for _ in range(rounds):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: n / seconds for name, seconds in best.items()}


def throughput(texts: list[str], rounds: int) -> dict:
    encoder = load_encoder()
    encoder.encode(texts[:64], batch_size=32)  # warm-up
    rows = best_rates({
        "pipeline (TextEmbedder, fixed-shape batches of 16)": lambda: TextEmbedder().embed(texts),
        "sentence-transformers encode, batch 32": lambda: encoder.encode(texts, batch_size=32),
        "sentence-transformers encode, one text at a time": lambda: [encoder.encode([t]) for t in texts],
    }, len(texts), rounds)
    base = rows["sentence-transformers encode, batch 32"]
    for name, value in rows.items():
        print(f"  {name:52s} {value:7.1f} texts/s   ratio {value / base:.2f}", flush=True)
    return {name: round(value, 1) for name, value in rows.items()}


def search(rounds: int) -> dict:
    import faiss

    rng = np.random.default_rng(0)
    out = {}
    for n in (100, 1_000, 5_000):
        vectors = rng.normal(size=(n, DIM)).astype(np.float32)
        queries = rng.normal(size=(200, DIM)).astype(np.float32)
        index = faiss.IndexFlatL2(DIM)
        index.add(vectors)
        rates = best_rates({"numpy": lambda: [nearest(q, vectors, 4) for q in queries],
                            "faiss": lambda: [index.search(q[None, :], 4) for q in queries]}, len(queries), rounds)
        ours, theirs = rates["numpy"], rates["faiss"]
        print(f"  {n:5d} memories: numpy {ours:8.0f} queries/s   FAISS IndexFlatL2 {theirs:8.0f} queries/s   "
              f"ratio {ours / theirs:.2f}", flush=True)
        out[n] = {"numpy_queries_s": round(ours), "faiss_queries_s": round(theirs)}
    return out


def load_seconds() -> float:
    """Import and load the model in a fresh process, as a build's first embedding does."""
    code = ("import time; t = time.perf_counter(); from persona_factory.embeddings import load_encoder; "
            "load_encoder(); print(time.perf_counter() - t)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def stage_costs(db: Path) -> dict:
    """What embedding retrieval and the embedding dedup add to a build's reasoning and curation stages."""
    import duckdb

    from assets.common import by_persona, load_histories
    from persona_factory.config import load_config
    from persona_factory.schema import SemanticMemoryTarget
    from persona_factory.stages import reasoning
    from persona_factory.stages.distractors import Pools
    from persona_factory.stages.retrieval import KeywordRetriever, retrievers
    from persona_factory.store import read_records
    from quality import dedup

    cfg = load_config("tiny")
    keyword_cfg = load_config("tiny", overrides={"supervision": {"retriever": "keyword"}})
    with duckdb.connect(str(db), read_only=True) as con:
        personas, plans, dialogues, images = load_histories(con)
        semantic = by_persona(read_records(con, "semantic_memory_targets", SemanticMemoryTarget))
        user_data = {pid: json.loads(u) for pid, u in con.execute(
            "SELECT persona_id, user_data FROM memory_db WHERE split = 'train' ORDER BY persona_id").fetchall()}
    owners = [pid for pid in sorted(user_data) if pid in plans]
    pools = Pools.of(plans.values(), images)
    by_image = {i.image_id: i for i in images}
    out: dict[str, float] = {"model import and load (fresh process)": load_seconds()}
    with tempfile.TemporaryDirectory() as tmp:
        embedder = TextEmbedder(Path(tmp) / "embeddings.sqlite")
        t0 = time.perf_counter()
        texts = [t for pid in owners for t in reasoning.search_texts(cfg, personas[pid], dialogues[pid], plans[pid],
                                                                      semantic.get(pid, []), user_data[pid])]
        embedder.embed(texts)
        out["embedding the probes' texts"] = time.perf_counter() - t0

        def jobs(run_cfg, found_by) -> float:
            t = time.perf_counter()
            for pid in owners:
                reasoning.prepare_jobs(run_cfg, personas[pid], dialogues[pid], plans[pid], semantic.get(pid, []),
                                       user_data[pid], pools, by_image, found_by)
            return time.perf_counter() - t

        keyword_only = jobs(keyword_cfg, {"keyword": KeywordRetriever()})
        both = jobs(cfg, retrievers(embedder))
        out["probes: both retrievers minus keyword alone"] = both - keyword_only
        with duckdb.connect() as work:
            work.execute(f"ATTACH '{db}' AS built (READ_ONLY)")
            for table in ("benchmark_items", "personas", "dialogue_turns", "sft_records", "rl_records"):
                work.execute(f"CREATE TABLE {table} AS SELECT * FROM built.{table}")
            dedup.install_macros(work)
            dedup.run_script(work, "dedup_units")
            work.execute("CREATE TEMP TABLE exact_pairs (key_b VARCHAR)")  # the pass alone: no pairs found before it
            work.execute("CREATE TEMP TABLE near_pairs (key_a VARCHAR, key_b VARCHAR)")
            t0 = time.perf_counter()
            dedup.embedding_pairs(work, TextEmbedder(Path(tmp) / "dedup.sqlite"),
                                  cfg.quality.question_embedding_similarity)
            out["dedup: embedding the benchmark questions"] = time.perf_counter() - t0
        out["texts embedded for retrieval"] = embedder.encoded
    for name, value in out.items():
        print(f"  {name:48s} {value:9.3f}", flush=True)
    added = sum(v for k, v in out.items() if k != "texts embedded for retrieval")
    print(f"  {'added wall time':48s} {added:9.3f} s", flush=True)
    return {k: round(v, 3) for k, v in out.items()} | {"added_s": round(added, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--db", type=Path, help="a built pipeline.duckdb (tiny preset) for the stage costs")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    texts = synthetic_texts(args.texts)
    print(f"Embedding {len(texts)} distinct texts, torch {args.threads} threads, best of {args.rounds} "
          f"(batches of {BATCH_ROWS} in the pipeline), 1-minute load {os.getloadavg()[0]:.1f}:", flush=True)
    result = {"throughput_texts_s": throughput(texts, args.rounds)}
    print("Exact top-4 search, one query at a time:", flush=True)
    result["search"] = search(args.rounds)
    if args.db:
        print(f"Stage costs on {args.db} (seconds):", flush=True)
        result["stage_costs"] = stage_costs(args.db)
    print(f"1-minute load at the end: {os.getloadavg()[0]:.1f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
