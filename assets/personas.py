import dagster as dg
from dagster_duckdb import DuckDBResource

from persona_factory.stages import personas as stage
from persona_factory.teacher.types import TeacherStats
from persona_factory.store import write_records
from pipelines.resources import FactoryConfig, TeacherResource

from .common import HISTORIES, finish


@dg.asset(group_name=HISTORIES, description="Seeds enriched by the teacher into role, profile and Big Five.")
def personas(settings: FactoryConfig, teacher: TeacherResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    cfg = settings.load()
    assigned = stage.assign_splits(stage.load_seeds(cfg.persona_source), cfg)
    requests = [stage.enrichment_request(cfg, seed, stage.sample_big_five(cfg, seed)) for seed, _ in assigned]
    stats = TeacherStats()
    results = teacher.get().generate(requests, stats)
    rows, quarantined = stage.build_personas(cfg, assigned, results)
    with duckdb.get_connection() as con:
        write_records(con, "personas", rows, {"persona_id": ("VARCHAR", lambda p: p.persona_id),
                                              "split": ("VARCHAR", lambda p: p.split),
                                              "name": ("VARCHAR", lambda p: p.profile.name)})
        return finish(con, "personas", stats, quarantined, results, personas=len(rows),
                      per_split={s: sum(p.split == s for p in rows) for s in ("train", "bench_32k", "bench_128k")})
