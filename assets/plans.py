from collections import Counter

import dagster as dg

from persona_factory.catalog import IMAGE_POOL, PERSONAS, TIMELINE_PLANS
from persona_factory.readers import read_shards
from persona_factory.stages import plans as stage
from persona_factory.store import read_records
from persona_factory.teacher.types import TeacherStats
from pipelines.jobs import HISTORIES
from pipelines.partitions import SHARD_BACKFILL
from pipelines.resources import FactoryConfig, StoreResource, TeacherResource

from .common import answered, finish, run_shards, shard_batch


def timeline_plans_asset(shards: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(name="timeline_plans", group_name=HISTORIES, partitions_def=shards, backfill_policy=SHARD_BACKFILL,
              deps=["personas", "image_pool"],
              description="Ground-truth timelines: dated items per session, planned shifts, outcomes and drifts.")
    def timeline_plans(context: dg.AssetExecutionContext, settings: FactoryConfig, teacher: TeacherResource,
                       store: StoreResource) -> dg.MaterializeResult:
        cfg = settings.load()
        keys = run_shards(context, cfg)
        with store.get().reader() as con:
            people = read_shards(con, PERSONAS, keys)
            images = read_records(con, IMAGE_POOL)
        stats = TeacherStats()
        results = teacher.get().generate([stage.plan_request(cfg, p) for p in people], stats)
        answered("timeline_plans", stats)
        plans, quarantined = stage.build_plans(cfg, people, results, images)
        shard_of = {p.persona_id: p.shard for p in people}
        batch = shard_batch("timeline_plans", keys, cfg)
        batch.add(TIMELINE_PLANS, plans, shard_of=shard_of)
        kinds: dict[str, int] = {}
        for plan in plans:
            for item in plan.items:
                kinds[item.kind] = kinds.get(item.kind, 0) + 1
        refused = Counter(q.value.split(":")[0] for q in quarantined if q.rule == "plan_value_refused")
        return finish(store.get(), batch, stats, quarantined, results, owner_shard=shard_of,
                      plans=len(plans), items_by_kind=kinds, proposals_refused_by_kind=dict(sorted(refused.items())))

    return timeline_plans
