from collections import Counter

import dagster as dg
from dagster_duckdb import DuckDBResource

from persona_factory.schema import PersonalityStep, QuarantineRow, SemanticMemoryTarget, SessionMemoryTarget
from persona_factory.stages import memory as stage
from persona_factory.stages import personality as pstage
from persona_factory.store import dumps, read_records, write_records
from persona_factory.teacher.types import TeacherStats
from pipelines.resources import FactoryConfig, TeacherResource

from .common import SUPERVISION, answered, by_persona, finish, generate_batched, load_histories


def without_plan(dialogues: dict, personas: dict, plans: dict, table: str) -> list[QuarantineRow]:
    """Dialogues whose persona or plan is missing cannot be labelled."""
    return [QuarantineRow(table_name=table, row_key=pid, rule="missing_plan",
                          value="the dialogue has no persona or timeline plan")
            for pid in sorted(dialogues) if pid not in personas or pid not in plans]


@dg.asset(group_name=SUPERVISION, deps=["dialogues"],
          description="Per-turn semantic decisions and per-session episodic topics, procedural memory and core "
                      "profile; decisions from the plan, wording by the teacher (plan wording where it fails checks).")
def memory_targets(settings: FactoryConfig, teacher: TeacherResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    cfg = settings.load()
    with duckdb.get_connection() as con:
        personas, plans, dialogues, images = load_histories(con)
    by_image = {i.image_id: i for i in images}
    quarantined = without_plan(dialogues, personas, plans, "semantic_memory_targets")
    ids = [pid for pid in sorted(dialogues) if pid in personas and pid in plans]
    stats, t = TeacherStats(), teacher.get()
    sem_res = generate_batched(t, stats, {pid: stage.semantic_requests(cfg, dialogues[pid], plans[pid]) for pid in ids})
    topic_res = generate_batched(t, stats, {pid: stage.topic_requests(cfg, personas[pid], dialogues[pid], plans[pid])
                                            for pid in ids})
    answered("memory_targets", stats)
    semantic, sessions, fallbacks = [], [], {"semantic": Counter[str](), "topic": Counter[str]()}
    for pid in ids:
        items = {i.item_id: i for i in plans[pid].items}
        quarantined += stage.turn_problems(dialogues[pid], items) + stage.missing_images(dialogues[pid], by_image)
        targets, n = stage.semantic_targets(dialogues[pid], plans[pid], by_image, sem_res[pid])
        per_session, m = stage.session_targets(cfg, personas[pid], dialogues[pid], plans[pid], targets, topic_res[pid])
        semantic += targets
        sessions += per_session
        fallbacks["semantic"].update(n)
        fallbacks["topic"].update(m)
    with duckdb.get_connection() as con:
        write_records(con, "semantic_memory_targets", semantic, {
            "persona_id": ("VARCHAR", lambda s: s.persona_id), "turn_index": ("INTEGER", lambda s: s.turn_index),
            "decision": ("BOOLEAN", lambda s: s.decision), "item_id": ("VARCHAR", lambda s: s.item_id),
            "wording": ("VARCHAR", lambda s: s.wording), "content": ("VARCHAR", lambda s: s.content)})
        write_records(con, "session_memory_targets", sessions, {
            "persona_id": ("VARCHAR", lambda s: s.persona_id), "session_index": ("INTEGER", lambda s: s.session_index),
            "topics": ("INTEGER", lambda s: len(s.episodic)), "procedural": ("INTEGER", lambda s: len(s.procedural))})
        topics = sum(len(s.episodic) for s in sessions)
        return finish(con, "memory_targets", stats, quarantined,
                      [r for res in (sem_res, topic_res) for rs in res.values() for r in rs],
                      semantic_targets=len(semantic), remembered=sum(s.decision for s in semantic),
                      session_targets=len(sessions), episodic_topics=topics,
                      topics_per_session=round(topics / len(sessions), 2) if sessions else 0.0,
                      semantic_plan_wording=dict(sorted(fallbacks["semantic"].items())),
                      topic_plan_wording=dict(sorted(fallbacks["topic"].items())))


@dg.asset(group_name=SUPERVISION, deps=["dialogues"],
          description="Per-turn inferred Big Five states, the EMA trajectory under the configured skip rule, and "
                      "per persona the correlation of the inferred states with the planned personality.")
def personality_trajectories(settings: FactoryConfig, teacher: TeacherResource,
                             duckdb: DuckDBResource) -> dg.MaterializeResult:
    cfg = settings.load()
    with duckdb.get_connection() as con:
        personas, plans, dialogues, _ = load_histories(con)
    quarantined = without_plan(dialogues, personas, plans, "personality_steps")
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
    with duckdb.get_connection() as con:
        write_records(con, "personality_steps", steps, {
            "persona_id": ("VARCHAR", lambda s: s.persona_id), "turn_index": ("INTEGER", lambda s: s.turn_index),
            "inferred_by": ("VARCHAR", lambda s: s.inferred_by)})
        write_records(con, "personality_correlations", correlations, {
            "persona_id": ("VARCHAR", lambda c: c.persona_id), "turns": ("INTEGER", lambda c: c.turns),
            "inferred_r": ("DOUBLE", lambda c: c.inferred_r), "ema_r": ("DOUBLE", lambda c: c.ema_r),
            "drift_trait": ("VARCHAR", lambda c: c.drift_trait), "drift_r": ("DOUBLE", lambda c: c.drift_r),
            "final_ema_mae": ("DOUBLE", lambda c: c.final_ema_mae)})
        defined = [c.inferred_r for c in correlations if c.inferred_r is not None]
        return finish(con, "personality_trajectories", stats, quarantined, [r for rs in res.values() for r in rs],
                      steps=len(steps), neutral_fallbacks=fallbacks, skip_rule=cfg.supervision.personality_skip_rule,
                      mean_inferred_r=round(sum(defined) / len(defined), 4) if defined else None,
                      correlation_per_persona={c.persona_id: c.inferred_r for c in correlations})


def replay_all(con) -> tuple[dict[str, tuple[str, dict]], list[QuarantineRow]]:
    """Every persona's memory database replayed from the stored targets, with its split; a persona whose targets
    do not match its dialogue is quarantined."""
    personas, _, dialogues, _ = load_histories(con)
    semantic = by_persona(read_records(con, "semantic_memory_targets", SemanticMemoryTarget))
    sessions = by_persona(read_records(con, "session_memory_targets", SessionMemoryTarget))
    steps = by_persona(read_records(con, "personality_steps", PersonalityStep))
    replayed, quarantined = {}, []
    for pid, dialogue in sorted(dialogues.items()):
        try:
            replayed[pid] = (personas[pid].split, stage.replay_user_data(
                personas[pid], dialogue, semantic.get(pid, []), sessions.get(pid, []), steps.get(pid, [])))
        except (KeyError, ValueError) as err:
            quarantined.append(QuarantineRow(table_name="memory_db", row_key=pid, rule="replay_mismatch",
                                             value=str(err)))
    return replayed, quarantined


@dg.asset(group_name=SUPERVISION, deps=["memory_targets", "personality_trajectories"],
          description="Per-user memory database (user_data.json shape), replayed turn by turn.")
def memory_db(duckdb: DuckDBResource) -> dg.MaterializeResult:
    with duckdb.get_connection() as con:
        replayed, quarantined = replay_all(con)
        rows = [(pid, split, dumps(user_data)) for pid, (split, user_data) in replayed.items()]
        con.execute("CREATE OR REPLACE TABLE memory_db (persona_id VARCHAR, split VARCHAR, user_data JSON)")
        if rows:
            con.executemany("INSERT INTO memory_db VALUES (?, ?, ?)", rows)
        return finish(con, "memory_db", None, quarantined, users=len(rows))
