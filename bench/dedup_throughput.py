"""Dedup throughput: the production DuckDB dedup (quality/dedup.py) on 1M synthetic turns and 100k image hashes,
against datasketch's MinHashLSH on the same turns, each engine in its own process so its peak memory is its own.

    .tools/bin/uv sync --frozen --extra cpu --group dev --group bench
    .venv/bin/python bench/dedup_throughput.py                 # 1M turns, 100k images
    .venv/bin/python bench/dedup_throughput.py --turns 100000  # a quicker look

Turns are random word sequences (10-60 words, Zipf-like word frequencies over 20k words) with planted near
duplicates: copies of 1% of the turns with one or two words replaced. Images are random 64-bit hashes with planted
copies 1-8 bits away (must be found) and 9-12 bits away (must not). Both engines use the same shingles (word
3-grams), permutations, bands and similarity threshold; recall is measured on the planted pairs. The DuckDB time
includes its exact-duplicate pass and text normalisation, which datasketch does not do. Timings exclude data
generation and process start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from persona_factory.config import QualitySettings  # noqa: E402
from quality import dedup  # noqa: E402

VOCABULARY = 20_000
PLANTED_SHARE = 0.01
IMAGE_NEAR, IMAGE_FAR = (1, 8), (9, 12)  # planted Hamming distances that must / must not match


# ---------------------------------------------------------------------------------------------- data


def generate(n_turns: int, n_images: int, folder: Path, seed: int = 0) -> dict:
    """Write turns.parquet, planted.parquet (with each pair's true 3-gram Jaccard) and hashes.parquet."""
    rng = np.random.default_rng(seed)
    n_planted = int(n_turns * PLANTED_SHARE)
    n_base = n_turns - n_planted
    lengths = rng.integers(10, 61, n_base)
    words = np.floor(VOCABULARY * rng.random(lengths.sum()) ** 3).astype(np.int32)  # a few words are very common
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    sources = rng.choice(np.flatnonzero(lengths >= 20), n_planted, replace=False)
    copies = []
    for src in sources:
        ids = words[offsets[src]:offsets[src + 1]].copy()
        for pos in rng.choice(len(ids), rng.integers(1, 3), replace=False):
            ids[pos] = (ids[pos] + 1 + rng.integers(VOCABULARY - 1)) % VOCABULARY  # always a different word
        copies.append(ids)
    all_words = np.concatenate([words, *copies])
    all_offsets = np.concatenate([offsets, offsets[-1] + np.cumsum([len(c) for c in copies])]).astype(np.int64)
    ids = pa.LargeListArray.from_arrays(pa.array(all_offsets), pa.array(all_words))
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.register("word_ids", pa.table({"doc": np.arange(n_turns), "ids": ids}))
    con.execute(f"COPY (SELECT doc, array_to_string(list_transform(ids, lambda w: 'w' || w), ' ') AS text "
                f"FROM word_ids ORDER BY doc) TO '{folder / 'turns.parquet'}' (FORMAT parquet)")
    planted = pa.table({"a": sources.astype(np.int64), "b": np.arange(n_base, n_turns, dtype=np.int64)})
    con.register("planted", planted)
    con.execute(f"""COPY (
        WITH s AS (SELECT doc, list_distinct(list_transform(range(len(ids) - 2),
                       lambda i: hash(ids[i + 1], ids[i + 2], ids[i + 3]))) AS sh FROM word_ids)
        SELECT a, b, len(list_intersect(x.sh, y.sh)) / len(list_distinct(x.sh || y.sh)) AS jaccard
        FROM planted JOIN s x ON x.doc = a JOIN s y ON y.doc = b) TO '{folder / 'planted.parquet'}' (FORMAT parquet)""")

    n_near = n_far = n_images // 100
    base = rng.integers(-(2**63), 2**63 - 1, n_images - n_near - n_far, dtype=np.int64)
    picked = rng.choice(len(base), n_near + n_far, replace=False)
    distances = np.concatenate([rng.integers(IMAGE_NEAR[0], IMAGE_NEAR[1] + 1, n_near),
                                rng.integers(IMAGE_FAR[0], IMAGE_FAR[1] + 1, n_far)])
    flipped = []
    for src, d in zip(picked, distances):
        mask = sum(1 << int(b) for b in rng.choice(64, d, replace=False))
        u = (int(base[src]) & (2**64 - 1)) ^ mask
        flipped.append(u - (1 << 64) if u >= 1 << 63 else u)
    hashes = np.concatenate([base, np.array(flipped, dtype=np.int64)])
    pq.write_table(pa.table({"image_id": [f"i{i:07d}" for i in range(len(hashes))], "phash": hashes}),
                   folder / "hashes.parquet")
    pq.write_table(pa.table({"a": [f"i{i:07d}" for i in picked],
                             "b": [f"i{i:07d}" for i in range(len(base), len(hashes))],
                             "distance": distances}), folder / "image_planted.parquet")
    return {"turns": n_turns, "planted_turn_pairs": n_planted, "images": n_images,
            "planted_image_pairs": {"within": n_near, "beyond": n_far}}


def _recall(found: set[tuple[int, int]], folder: Path, threshold: float) -> dict:
    planted = pq.read_table(folder / "planted.parquet").to_pylist()
    bins = {f">= {threshold + 0.1:.1f}": lambda j: j >= threshold + 0.1,
            f"{threshold:.1f}-{threshold + 0.1:.1f}": lambda j: threshold <= j < threshold + 0.1,
            f"< {threshold:.1f}": lambda j: j < threshold}
    out = {}
    for name, test in bins.items():
        pairs = [(p["a"], p["b"]) for p in planted if test(p["jaccard"])]
        out[name] = {"planted": len(pairs), "found": sum(tuple(sorted(p)) in found for p in pairs)}
    out["other_pairs"] = len(found - {tuple(sorted((p["a"], p["b"]))) for p in planted})
    return out


# ---------------------------------------------------------------------------------------------- engines


def run_duckdb(folder: Path, settings: QualitySettings) -> dict:
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    dedup.install_macros(con)
    dedup.create_decisions(con)
    t0 = time.perf_counter()
    con.execute(f"CREATE TEMP TABLE bench_turns AS SELECT 'd' || doc AS key, 'p' || (doc // 100) AS persona_id, "
                f"'train' AS side, doc AS ord, normalized_text(text) AS text FROM '{folder / 'turns.parquet'}'")
    dedup.text_duplicates(con, "bench_turns", "turn", settings, leaks_across_sides=False)
    t1 = time.perf_counter()
    con.execute(f"CREATE TEMP TABLE image_hashes AS SELECT * FROM '{folder / 'hashes.parquet'}'")
    dedup.image_near_duplicates(con, settings.image_max_hamming)
    t2 = time.perf_counter()
    found = {tuple(sorted((int(a[1:]), int(b[1:])))) for a, b in con.execute(
        "SELECT key_a, key_b FROM dedup_decisions WHERE kind = 'turn'").fetchall()}
    images = set(con.execute("SELECT key_a, key_b FROM dedup_decisions WHERE kind = 'image'").fetchall())
    planted = pq.read_table(folder / "image_planted.parquet").to_pylist()
    within = [p for p in planted if p["distance"] <= settings.image_max_hamming]
    return {"turns_s": round(t1 - t0, 1), "images_s": round(t2 - t1, 1),
            "turn_recall": _recall(found, folder, settings.near_duplicate_similarity),
            "image_recall": {"within": len(within),
                             "found": sum(tuple(sorted((p["a"], p["b"]))) in images for p in within),
                             "beyond_found": sum(tuple(sorted((p["a"], p["b"]))) in images
                                                 for p in planted if p not in within),
                             "image_pairs": len(images)}}


def run_datasketch(folder: Path, settings: QualitySettings, batch: int = 50_000) -> dict:
    from datasketch import LeanMinHash, MinHash, MinHashLSH

    texts = pq.read_table(folder / "turns.parquet", columns=["text"]).column("text")
    n, k = settings.shingle_words, settings.minhash_permutations
    t0 = time.perf_counter()
    lsh = MinHashLSH(threshold=settings.near_duplicate_similarity, num_perm=k,
                     params=(settings.minhash_bands, k // settings.minhash_bands))
    signatures: dict[int, LeanMinHash] = {}
    for start in range(0, len(texts), batch):
        shingled = []
        for doc, text in enumerate(texts.slice(start, batch).to_pylist(), start):
            w = text.split(" ")
            shingles = {" ".join(w[i:i + n]).encode() for i in range(len(w) - n + 1)}
            if len(shingles) >= settings.min_shingles:
                shingled.append((doc, list(shingles)))
        for (doc, _), m in zip(shingled, MinHash.bulk([s for _, s in shingled], num_perm=k)):
            signatures[doc] = LeanMinHash(m)
            lsh.insert(doc, signatures[doc], check_duplication=False)
    found = set()
    for doc, m in signatures.items():
        for other in lsh.query(m):
            if other > doc and m.jaccard(signatures[other]) >= settings.near_duplicate_similarity:
                found.add((doc, other))
    return {"turns_s": round(time.perf_counter() - t0, 1),
            "turn_recall": _recall(found, folder, settings.near_duplicate_similarity)}


# ---------------------------------------------------------------------------------------------- driver


def _child(engine: str, folder: Path) -> dict:
    """Run one engine in a fresh process; its peak RSS comes from the kernel's accounting of that child."""
    out = folder / f"{engine}.json"
    load_before = os.getloadavg()[0]
    proc = subprocess.Popen([sys.executable, __file__, "--engine", engine, "--data", str(folder)])
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{engine} run failed with status {status}")
    return {**json.loads(out.read_text()), "peak_rss_gb": round(usage.ru_maxrss / 1024**2, 2),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}  # the machine is shared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--engine", choices=("duckdb", "datasketch"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    settings = QualitySettings()
    if args.engine:
        run = run_duckdb if args.engine == "duckdb" else run_datasketch
        (args.data / f"{args.engine}.json").write_text(json.dumps(run(args.data, settings)))
        return
    with tempfile.TemporaryDirectory(prefix="dedup-bench-") as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        data = generate(args.turns, args.images, folder)
        data["generation_s"] = round(time.perf_counter() - t, 1)
        results = {"data": data, "settings": settings.model_dump(), "cpus": os.cpu_count(),
                   "duckdb": _child("duckdb", folder), "datasketch": _child("datasketch", folder)}
    results["speedup_turns"] = round(results["datasketch"]["turns_s"] / results["duckdb"]["turns_s"], 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
