import dagster as dg
from dagster_duckdb import DuckDBResource

from persona_factory.stages import alignment as stage
from persona_factory.store import write_records
from persona_factory.teacher.types import TeacherStats
from pipelines.resources import FactoryConfig, TeacherResource

from .common import answered, SUPERVISION, finish, generate_batched, load_histories


@dg.asset(group_name=SUPERVISION, deps=["dialogues"],
          description="Training personas' in-situ queries with a chosen reply (fits the planned personality at "
                      "that moment) and a rejected one (half generic, half written for a different Big Five profile); "
                      "the benchmark writes its own pairs for its items.")
def alignment_pairs(settings: FactoryConfig, teacher: TeacherResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    cfg = settings.load()
    with duckdb.get_connection() as con:
        personas, plans, dialogues, _ = load_histories(con)
    specs = {pid: stage.pair_specs(cfg, personas[pid], plans[pid], dialogues[pid])
             for pid in sorted(dialogues) if pid in personas and pid in plans and personas[pid].split == "train"}
    stats = TeacherStats()
    res = generate_batched(teacher.get(), stats, {pid: stage.reply_requests(cfg, s) for pid, s in specs.items()})
    answered("alignment_pairs", stats)
    rows, quarantined = [], []
    for pid in specs:
        pairs, dropped = stage.build_pairs(cfg, specs[pid], res[pid])
        rows += pairs
        quarantined += dropped
    with duckdb.get_connection() as con:
        write_records(con, "alignment_pairs", rows, {
            "pair_id": ("VARCHAR", lambda p: p.pair_id), "persona_id": ("VARCHAR", lambda p: p.persona_id),
            "rejected_kind": ("VARCHAR", lambda p: p.rejected_kind)})
        return finish(con, "alignment_pairs", stats, quarantined, [r for rs in res.values() for r in rs],
                      pairs=len(rows), generic_rejected=sum(p.rejected_kind == "generic" for p in rows),
                      other_profile_rejected=sum(p.rejected_kind == "other_profile" for p in rows))
