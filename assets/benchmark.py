import dagster as dg

from persona_factory.catalog import (
    BENCHMARK_BLIND_ACCURACY, BENCHMARK_CANDIDATES, BENCHMARK_GATE_COUNTS, BENCHMARK_ITEMS,
)
from persona_factory.config import PipelineConfig
from persona_factory.readers import load_histories
from persona_factory.stages.benchmark_build import build_benchmark
from persona_factory.store import Batch
from persona_factory.teacher.backends import ServerBackend
from persona_factory.teacher.cache import open_cache
from persona_factory.teacher.client import Teacher
from persona_factory.teacher.types import TeacherStats
from pipelines.jobs import BENCHMARK
from pipelines.resources import FactoryConfig, StoreResource, TeacherResource

from .common import answered, finish


def extra_judges(cfg: PipelineConfig) -> dict[str, Teacher]:
    """Clients for the models in `benchmark.blind_judges`, connected on their first uncached request."""
    def connect(model: str, urls: list[str]):
        def backend() -> ServerBackend:
            b = ServerBackend.from_settings(cfg.teacher, urls, model)
            b.check(setting="benchmark.blind_judges[]")
            return b
        return backend

    return {j.model: Teacher(connect(j.model, j.base_urls), open_cache(cfg),
                             model_id=j.model, max_retries=cfg.teacher.max_retries)
            for j in cfg.benchmark.blind_judges}


@dg.asset(group_name=BENCHMARK, deps=["dialogues"],
          description="Persona-MME-style items for all 13 tasks (+ Personality Alignment), gold and evidence from "
                      "the plan, through the form, time, consistency, duplicate, blind and balance gates.")
def benchmark_items(settings: FactoryConfig, teacher: TeacherResource, store: StoreResource) -> dg.MaterializeResult:
    cfg = settings.load()
    with store.get().reader() as con:
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
    batch = Batch("benchmark_items")
    batch.add(BENCHMARK_ITEMS, build.items)
    batch.add(BENCHMARK_CANDIDATES, build.candidates,
              {"published": [c.item.item_id in published for c in build.candidates]})
    batch.add(BENCHMARK_GATE_COUNTS, build.gate_counts)
    batch.add(BENCHMARK_BLIND_ACCURACY, build.blind_accuracy)
    return finish(store.get(), batch, stats, build.quarantined, build.results, **build.summary())
