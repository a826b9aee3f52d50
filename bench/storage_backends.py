"""The Parquet storage backend's overhead against the local DuckDB file: the whole tiny graph (`factory_job`, one
in-process run over every shard) on each backend, every pass from an empty output folder holding a copy of the
same filled response cache, so the teacher answers instantly and what differs is storage. Backends: the DuckDB
file, Parquet on a local folder (file://), Parquet on S3 (moto's server on loopback). Passes alternate backends
round by round, so each sees the same machine load.

    .venv/bin/python bench/storage_backends.py              # 2 rounds
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import dagster as dg  # noqa: E402
import yaml  # noqa: E402

from persona_factory.teacher.embedded import EMBEDDED_SERVED_NAME  # noqa: E402
from pipelines.definitions import build_definitions  # noqa: E402
from pipelines.partitions import all_shards_tags  # noqa: E402
from pipelines.resources import FactoryConfig  # noqa: E402
from tests.fake_openai import FakeOpenAI  # noqa: E402
from tests.fake_teacher import openai_responder  # noqa: E402
from tests.servers import S3_ENV, make_bucket, s3_server  # noqa: E402


def run_graph(work: Path, teacher: str, storage: dict, cache: Path | None) -> float:
    out = work / "output"
    out.mkdir(parents=True)
    if cache is not None:
        shutil.copy(cache, out / "teacher_cache.sqlite")
    config = work / "factory.yaml"
    config.write_text(yaml.safe_dump({"storage": storage}))
    settings = FactoryConfig(preset="tiny", config_path=str(config), output_dir=str(out), teacher_base_urls=[teacher])
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        start = time.monotonic()
        result = defs.resolve_job_def("factory_job").execute_in_process(
            instance=instance, tags=all_shards_tags(settings.load()), raise_on_error=False)
        wall = time.monotonic() - start
    if not result.success:
        raise RuntimeError([e.message for e in result.all_events if e.is_failure])
    return wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ.update(S3_ENV)
    walls: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="pf-storage-") as tmp, s3_server() as s3, \
            FakeOpenAI(EMBEDDED_SERVED_NAME, responder=openai_responder()) as fake:
        root = Path(tmp)
        run_graph(root / "fill", fake.base_url, {"backend": "duckdb"}, None)  # fills the response cache
        cache = root / "fill" / "output" / "teacher_cache.sqlite"
        for r in range(args.rounds):
            make_bucket(s3, f"bench-{r}")
            backends = {"duckdb": {"backend": "duckdb"},
                        "parquet_file": {"backend": "parquet"},
                        "parquet_s3": {"backend": "parquet", "url": f"s3://bench-{r}/run",
                                       "options": {"endpoint_url": s3}}}
            for name, storage in backends.items():
                wall = run_graph(root / f"{name}-{r}", fake.base_url, storage, cache)
                walls.setdefault(name, []).append(round(wall, 1))
                print(json.dumps({"round": r, "backend": name, "wall_s": round(wall, 1)}), flush=True)
    median = {k: statistics.median(v) for k, v in walls.items()}
    print(json.dumps({"wall_s": walls, "median_wall_s": median,
                      "parquet_file_vs_duckdb": round(median["parquet_file"] / median["duckdb"], 2),
                      "parquet_s3_vs_duckdb": round(median["parquet_s3"] / median["duckdb"], 2),
                      "load_avg": os.getloadavg()}))


if __name__ == "__main__":
    main()
