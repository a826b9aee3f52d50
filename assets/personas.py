from collections import defaultdict

import dagster as dg

from persona_factory.catalog import PERSONAS
from persona_factory.stages import personas as stage
from persona_factory.teacher.types import TeacherStats
from pipelines.jobs import HISTORIES
from pipelines.partitions import SHARD_BACKFILL
from pipelines.resources import FactoryConfig, StoreResource, TeacherResource

from .common import answered, finish, run_shards, shard_batch


def personas_asset(shards: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(name="personas", group_name=HISTORIES, partitions_def=shards, backfill_policy=SHARD_BACKFILL,
              description="Seeds enriched by the teacher into role, profile and Big Five, per persona shard.")
    def personas(context: dg.AssetExecutionContext, settings: FactoryConfig, teacher: TeacherResource,
                 store: StoreResource) -> dg.MaterializeResult:
        cfg = settings.load()
        keys = run_shards(context, cfg)
        seeds, bad_seeds = stage.read_seeds(cfg.persona_source)
        assigned = [a for a in stage.assign_splits(seeds, cfg) if a.shard in keys]
        requests = [stage.enrichment_request(cfg, a.seed, stage.sample_big_five(cfg, a.seed)) for a in assigned]
        stats = TeacherStats()
        results = teacher.get().generate(requests, stats)
        answered("personas", stats)
        rows, quarantined = stage.build_personas(cfg, assigned, results)
        batch = shard_batch("personas", keys, cfg)
        batch.add(PERSONAS, rows, shard_of={p.persona_id: p.shard for p in rows})
        # the seed source's bad lines are filed under the first shard, so each is recorded once
        first = stage.shard_keys(cfg)[0]
        if first in keys:
            quarantined = bad_seeds + quarantined
        owner = defaultdict(lambda: first, {a.seed.seed_id: a.shard for a in assigned})
        return finish(store.get(), batch, stats, quarantined, results, owner_shard=owner, personas=len(rows),
                      per_split={s: sum(p.split == s for p in rows) for s in ("train", "bench_32k", "bench_128k")})

    return personas
