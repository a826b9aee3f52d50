import dagster as dg
from dagster_duckdb import DuckDBResource

from persona_factory.schema import SemanticMemoryTarget
from persona_factory.stages import reasoning as stage
from persona_factory.store import read_records, write_records
from persona_factory.teacher.types import TeacherStats
from pipelines.resources import FactoryConfig, TeacherResource

from .common import SUPERVISION, finish, load_histories


@dg.asset(group_name=SUPERVISION, deps=["memory_db"],
          description="Think/retrieve/answer trajectories with retrieval executed over the replayed memory.")
def reasoning_trajectories(settings: FactoryConfig, teacher: TeacherResource,
                           duckdb: DuckDBResource) -> dg.MaterializeResult:
    cfg = settings.load()
    with duckdb.get_connection() as con:
        personas, plans, dialogues, _ = load_histories(con)
        semantic = read_records(con, "semantic_memory_targets", SemanticMemoryTarget)
    stats, t = TeacherStats(), teacher.get()
    rows, results = [], []
    for pid, dialogue in dialogues.items():
        if personas[pid].split != "train":
            continue
        jobs = stage.prepare_jobs(cfg, dialogue, plans[pid], [s for s in semantic if s.persona_id == pid])
        res = t.generate(stage.answer_requests(cfg, personas[pid], jobs), stats)
        rows += stage.build_trajectories(personas[pid], jobs, res)
        results += res
    with duckdb.get_connection() as con:
        write_records(con, "reasoning_trajectories", rows, {
            "probe_id": ("VARCHAR", lambda r: r.probe_id), "persona_id": ("VARCHAR", lambda r: r.persona_id),
            "answer_verified": ("BOOLEAN", lambda r: r.answer_verified)})
        return finish(con, "reasoning_trajectories", stats, (), results, trajectories=len(rows),
                      verified=sum(r.answer_verified for r in rows))
