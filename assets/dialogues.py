import dagster as dg
from dagster_duckdb import DuckDBResource

from persona_factory.schema import ImageRecord, TimelinePlan
from persona_factory.stages.dialogues import generate_dialogues
from persona_factory.store import read_records
from persona_factory.teacher.types import TeacherResult, TeacherStats
from pipelines.partitions import SHARD_BACKFILL
from pipelines.resources import FactoryConfig, TeacherResource

from .common import answered, HISTORIES, finish, run_shards, write_shards
from .personas import shard_personas


def dialogues_asset(shards: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(name="dialogues", group_name=HISTORIES, partitions_def=shards, backfill_policy=SHARD_BACKFILL,
              deps=["timeline_plans", "image_pool"],
              description="Multi-session multimodal dialogues realizing each plan, generated session by session "
                          "for all personas of the run at once; turns record the plan items they state.")
    def dialogues(context: dg.AssetExecutionContext, settings: FactoryConfig, teacher: TeacherResource,
                  duckdb: DuckDBResource) -> dg.MaterializeResult:
        cfg = settings.load()
        keys = run_shards(context, cfg)
        with duckdb.get_connection() as con:
            people = shard_personas(con, keys)
            ids = [p.persona_id for p in people]
            plans = read_records(con, "timeline_plans", TimelinePlan,
                                 "WHERE persona_id IN (SELECT unnest(?::VARCHAR[]))", [ids])
            images = read_records(con, "image_pool", ImageRecord)
        stats = TeacherStats()
        failures: list[TeacherResult] = []
        rows, quarantined = generate_dialogues(cfg, teacher.get(), people, plans, images, stats, failures)
        answered("dialogues", stats)
        turns = [t for d in rows for t in d.turns]
        shard_of = {p.persona_id: p.shard for p in people}
        shard = lambda r: shard_of[r.persona_id]  # noqa: E731
        with duckdb.get_connection() as con:
            write_shards(con, "dialogues", rows, {
                "persona_id": ("VARCHAR", lambda d: d.persona_id), "shard": ("VARCHAR", shard),
                "split": ("VARCHAR", lambda d: d.split), "n_turns": ("INTEGER", lambda d: len(d.turns))}, keys, cfg)
            write_shards(con, "dialogue_turns", turns, {
                "persona_id": ("VARCHAR", lambda t: t.persona_id), "shard": ("VARCHAR", shard),
                "session_index": ("INTEGER", lambda t: t.session_index),
                "turn_index": ("INTEGER", lambda t: t.turn_index), "time": ("VARCHAR", lambda t: t.time),
                "user_text": ("VARCHAR", lambda t: t.user), "assistant_text": ("VARCHAR", lambda t: t.assistant),
                "image_id": ("VARCHAR", lambda t: t.image_id), "realizes": ("VARCHAR[]", lambda t: t.realizes)},
                keys, cfg)
            return finish(con, "dialogues", stats, quarantined, failures, shards=keys, owner_shard=shard_of,
                          dialogues=len(rows), turns=len(turns), image_turns=sum(t.image_id is not None for t in turns),
                          realizing_turns=sum(bool(t.realizes) for t in turns),
                          sessions=sum(len(d.sessions) for d in rows))

    return dialogues
