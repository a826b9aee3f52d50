"""Shard runs on 1 vs 2 Celery workers: the same shards of the tiny graph, launched one run per shard
through CeleryRunLauncher on the cluster of tests/cluster.py (Postgres instance and response cache, Parquet on S3,
Redis broker, all on loopback), against the schema-following fake teacher with a fixed latency per request, so
that the teacher, not this machine's cores, bounds a shard run. Each pass starts a fresh cluster (empty cache,
empty bucket) and times the shard runs from submission until every shard run succeeded; passes alternate 1, 2, 1, 2
workers so both see the same machine load.

    .venv/bin/python bench/shard_workers.py                       # 4 shards, 1.0 s per request, 2 rounds
    .venv/bin/python bench/shard_workers.py --latency 2 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from persona_factory.teacher.embedded import EMBEDDED_SERVED_NAME  # noqa: E402
from tests.cluster import LocalCluster  # noqa: E402
from tests.fake_openai import FakeOpenAI, Reply  # noqa: E402
from tests.fake_teacher import openai_responder  # noqa: E402
from tests.servers import S3_ENV, postgres, redis_server, s3_server  # noqa: E402


def one_pass(workers: int, shards: int, servers: tuple[str, str, str], teacher: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="pf-bench-") as tmp:
        # tiny with one persona per shard: 4 shards
        config = {"personas": {"per_shard": 1}} if shards == 4 else {}
        with LocalCluster(Path(tmp), *servers, [teacher], workers=workers, max_runs=workers, config=config) as c:
            c.launch("images_job")
            c.wait_for_runs("images_job")
            start = time.monotonic()
            c.launch_shards("shard_job", [f"shard-{i:03d}" for i in range(shards)])
            runs = c.wait_for_runs("shard_job", n=shards, timeout_s=7200)
            wall = time.monotonic() - start
            return {"workers": workers, "shards": shards, "wall_s": round(wall, 1),
                    "runs": len(runs), "workers_used": len({c.worker_of(r) for r in runs})}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per teacher request")
    parser.add_argument("--rounds", type=int, default=2, help="1-worker/2-worker pairs")
    args = parser.parse_args()
    os.environ.update(S3_ENV)
    respond = openai_responder()
    requests = {"n": 0}

    def slow(body: dict) -> Reply:
        requests["n"] += 1
        return Reply.ok(respond(body), delay_s=args.latency)

    results = []
    with postgres() as pg, redis_server() as broker, s3_server() as s3, \
            FakeOpenAI(EMBEDDED_SERVED_NAME, responder=slow) as fake:
        for _ in range(args.rounds):
            for workers in (1, 2):
                requests["n"] = 0
                result = one_pass(workers, 4, (pg, broker, s3), fake.base_url)
                result["teacher_requests"] = requests["n"]
                results.append(result)
                print(json.dumps(result), flush=True)
    wall = {w: statistics.median(r["wall_s"] for r in results if r["workers"] == w) for w in (1, 2)}
    print(json.dumps({"latency_s": args.latency, "median_wall_s": wall,
                      "speedup_2_vs_1": round(wall[1] / wall[2], 2), "load_avg": os.getloadavg()}))


if __name__ == "__main__":
    main()
