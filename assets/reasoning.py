from collections import Counter

import dagster as dg

from persona_factory.catalog import REASONING_TRAJECTORIES, SEMANTIC_MEMORY_TARGETS
from persona_factory.readers import by_persona, load_histories, memory_databases, read_shards
from persona_factory.schema import QuarantineRow
from persona_factory.stages import reasoning as stage
from persona_factory.stages.distractors import Pools
from persona_factory.stages.retrieval import RETRIEVERS, retrievers
from persona_factory.teacher.types import TeacherStats
from pipelines.jobs import SUPERVISION
from pipelines.partitions import SHARD_BACKFILL
from pipelines.resources import EmbedderResource, FactoryConfig, StoreResource, TeacherResource

from .common import answered, finish, generate_batched, run_shards, shard_batch


def count(values) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def reasoning_asset(shards: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(group_name=SUPERVISION, deps=["memory_db"], partitions_def=shards, backfill_policy=SHARD_BACKFILL,
              description="In-situ probes of training histories: think/retrieve/answer trajectories with retrieval "
                          "executed over the memory database as it was at probe time (PersonaVLM's MiniLM retriever "
                          "by default), answers regenerated from what was retrieved and checked against the plan.")
    def reasoning_trajectories(context: dg.AssetExecutionContext, settings: FactoryConfig, teacher: TeacherResource,
                               embedder: EmbedderResource, store: StoreResource) -> dg.MaterializeResult:
        cfg = settings.load()
        keys = run_shards(context, cfg)
        with store.get().reader() as con:
            personas, plans, dialogues, images = load_histories(con, keys)
            semantic = by_persona(read_shards(con, SEMANTIC_MEMORY_TARGETS, keys))
            user_data = memory_databases(con, "train", keys)
        by_image = {i.image_id: i for i in images}
        owners = [pid for pid in sorted(user_data) if pid in plans]
        text_embedder = embedder.get()
        encoded_before = text_embedder.encoded  # the run's embedder: the dialogues step encoded what it asked ahead
        text_embedder.embed(t for pid in owners for t in stage.search_texts(  # one batched pass over every persona
            cfg, personas[pid], dialogues[pid], plans[pid], semantic.get(pid, []), user_data[pid]))
        found_by = retrievers(text_embedder)
        jobs = {}
        for shard in keys:
            pools = Pools.of_shard(shard, personas.values(), plans.values(), images)
            jobs.update({pid: stage.prepare_jobs(cfg, personas[pid], dialogues[pid], plans[pid], semantic.get(pid, []),
                                                 user_data[pid], pools, by_image, found_by)
                         for pid in owners if personas[pid].shard == shard})
        stats = TeacherStats()
        res = generate_batched(teacher.get(), stats,
                               {pid: stage.answer_requests(cfg, personas[pid], jobs[pid]) for pid in jobs})
        answered("reasoning_trajectories", stats)
        rows = [t for pid in jobs for t in stage.build_trajectories(personas[pid], jobs[pid], res[pid])]
        quarantined = [QuarantineRow(table_name=REASONING_TRAJECTORIES.name, row_key=f"{t.persona_id}:{t.probe_id}",
                                     rule=t.verdict, value=f"{t.query} | gold: {t.gold_value}")
                       for t in rows if t.verdict != "verified"]
        shard_of = {pid: p.shard for pid, p in personas.items()}
        batch = shard_batch("reasoning_trajectories", keys, cfg)
        batch.add(REASONING_TRAJECTORIES, rows, shard_of=shard_of)
        verified = [r for r in rows if r.verdict == "verified"]
        return finish(store.get(), batch, stats, quarantined, [r for rs in res.values() for r in rs],
                      owner_shard=shard_of, trajectories=len(rows), verified=len(verified),
                      by_verdict=count(r.verdict for r in rows),
                      verified_by_kind=count(r.question_kind for r in verified),
                      verified_by_mode=count(r.mode for r in verified),
                      retrieval_steps=count(str(sum(s.action == "retrieve" for s in r.steps)) for r in verified),
                      retriever=cfg.supervision.retriever, answer_hit_share=hit_shares(rows),
                      texts_embedded=text_embedder.encoded - encoded_before)

    return reasoning_trajectories


def hit_shares(rows) -> dict[str, float]:
    """Per retriever, the share of retrieval probes whose searches retrieved the evidence."""
    probed = [r.answer_hits for r in rows if r.answer_hits]
    return {name: round(sum(h[name] for h in probed) / len(probed), 3) for name in RETRIEVERS} if probed else {}
