from collections import defaultdict

import dagster as dg
from dagster_duckdb import DuckDBResource

from persona_factory.stages import personas as stage
from persona_factory.store import read_records
from persona_factory.schema import Persona
from persona_factory.teacher.types import TeacherStats
from pipelines.partitions import SHARD_BACKFILL
from pipelines.resources import FactoryConfig, TeacherResource

from .common import answered, HISTORIES, finish, run_shards, write_shards


def personas_asset(shards: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(name="personas", group_name=HISTORIES, partitions_def=shards, backfill_policy=SHARD_BACKFILL,
              description="Seeds enriched by the teacher into role, profile and Big Five, per persona shard.")
    def personas(context: dg.AssetExecutionContext, settings: FactoryConfig, teacher: TeacherResource,
                 duckdb: DuckDBResource) -> dg.MaterializeResult:
        cfg = settings.load()
        keys = run_shards(context, cfg)
        seeds, bad_seeds = stage.read_seeds(cfg.persona_source)
        assigned = [a for a in stage.assign_splits(seeds, cfg) if a.shard in keys]
        requests = [stage.enrichment_request(cfg, a.seed, stage.sample_big_five(cfg, a.seed)) for a in assigned]
        stats = TeacherStats()
        results = teacher.get().generate(requests, stats)
        answered("personas", stats)
        rows, quarantined = stage.build_personas(cfg, assigned, results)
        with duckdb.get_connection() as con:
            write_shards(con, "personas", rows, {
                "persona_id": ("VARCHAR", lambda p: p.persona_id), "split": ("VARCHAR", lambda p: p.split),
                "shard": ("VARCHAR", lambda p: p.shard), "name": ("VARCHAR", lambda p: p.profile.name)}, keys, cfg)
            # the seed source's bad lines are filed under the first shard, so each is recorded once
            first = stage.shard_keys(cfg)[0]
            if first in keys:
                quarantined = bad_seeds + quarantined
            owner = defaultdict(lambda: first, {a.seed.seed_id: a.shard for a in assigned})
            return finish(con, "personas", stats, quarantined, results, shards=keys, owner_shard=owner,
                          personas=len(rows),
                          per_split={s: sum(p.split == s for p in rows) for s in ("train", "bench_32k", "bench_128k")})

    return personas


def shard_personas(con, keys: list[str]) -> list[Persona]:
    """The personas of these shards, as the personas asset wrote them."""
    return read_records(con, "personas", Persona, "WHERE shard IN (SELECT unnest(?::VARCHAR[]))", [keys])
