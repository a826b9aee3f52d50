import json
from collections import Counter

import dagster as dg
from dagster_duckdb import DuckDBResource

from persona_factory.schema import QuarantineRow, SemanticMemoryTarget
from persona_factory.stages import reasoning as stage
from persona_factory.stages.distractors import Pools
from persona_factory.stages.retrieval import RETRIEVERS, retrievers
from persona_factory.store import read_records, write_records
from persona_factory.teacher.types import TeacherStats
from pipelines.resources import EmbedderResource, FactoryConfig, TeacherResource

from .common import SUPERVISION, answered, by_persona, finish, generate_batched, load_histories


def count(values) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


@dg.asset(group_name=SUPERVISION, deps=["memory_db"],
          description="In-situ probes of training histories: think/retrieve/answer trajectories with retrieval "
                      "executed over the memory database as it was at probe time (PersonaVLM's MiniLM retriever "
                      "by default), answers regenerated from what was retrieved and checked against the plan.")
def reasoning_trajectories(settings: FactoryConfig, teacher: TeacherResource, embedder: EmbedderResource,
                           duckdb: DuckDBResource) -> dg.MaterializeResult:
    cfg = settings.load()
    with duckdb.get_connection() as con:
        personas, plans, dialogues, images = load_histories(con)
        semantic = by_persona(read_records(con, "semantic_memory_targets", SemanticMemoryTarget))
        user_data = {pid: json.loads(u) for pid, u in con.execute(
            "SELECT persona_id, user_data FROM memory_db WHERE split = 'train' ORDER BY persona_id").fetchall()}
    by_image = {i.image_id: i for i in images}
    pools = Pools.of(plans.values(), images)
    owners = [pid for pid in sorted(user_data) if pid in plans]
    text_embedder = embedder.get()
    text_embedder.embed(t for pid in owners for t in stage.search_texts(  # one batched pass over every persona
        cfg, personas[pid], dialogues[pid], plans[pid], semantic.get(pid, []), user_data[pid]))
    found_by = retrievers(text_embedder)
    jobs = {pid: stage.prepare_jobs(cfg, personas[pid], dialogues[pid], plans[pid], semantic.get(pid, []),
                                    user_data[pid], pools, by_image, found_by) for pid in owners}
    stats = TeacherStats()
    res = generate_batched(teacher.get(), stats,
                           {pid: stage.answer_requests(cfg, personas[pid], jobs[pid]) for pid in jobs})
    answered("reasoning_trajectories", stats)
    rows = [t for pid in jobs for t in stage.build_trajectories(personas[pid], jobs[pid], res[pid])]
    quarantined = [QuarantineRow(table_name="reasoning_trajectories", row_key=f"{t.persona_id}:{t.probe_id}",
                                 rule=t.verdict, value=f"{t.query} | gold: {t.gold_value}")
                   for t in rows if t.verdict != "verified"]
    with duckdb.get_connection() as con:
        write_records(con, "reasoning_trajectories", rows, {
            "probe_id": ("VARCHAR", lambda r: r.probe_id), "persona_id": ("VARCHAR", lambda r: r.persona_id),
            "question_kind": ("VARCHAR", lambda r: r.question_kind), "mode": ("VARCHAR", lambda r: r.mode),
            "steps": ("INTEGER", lambda r: len(r.steps)), "verdict": ("VARCHAR", lambda r: r.verdict)})
        verified = [r for r in rows if r.verdict == "verified"]
        return finish(con, "reasoning_trajectories", stats, quarantined, [r for rs in res.values() for r in rs],
                      trajectories=len(rows), verified=len(verified), by_verdict=count(r.verdict for r in rows),
                      verified_by_kind=count(r.question_kind for r in verified),
                      verified_by_mode=count(r.mode for r in verified),
                      retrieval_steps=count(str(sum(s.action == "retrieve" for s in r.steps)) for r in verified),
                      retriever=cfg.supervision.retriever, answer_hit_share=hit_shares(rows),
                      texts_embedded=text_embedder.encoded)


def hit_shares(rows) -> dict[str, float]:
    """Per retriever, the share of retrieval probes whose searches retrieved the evidence."""
    probed = [r.answer_hits for r in rows if r.answer_hits]
    return {name: round(sum(h[name] for h in probed) / len(probed), 3) for name in RETRIEVERS} if probed else {}
