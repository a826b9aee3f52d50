from collections import Counter

import dagster as dg

from persona_factory.catalog import (
    MEMORY_DB, PERSONALITY_CORRELATIONS, PERSONALITY_STEPS, SEMANTIC_MEMORY_TARGETS, SESSION_MEMORY_TARGETS,
)
from persona_factory.readers import load_histories, replay_all
from persona_factory.schema import QuarantineRow
from persona_factory.stages import memory as stage
from persona_factory.stages import personality as pstage
from persona_factory.store import dumps
from persona_factory.teacher.types import TeacherStats
from pipelines.jobs import SUPERVISION
from pipelines.partitions import SHARD_BACKFILL
from pipelines.resources import FactoryConfig, StoreResource, TeacherResource

from .common import answered, finish, generate_batched, run_shards, shard_batch


def without_plan(dialogues: dict, personas: dict, plans: dict, table: str) -> list[QuarantineRow]:
    """Dialogues whose persona or plan is missing cannot be labelled."""
    return [QuarantineRow(table_name=table, row_key=pid, rule="missing_plan",
                          value="the dialogue has no persona or timeline plan")
            for pid in sorted(dialogues) if pid not in personas or pid not in plans]


def memory_assets(shards: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    @dg.asset(group_name=SUPERVISION, deps=["dialogues"], partitions_def=shards, backfill_policy=SHARD_BACKFILL,
              description="Per-turn semantic decisions and per-session episodic topics, procedural memory and core "
                          "profile; decisions from the plan, wording by the teacher (plan wording where it fails "
                          "checks).")
    def memory_targets(context: dg.AssetExecutionContext, settings: FactoryConfig, teacher: TeacherResource,
                       store: StoreResource) -> dg.MaterializeResult:
        cfg = settings.load()
        keys = run_shards(context, cfg)
        with store.get().reader() as con:
            personas, plans, dialogues, images = load_histories(con, keys)
        by_image = {i.image_id: i for i in images}
        quarantined = without_plan(dialogues, personas, plans, SEMANTIC_MEMORY_TARGETS.name)
        ids = [pid for pid in sorted(dialogues) if pid in personas and pid in plans]
        stats, t = TeacherStats(), teacher.get()
        sem_res = generate_batched(t, stats, {pid: stage.semantic_requests(cfg, dialogues[pid], plans[pid])
                                              for pid in ids})
        topic_res = generate_batched(t, stats, {pid: stage.topic_requests(cfg, personas[pid], dialogues[pid],
                                                                          plans[pid]) for pid in ids})
        answered("memory_targets", stats)
        semantic, sessions, fallbacks = [], [], {"semantic": Counter[str](), "topic": Counter[str]()}
        for pid in ids:
            items = {i.item_id: i for i in plans[pid].items}
            quarantined += stage.turn_problems(dialogues[pid], items) + stage.missing_images(dialogues[pid], by_image)
            targets, n = stage.semantic_targets(dialogues[pid], plans[pid], by_image, sem_res[pid])
            per_session, m = stage.session_targets(cfg, personas[pid], dialogues[pid], plans[pid], targets,
                                                   topic_res[pid])
            semantic += targets
            sessions += per_session
            fallbacks["semantic"].update(n)
            fallbacks["topic"].update(m)
        shard_of = {pid: p.shard for pid, p in personas.items()}
        batch = shard_batch("memory_targets", keys, cfg)
        batch.add(SEMANTIC_MEMORY_TARGETS, semantic, shard_of=shard_of)
        batch.add(SESSION_MEMORY_TARGETS, sessions, shard_of=shard_of)
        topics = sum(len(s.episodic) for s in sessions)
        return finish(store.get(), batch, stats, quarantined,
                      [r for res in (sem_res, topic_res) for rs in res.values() for r in rs], owner_shard=shard_of,
                      semantic_targets=len(semantic), remembered=sum(s.decision for s in semantic),
                      session_targets=len(sessions), episodic_topics=topics,
                      topics_per_session=round(topics / len(sessions), 2) if sessions else 0.0,
                      semantic_plan_wording=dict(sorted(fallbacks["semantic"].items())),
                      topic_plan_wording=dict(sorted(fallbacks["topic"].items())))

    @dg.asset(group_name=SUPERVISION, deps=["dialogues"], partitions_def=shards, backfill_policy=SHARD_BACKFILL,
              description="Per-turn inferred Big Five states, the EMA trajectory under the configured skip rule, and "
                          "per persona the correlation of the inferred states with the planned personality.")
    def personality_trajectories(context: dg.AssetExecutionContext, settings: FactoryConfig,
                                 teacher: TeacherResource, store: StoreResource) -> dg.MaterializeResult:
        cfg = settings.load()
        keys = run_shards(context, cfg)
        with store.get().reader() as con:
            personas, plans, dialogues, _ = load_histories(con, keys)
        quarantined = without_plan(dialogues, personas, plans, PERSONALITY_STEPS.name)
        ids = [pid for pid in sorted(dialogues) if pid in personas and pid in plans]
        stats = TeacherStats()
        res = generate_batched(teacher.get(), stats,
                               {pid: pstage.inference_requests(cfg, personas[pid], dialogues[pid]) for pid in ids})
        answered("personality_trajectories", stats)
        steps, correlations, fallbacks = [], [], 0
        for pid in ids:
            traj, n = pstage.trajectory(cfg, personas[pid], plans[pid], dialogues[pid], res[pid])
            steps += traj
            correlations.append(pstage.correlation(pid, traj))
            fallbacks += n
        shard_of = {pid: p.shard for pid, p in personas.items()}
        batch = shard_batch("personality_trajectories", keys, cfg)
        batch.add(PERSONALITY_STEPS, steps, shard_of=shard_of)
        batch.add(PERSONALITY_CORRELATIONS, correlations, shard_of=shard_of)
        defined = [c.inferred_r for c in correlations if c.inferred_r is not None]
        return finish(store.get(), batch, stats, quarantined, [r for rs in res.values() for r in rs],
                      owner_shard=shard_of, steps=len(steps), neutral_fallbacks=fallbacks,
                      skip_rule=cfg.supervision.personality_skip_rule,
                      mean_inferred_r=round(sum(defined) / len(defined), 4) if defined else None,
                      correlation_per_persona={c.persona_id: c.inferred_r for c in correlations})

    @dg.asset(group_name=SUPERVISION, deps=["memory_targets", "personality_trajectories"], partitions_def=shards,
              backfill_policy=SHARD_BACKFILL,
              description="Per-user memory database (user_data.json shape), replayed turn by turn.")
    def memory_db(context: dg.AssetExecutionContext, settings: FactoryConfig,
                  store: StoreResource) -> dg.MaterializeResult:
        cfg = settings.load()
        keys = run_shards(context, cfg)
        with store.get().reader() as con:
            personas, _, _, _ = load_histories(con, keys)
            replayed, quarantined = replay_all(con, keys)
        rows = [(pid, split, dumps(user_data)) for pid, (split, user_data) in replayed.items()]
        shard_of = {pid: p.shard for pid, p in personas.items()}
        batch = shard_batch("memory_db", keys, cfg)
        batch.add(MEMORY_DB, rows, shard_of=shard_of)
        return finish(store.get(), batch, None, quarantined, owner_shard=shard_of, users=len(rows))

    return [memory_targets, personality_trajectories, memory_db]
