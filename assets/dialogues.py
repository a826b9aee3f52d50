import dagster as dg
from dagster_duckdb import DuckDBResource

from persona_factory.schema import ImageRecord, Persona, TimelinePlan
from persona_factory.stages.dialogues import generate_dialogues
from persona_factory.store import read_records, write_records
from persona_factory.teacher.types import TeacherStats
from pipelines.resources import FactoryConfig, TeacherResource

from .common import HISTORIES, finish


@dg.asset(group_name=HISTORIES, deps=["timeline_plans", "image_pool"],
          description="Multi-session multimodal dialogues realizing each plan; turns record the plan items they state.")
def dialogues(settings: FactoryConfig, teacher: TeacherResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    cfg = settings.load()
    with duckdb.get_connection() as con:
        people = read_records(con, "personas", Persona)
        plans = read_records(con, "timeline_plans", TimelinePlan)
        images = read_records(con, "image_pool", ImageRecord)
    stats = TeacherStats()
    rows, quarantined = generate_dialogues(cfg, teacher.get(), people, plans, images, stats)
    turns = [t for d in rows for t in d.turns]
    with duckdb.get_connection() as con:
        write_records(con, "dialogues", rows, {"persona_id": ("VARCHAR", lambda d: d.persona_id),
                                               "split": ("VARCHAR", lambda d: d.split),
                                               "n_turns": ("INTEGER", lambda d: len(d.turns))})
        write_records(con, "dialogue_turns", turns, {
            "persona_id": ("VARCHAR", lambda t: t.persona_id), "session_index": ("INTEGER", lambda t: t.session_index),
            "turn_index": ("INTEGER", lambda t: t.turn_index), "time": ("VARCHAR", lambda t: t.time),
            "user_text": ("VARCHAR", lambda t: t.user), "assistant_text": ("VARCHAR", lambda t: t.assistant),
            "image_id": ("VARCHAR", lambda t: t.image_id), "realizes": ("VARCHAR[]", lambda t: t.realizes)})
        return finish(con, "dialogues", stats, quarantined, dialogues=len(rows), turns=len(turns),
                      image_turns=sum(t.image_id is not None for t in turns),
                      realizing_turns=sum(bool(t.realizes) for t in turns))
