from collections import Counter

import dagster as dg
from dagster_duckdb import DuckDBResource

from persona_factory.schema import ImageRecord
from persona_factory.stages import plans as stage
from persona_factory.store import read_records
from persona_factory.teacher.types import TeacherStats
from pipelines.partitions import SHARD_BACKFILL
from pipelines.resources import FactoryConfig, TeacherResource

from .common import answered, HISTORIES, finish, run_shards, write_shards
from .personas import shard_personas


def timeline_plans_asset(shards: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(name="timeline_plans", group_name=HISTORIES, partitions_def=shards, backfill_policy=SHARD_BACKFILL,
              deps=["personas", "image_pool"],
              description="Ground-truth timelines: dated items per session, planned shifts, outcomes and drifts.")
    def timeline_plans(context: dg.AssetExecutionContext, settings: FactoryConfig, teacher: TeacherResource,
                       duckdb: DuckDBResource) -> dg.MaterializeResult:
        cfg = settings.load()
        keys = run_shards(context, cfg)
        with duckdb.get_connection() as con:
            people = shard_personas(con, keys)
            images = read_records(con, "image_pool", ImageRecord)
        stats = TeacherStats()
        results = teacher.get().generate([stage.plan_request(cfg, p) for p in people], stats)
        answered("timeline_plans", stats)
        plans, quarantined = stage.build_plans(cfg, people, results, images)
        shard_of = {p.persona_id: p.shard for p in people}
        with duckdb.get_connection() as con:
            write_shards(con, "timeline_plans", plans, {
                "persona_id": ("VARCHAR", lambda p: p.persona_id), "shard": ("VARCHAR", lambda p: shard_of[p.persona_id]),
                "n_items": ("INTEGER", lambda p: len(p.items)), "n_sessions": ("INTEGER", lambda p: len(p.sessions)),
                "n_turns": ("INTEGER", lambda p: sum(s.n_turns for s in p.sessions))}, keys, cfg)
            kinds: dict[str, int] = {}
            for plan in plans:
                for item in plan.items:
                    kinds[item.kind] = kinds.get(item.kind, 0) + 1
            refused = Counter(q.value.split(":")[0] for q in quarantined if q.rule == "plan_value_refused")
            return finish(con, "timeline_plans", stats, quarantined, results, shards=keys, owner_shard=shard_of,
                          plans=len(plans), items_by_kind=kinds, proposals_refused_by_kind=dict(sorted(refused.items())))

    return timeline_plans
