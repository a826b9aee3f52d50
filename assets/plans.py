import dagster as dg
from dagster_duckdb import DuckDBResource

from persona_factory.schema import Persona
from persona_factory.stages import plans as stage
from persona_factory.store import read_records, write_records
from persona_factory.teacher.types import TeacherStats
from pipelines.resources import FactoryConfig, TeacherResource

from .common import HISTORIES, finish


@dg.asset(group_name=HISTORIES, deps=["personas"],
          description="Ground-truth timelines: dated items, sessions, planned preference shifts and personality drifts.")
def timeline_plans(settings: FactoryConfig, teacher: TeacherResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    cfg = settings.load()
    with duckdb.get_connection() as con:
        people = read_records(con, "personas", Persona)
    stats = TeacherStats()
    results = teacher.get().generate([stage.plan_request(cfg, p) for p in people], stats)
    plans, quarantined = stage.build_plans(cfg, people, results)
    with duckdb.get_connection() as con:
        write_records(con, "timeline_plans", plans, {"persona_id": ("VARCHAR", lambda p: p.persona_id),
                                                     "n_items": ("INTEGER", lambda p: len(p.items)),
                                                     "n_sessions": ("INTEGER", lambda p: len(p.sessions))})
        kinds: dict[str, int] = {}
        for plan in plans:
            for item in plan.items:
                kinds[item.kind] = kinds.get(item.kind, 0) + 1
        return finish(con, "timeline_plans", stats, quarantined, results, plans=len(plans), items_by_kind=kinds)
