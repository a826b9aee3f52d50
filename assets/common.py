"""What every asset does around its domain call: load records, account for the teacher, write, describe."""

from __future__ import annotations

from typing import Mapping, Sequence, TypeVar

import dagster as dg

from persona_factory.config import ConfigError, PipelineConfig, code_version
from persona_factory.schema import (
    Dialogue, ImageRecord, Persona, Provenance, QuarantineRow, TeacherFailure, TimelinePlan,
)
from persona_factory.stages.personas import shard_keys
from persona_factory.store import read_records, replace_bookkeeping, write_records
from persona_factory.teacher.client import Teacher, TeacherUnavailable
from persona_factory.teacher.types import TRANSPORT, TeacherRequest, TeacherResult, TeacherStats, failure_kind
from prompts import template_hashes

R = TypeVar("R")

HISTORIES = "histories"
SUPERVISION = "supervision"
BENCHMARK = "benchmark"
QUALITY = "quality"
PUBLISH = "publish"


def failures_of(asset: str, results: Sequence[TeacherResult]) -> list[TeacherFailure]:
    return [TeacherFailure(asset=asset, request_key=r.key, tag=r.tag, reason=r.failure, attempts=r.attempts)
            for r in results if not r.ok]


def finish(con, asset: str, stats: TeacherStats | None, quarantined: Sequence[QuarantineRow] = (),
           results: Sequence[TeacherResult] = (), *, shards: Sequence[str] = ("",),
           owner_shard: Mapping[str, str] | None = None, **metadata) -> dg.MaterializeResult:
    """Records quarantine rows and teacher failures (of the run's shards, each row filed under its owner's
    shard), and reports them with the teacher's accounting."""
    replace_bookkeeping(con, asset, quarantined, failures_of(asset, results), partitions=shards,
                        partition_of=None if owner_shard is None else owner_shard.__getitem__)
    meta = dict(metadata)
    meta["quarantined_rows"] = len(quarantined)
    if stats is not None:
        meta.update(stats.as_metadata())
    return dg.MaterializeResult(metadata=meta)


def answered(asset: str, stats: TeacherStats) -> None:
    """Stops the run, before anything is written, when every request an asset made failed: that is a teacher or
    config problem (a refused schema, a wrong model, a dead engine), not data to replace good rows with."""
    if stats.requests and stats.failures == stats.requests:
        first = stats.first_failure or ""
        recover = "" if failure_kind(first) == TRANSPORT else (
            "; such failures are cached: once fixed, re-run with `teacher.retry_cached_failures: true`")
        raise TeacherUnavailable(f"all {stats.requests} teacher requests failed, the first with: {first} (check "
                                 f"the teacher settings and its log{recover})")


def run_shards(context: dg.AssetExecutionContext, cfg: PipelineConfig) -> list[str]:
    """The shards this run covers; they must exist under the config the run loaded."""
    keys = list(context.partition_keys)
    known = set(shard_keys(cfg))
    if unknown := [k for k in keys if k not in known]:
        raise ConfigError(f"shards {unknown} do not exist under this config ({len(known)} shards from "
                          f"`personas.per_shard`); reload the code location with the config the run uses")
    return keys


def write_shards(con, table: str, records: Sequence, columns: dict, shards: Sequence[str], cfg: PipelineConfig) -> int:
    """Replace the rows of these shards, and drop rows of shards the config no longer has."""
    n = write_records(con, table, records, columns, partition=("shard", shards))
    con.execute(f"DELETE FROM {table} WHERE shard NOT IN (SELECT unnest(?::VARCHAR[]))", [shard_keys(cfg)])
    return n


def provenance(cfg: PipelineConfig, teacher_model: str, *templates: str) -> Provenance:
    return Provenance(teacher_model=teacher_model, prompt_templates=template_hashes(*templates), seed=cfg.seed,
                      code_version=code_version(), preset=cfg.preset, config_hash=cfg.config_hash(),
                      personality_skip_rule=cfg.supervision.personality_skip_rule)


def by_persona(records: Sequence[R]) -> dict[str, list[R]]:
    """Records grouped by their persona, in their given order."""
    out: dict[str, list[R]] = {}
    for r in records:
        out.setdefault(r.persona_id, []).append(r)
    return out


def generate_batched(teacher: Teacher, stats: TeacherStats,
                     requests: Mapping[str, Sequence[TeacherRequest]]) -> dict[str, list[TeacherResult]]:
    """Every owner's requests in one teacher batch (so the engine stays busy), answers handed back per owner."""
    flat = [r for reqs in requests.values() for r in reqs]
    results = iter(teacher.generate(flat, stats) if flat else [])
    return {owner: [next(results) for _ in reqs] for owner, reqs in requests.items()}


def load_histories(con) -> tuple[dict[str, Persona], dict[str, TimelinePlan], dict[str, Dialogue], list[ImageRecord]]:
    personas = {p.persona_id: p for p in read_records(con, "personas", Persona)}
    plans = {p.persona_id: p for p in read_records(con, "timeline_plans", TimelinePlan)}
    dialogues = {d.persona_id: d for d in read_records(con, "dialogues", Dialogue)}
    return personas, plans, dialogues, read_records(con, "image_pool", ImageRecord)
