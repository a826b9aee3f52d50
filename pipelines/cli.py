"""`python -m pipelines.cli materialize`: run the whole graph once (what `make demo` calls) and say where
every output is. Runs are recorded in $DAGSTER_HOME, so `dagster dev` shows them afterwards."""

from __future__ import annotations

import argparse
import sys

import dagster as dg

from persona_factory.config import ConfigError
from persona_factory.estimate import estimate
from persona_factory.stages.personas import assign_splits, load_seeds

from .definitions import build_definitions
from .partitions import all_shards_tags
from .resources import FactoryConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("materialize", help="materialize every asset and run the blocking checks")
    run.add_argument("--preset", default="tiny")
    run.add_argument("--config", default=None, help="YAML file merged over the preset")
    run.add_argument("--output", default=None, help="output folder (default: output/)")
    run.add_argument("--teacher-url", action="append", default=None,
                     help="OpenAI-compatible teacher endpoint (repeatable); default: start the embedded server")
    run.add_argument("--estimate-only", action="store_true", help="print the expected teacher cost and stop")
    args = parser.parse_args(argv)

    settings = FactoryConfig(preset=args.preset, config_path=args.config, output_dir=args.output,
                             teacher_base_urls=args.teacher_url)
    try:
        cfg = settings.load()
        assign_splits(load_seeds(cfg.persona_source), cfg)  # enough distinct seeds, before anything starts
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Preset {cfg.preset}, teacher {cfg.teacher.model}, expected cost:")
    for line in estimate(cfg).lines():
        print(f"  {line}")
    if args.estimate_only:
        return 0
    defs = build_definitions(settings)
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("factory_job").execute_in_process(
            instance=instance, raise_on_error=False, tags=all_shards_tags(cfg))
    if not result.success:
        for event in result.all_events:
            if event.is_failure and event.event_specific_data is not None:
                print(f"error: {event.step_key}: {event.event_specific_data.error.message.strip()}", file=sys.stderr)
        return 1
    out = cfg.output_path
    print(f"\nAll assets materialized (preset {cfg.preset}, run {result.run_id}).")
    for label, path in [("working database", cfg.duckdb_path), ("Hub-layout dataset", out / "hub"),
                        ("PersonaVLM release layout", out / "native"), ("teacher response cache",
                         out / "teacher_cache.sqlite"), ("embedding cache", out / "embeddings.sqlite"),
                        ("image store", out / "images")]:
        print(f"  {label:28s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
