import dagster as dg
from dagster_duckdb import DuckDBResource

from persona_factory.stages import alignment as stage
from persona_factory.store import write_records
from persona_factory.teacher.types import TeacherStats
from pipelines.resources import FactoryConfig, TeacherResource

from .common import SUPERVISION, finish, load_histories


@dg.asset(group_name=SUPERVISION, deps=["dialogues"],
          description="Chosen (fits the current personality) vs rejected (generic or another profile) replies.")
def alignment_pairs(settings: FactoryConfig, teacher: TeacherResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    cfg = settings.load()
    with duckdb.get_connection() as con:
        personas, plans, dialogues, _ = load_histories(con)
    stats, t = TeacherStats(), teacher.get()
    rows, results, failed = [], [], 0
    for pid in sorted(dialogues):
        current = stage.current_personality(personas[pid], plans[pid])
        specs = stage.pair_specs(cfg, personas[pid], current)
        res = t.generate(stage.reply_requests(cfg, personas[pid], specs), stats)
        pairs, n = stage.build_pairs(personas[pid], specs, res)
        rows += pairs
        results += res
        failed += n
    with duckdb.get_connection() as con:
        write_records(con, "alignment_pairs", rows, {
            "pair_id": ("VARCHAR", lambda p: p.pair_id), "persona_id": ("VARCHAR", lambda p: p.persona_id),
            "rejected_kind": ("VARCHAR", lambda p: p.rejected_kind)})
        return finish(con, "alignment_pairs", stats, (), results, pairs=len(rows), dropped_pairs=failed)
