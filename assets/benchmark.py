import dagster as dg
from dagster_duckdb import DuckDBResource

from persona_factory.config import PipelineConfig
from persona_factory.stages.benchmark_build import build_benchmark
from persona_factory.store import write_records
from persona_factory.teacher.backends import ServerBackend
from persona_factory.teacher.cache import ResponseCache
from persona_factory.teacher.client import Teacher
from persona_factory.teacher.types import TeacherStats
from pipelines.resources import FactoryConfig, TeacherResource

from .common import BENCHMARK, answered, finish, load_histories


def extra_judges(cfg: PipelineConfig) -> dict[str, Teacher]:
    """Clients for the models in `benchmark.blind_judges`, connected on their first uncached request."""
    def connect(model: str, urls: list[str]):
        def backend() -> ServerBackend:
            b = ServerBackend.from_settings(cfg.teacher, urls, model)
            b.check(setting="benchmark.blind_judges[]")
            return b
        return backend

    return {j.model: Teacher(connect(j.model, j.base_urls), ResponseCache(cfg.output_path / "teacher_cache.sqlite"),
                             model_id=j.model, max_retries=cfg.teacher.max_retries)
            for j in cfg.benchmark.blind_judges}


@dg.asset(group_name=BENCHMARK, deps=["dialogues"],
          description="Persona-MME-style items for all 13 tasks (+ Personality Alignment), gold and evidence from "
                      "the plan, through the form, time, consistency, duplicate, blind and balance gates.")
def benchmark_items(settings: FactoryConfig, teacher: TeacherResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    cfg = settings.load()
    with duckdb.get_connection() as con:
        personas, plans, dialogues, images = load_histories(con)
    stats, t = TeacherStats(), teacher.get()
    extra = extra_judges(cfg)
    try:
        build = build_benchmark(cfg, t, {t.model_id: t, **extra}, personas, plans, dialogues, images, stats)
    finally:
        for judge in extra.values():
            judge.close()
    answered("benchmark_items", stats)
    published = {i.item_id for i in build.items}
    with duckdb.get_connection() as con:
        write_records(con, "benchmark_items", build.items, {
            "item_id": ("VARCHAR", lambda i: i.item_id), "persona_id": ("VARCHAR", lambda i: i.persona_id),
            "bucket": ("VARCHAR", lambda i: i.bucket), "question_type": ("VARCHAR", lambda i: i.question_type),
            "query": ("VARCHAR", lambda i: i.query), "answer": ("VARCHAR", lambda i: i.answer),
            "with_image": ("BOOLEAN", lambda i: bool(i.evidence_images)),
            "with_alignment": ("BOOLEAN", lambda i: i.alignment is not None)})
        write_records(con, "benchmark_candidates", build.candidates, {
            "item_id": ("VARCHAR", lambda c: c.item.item_id), "persona_id": ("VARCHAR", lambda c: c.item.persona_id),
            "question_type": ("VARCHAR", lambda c: c.item.question_type),
            "rejected_by": ("VARCHAR", lambda c: c.rejected_by),
            "published": ("BOOLEAN", lambda c: c.item.item_id in published)})
        write_records(con, "benchmark_gate_counts", build.gate_counts, {
            "gate": ("VARCHAR", lambda r: r.gate), "question_type": ("VARCHAR", lambda r: r.question_type),
            "checked": ("INTEGER", lambda r: r.checked), "rejected": ("INTEGER", lambda r: r.rejected)})
        write_records(con, "benchmark_blind_accuracy", build.blind_accuracy, {
            "judge": ("VARCHAR", lambda r: r.judge), "context": ("VARCHAR", lambda r: r.context),
            "question_type": ("VARCHAR", lambda r: r.question_type), "answered": ("INTEGER", lambda r: r.answered),
            "correct": ("INTEGER", lambda r: r.correct)})
        return finish(con, "benchmark_items", stats, build.quarantined, build.results, **build.summary())
