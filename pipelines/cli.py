"""`python -m pipelines.cli materialize`: run the whole graph once (what `make demo` calls) and say where
every output is. Runs are recorded in $DAGSTER_HOME, so `dagster dev` shows them afterwards.

A failure the user can fix (a setting, an input file, the teacher endpoint) ends with one line on stderr naming
the setting, file or line: exit 2 when it is found before the run starts, 1 when the run fails. `--debug` adds the
full trace; Dagster's event log in $DAGSTER_HOME always has it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
import warnings
from typing import NoReturn

import dagster as dg
from dagster_shared.error import SerializableErrorInfo

from persona_factory.catalog import QUARANTINE, TEACHER_FAILURES
from persona_factory.config import ConfigError, PipelineConfig, UserError, user_error_names
from persona_factory.estimate import estimate
from persona_factory.preflight import over_budget, preflight
from persona_factory.store import open_store
from persona_factory.teacher.utilization import Throughput, end_to_end_utilization, run_completion_tokens

from .definitions import build_definitions
from .partitions import all_shards_tags
from .resources import FactoryConfig, throughput_path

REFUSED, FAILED = 2, 1  # exit codes: nothing started / the run failed


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, like every other refusal (argparse adds its usage)
        self.exit(REFUSED, f"error: {message} (see `{self.prog} --help`)\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m pipelines.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("materialize", help="materialize every asset and run the blocking checks")
    run.add_argument("--preset", default="tiny")
    run.add_argument("--config", default=None, help="YAML file merged over the preset")
    run.add_argument("--output", default=None, help="output folder (default: output/)")
    run.add_argument("--teacher-url", action="append", default=None,
                     help="OpenAI-compatible teacher endpoint (repeatable); default: start the embedded server")
    run.add_argument("--estimate-only", action="store_true", help="print the expected teacher cost and stop")
    run.add_argument("--max-requests", type=_positive, default=None,
                     help="refuse to start when the estimate exceeds this many teacher requests "
                          "(default: setting teacher.max_requests)")
    run.add_argument("--yes", action="store_true", help="start even when the estimate exceeds the request budget")
    run.add_argument("--debug", action="store_true", help="show Dagster's log and full traces")
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            if not args.debug:
                warnings.simplefilter("ignore")  # library warnings are not the user's to act on; --debug shows them
            return materialize(args)
    except UserError as e:
        return _report(" ".join(str(e).split()), REFUSED, args.debug)
    except Exception as e:  # a bug, not a user mistake: still one line unless --debug
        if args.debug:
            raise
        return _report(f"unexpected {type(e).__name__}: {_one_line(str(e))} (rerun with --debug for the trace)",
                       FAILED, False)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive number of requests")
    return value


def _report(message: str, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    return code


def materialize(args: argparse.Namespace) -> int:
    settings = FactoryConfig(preset=args.preset, config_path=args.config, output_dir=args.output,
                             teacher_base_urls=args.teacher_url, measure_teacher=True)
    cfg = settings.load()
    skipped_seeds = preflight(cfg)
    cost = estimate(cfg)
    print(f"Preset {cfg.preset}, teacher {cfg.teacher.model}, expected cost:")
    for line in cost.lines():
        print(f"  {line}")
    if skipped_seeds:
        print(f"  {len(skipped_seeds)} seed lines cannot be used and will be quarantined, e.g. "
              f"{skipped_seeds[0].row_key}: {skipped_seeds[0].value}")
    if args.estimate_only:
        return 0
    too_many = over_budget(cost, args.max_requests or cfg.teacher.max_requests)
    if too_many and not (args.yes or _confirmed(too_many)):
        raise ConfigError(too_many)
    job = build_definitions(settings).resolve_job_def("factory_job")
    run_config = {}
    if not args.debug:  # progress lines instead of Dagster's console log (kept in $DAGSTER_HOME either way)
        job, run_config = job.with_logger_defs({"progress": progress_logger}), {"loggers": {"progress": {}}}
    with dg.DagsterInstance.get() as instance:
        start = time.monotonic()
        result = job.execute_in_process(run_config=run_config, instance=instance, raise_on_error=False,
                                        tags=all_shards_tags(cfg))
        wall_s = time.monotonic() - start
    if not result.success:
        print(f"error: {failure_line(result)}", file=sys.stderr)
        return FAILED
    _summary(cfg, result.run_id)
    print(utilization_line(result, wall_s, Throughput.load(throughput_path(cfg), result.run_id)))
    return 0


def utilization_line(result: dg.ExecuteInProcessResult, wall_s: float, probe: Throughput | None) -> str:
    """The run's end-to-end teacher utilization, when the run started its own engine and measured it."""
    metadata = {e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
                for e in result.get_asset_materialization_events()}
    tokens = run_completion_tokens(metadata)
    if probe is None:
        return (f"  teacher: {tokens:,} completion tokens generated; utilization not measured (the run started no "
                "embedded engine of its own: the cache or an external endpoint answered)")
    run_s = wall_s - probe.seconds  # the probe ran inside the run, after its work
    return (f"  teacher utilization {end_to_end_utilization(tokens, run_s, probe.tokens_per_s):.2f}: {tokens:,} "
            f"completion tokens in {run_s:.0f} s of run, against {probe.tokens_per_s:.1f} tokens/s at a full batch "
            f"of {probe.sequences} (measured on the same engine after the run)")


def _confirmed(why: str) -> bool:
    if not sys.stdin.isatty():
        return False
    print(why.split(":")[0] + ".")
    return input("Start anyway? [y/N] ").strip().lower() in ("y", "yes")


def failure_line(result: dg.ExecuteInProcessResult) -> str:
    """One line for the first failed step: the asset's own error (unwrapped from Dagster's step error), or, for
    a bug, its type and where to find the trace."""
    failures = [e for e in result.all_events
                if (e.is_step_failure or e.is_resource_init_failure) and getattr(e.event_specific_data, "error", None)]
    if not failures:
        return f"run {result.run_id} failed; `dagster dev` shows its log"
    first = failures[0]
    error = cause(first.event_specific_data.error)
    more = f" (and {len(failures) - 1} more failed steps)" if len(failures) > 1 else ""
    where = first.step_key or "run"
    if error.cls_name in user_error_names():
        return f"{where}: {_message(error)}{more}"
    return (f"{where}: unexpected {error.cls_name}: {_message(error)}{more} (the trace: rerun with --debug, or run "
            f"{result.run_id} in `dagster dev`)")


def cause(error: SerializableErrorInfo) -> SerializableErrorInfo:
    """The user error in a failure's cause chain (Dagster wraps what an asset raised in its step error), else the
    innermost cause."""
    chain = [error]
    while chain[-1].cause is not None:
        chain.append(chain[-1].cause)
    names = user_error_names()
    return next((e for e in chain if e.cls_name in names), chain[-1])


def _message(error: SerializableErrorInfo) -> str:
    text = error.message.strip()
    _, sep, rest = text.partition(f"{error.cls_name}: ")  # format_exception_only's "module.Class: " prefix
    return _one_line(rest if sep else text)


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Progress(logging.Handler):
    """One stdout line per finished step and per message an asset logs; failures are left to the CLI's line."""

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", None) or {}
        event = meta.get("dagster_event")
        if event is not None and event.is_step_success:
            print(f"  {event.step_key} done in {event.event_specific_data.duration_ms / 1000:.1f} s", flush=True)
        elif event is None and record.levelno == logging.INFO:
            print(f"  {meta.get('step_key') or 'run'}: {meta.get('orig_message', record.getMessage())}", flush=True)


@dg.logger(description="Progress on stdout: a line per finished step and per message an asset logs.")
def progress_logger(_context: dg.InitLoggerContext) -> logging.Logger:
    log = logging.Logger("persona_factory.progress", logging.DEBUG)
    log.addHandler(_Progress())
    return log


def _summary(cfg: PipelineConfig, run_id: str) -> None:
    out = cfg.output_path
    print(f"\nAll assets materialized (preset {cfg.preset}, run {run_id}).")
    tables = cfg.duckdb_path if cfg.storage.backend == "duckdb" else (cfg.storage.url or out / "tables")
    for label, path in [("working tables", tables), ("Hub-layout dataset", out / "hub"),
                        ("PersonaVLM release layout", out / "native"), ("teacher response cache",
                         out / "teacher_cache.sqlite"), ("embedding cache", out / "embeddings.sqlite"),
                        ("image store", out / "images")]:
        print(f"  {label:28s} {path}")
    with open_store(cfg).reader() as con:
        quarantined, failed = (con.execute(f"SELECT count(*) FROM {t.name}").fetchone()[0]
                               for t in (QUARANTINE, TEACHER_FAILURES))
    if quarantined or failed:
        print(f"  {quarantined} rows quarantined (table `quarantine`), {failed} teacher requests failed (table "
              "`teacher_failures`); see README, \"When something goes wrong\"")


if __name__ == "__main__":
    sys.exit(main())
