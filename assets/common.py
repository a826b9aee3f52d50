"""What every asset does around its domain call: account for the teacher, write its batch, describe."""

from __future__ import annotations

from typing import Mapping, Sequence

import dagster as dg

from persona_factory.config import ConfigError, PipelineConfig
from persona_factory.schema import QuarantineRow, TeacherFailure
from persona_factory.stages.personas import shard_keys
from persona_factory.store import Batch, Store
from persona_factory.teacher.client import Teacher, TeacherUnavailable
from persona_factory.teacher.types import TRANSPORT, TeacherRequest, TeacherResult, TeacherStats, failure_kind


def failures_of(asset: str, results: Sequence[TeacherResult]) -> list[TeacherFailure]:
    return [TeacherFailure(asset=asset, request_key=r.key, tag=r.tag, reason=r.failure, attempts=r.attempts)
            for r in results if not r.ok]


def finish(store: Store, batch: Batch, stats: TeacherStats | None, quarantined: Sequence[QuarantineRow] = (),
           results: Sequence[TeacherResult] = (), *, owner_shard: Mapping[str, str] | None = None,
           **metadata) -> dg.MaterializeResult:
    """Adds the quarantine rows and teacher failures (each filed under its owner's shard) to the asset's batch,
    commits it, and reports them with the teacher's accounting."""
    batch.add_bookkeeping(quarantined, failures_of(batch.writer, results),
                          None if owner_shard is None else lambda o: owner_shard.get(o, batch.partitions[0]))
    store.commit(batch)
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


def run_assets(context: dg.AssetExecutionContext) -> set[dg.AssetKey]:
    """The assets this run materializes."""
    return set(context.run.asset_selection or context.job_def.asset_layer.executable_asset_keys)


def shard_batch(asset: str, shards: Sequence[str], cfg: PipelineConfig) -> Batch:
    """What a shard asset writes: the rows of these shards; rows of shards the config no longer has are dropped."""
    return Batch(asset, tuple(shards), keep=tuple(shard_keys(cfg)))


def generate_batched(teacher: Teacher, stats: TeacherStats,
                     requests: Mapping[str, Sequence[TeacherRequest]]) -> dict[str, list[TeacherResult]]:
    """Every owner's requests in one teacher batch (so the engine stays busy), answers handed back per owner."""
    flat = [r for reqs in requests.values() for r in reqs]
    results = iter(teacher.generate(flat, stats) if flat else [])
    return {owner: [next(results) for _ in reqs] for owner, reqs in requests.items()}
