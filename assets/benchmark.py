import dagster as dg
from dagster_duckdb import DuckDBResource

from persona_factory.schema import AlignmentPair
from persona_factory.stages.benchmark import build_items
from persona_factory.store import read_records, write_records
from pipelines.resources import FactoryConfig

from .common import BENCHMARK, finish, load_histories


@dg.asset(group_name=BENCHMARK, deps=["dialogues", "alignment_pairs"],
          description="Persona-MME-style 4-option items with gold from the plan and evidence turn ids.")
def benchmark_items(settings: FactoryConfig, duckdb: DuckDBResource) -> dg.MaterializeResult:
    cfg = settings.load()
    with duckdb.get_connection() as con:
        personas, plans, dialogues, images = load_histories(con)
        pairs: dict[str, list[AlignmentPair]] = {}
        for p in read_records(con, "alignment_pairs", AlignmentPair):
            pairs.setdefault(p.persona_id, []).append(p)
        items = build_items(cfg, list(personas.values()), dialogues, plans, images, pairs)
        write_records(con, "benchmark_items", items, {
            "item_id": ("VARCHAR", lambda i: i.item_id), "persona_id": ("VARCHAR", lambda i: i.persona_id),
            "bucket": ("VARCHAR", lambda i: i.bucket), "question_type": ("VARCHAR", lambda i: i.question_type),
            "query": ("VARCHAR", lambda i: i.query), "answer": ("VARCHAR", lambda i: i.answer)})
        per_task: dict[str, int] = {}
        for i in items:
            per_task[i.question_type] = per_task.get(i.question_type, 0) + 1
        return finish(con, "benchmark_items", None, (), items=len(items), per_task=per_task,
                      with_alignment=sum(i.alignment is not None for i in items))
