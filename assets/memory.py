import dagster as dg
from dagster_duckdb import DuckDBResource

from persona_factory.schema import PersonalityStep, SemanticMemoryTarget, SessionMemoryTarget
from persona_factory.stages import memory as stage
from persona_factory.stages import personality as pstage
from persona_factory.store import dumps, read_records, write_records
from persona_factory.teacher.types import TeacherStats
from pipelines.resources import FactoryConfig, TeacherResource

from .common import SUPERVISION, finish, load_histories


@dg.asset(group_name=SUPERVISION, deps=["dialogues"],
          description="Per-turn semantic decisions and per-session episodic, procedural and core-profile targets.")
def memory_targets(settings: FactoryConfig, teacher: TeacherResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    cfg = settings.load()
    with duckdb.get_connection() as con:
        personas, plans, dialogues, images = load_histories(con)
    by_image = {i.image_id: i for i in images}
    stats, t = TeacherStats(), teacher.get()
    semantic, sessions, results, fallbacks = [], [], [], 0
    for pid, dialogue in dialogues.items():
        sem_res = t.generate(stage.semantic_requests(cfg, dialogue, plans[pid]), stats)
        targets, n = stage.semantic_targets(dialogue, plans[pid], by_image, sem_res)
        topic_res = t.generate(stage.topic_requests(cfg, personas[pid], dialogue), stats)
        per_session, m = stage.session_targets(cfg, personas[pid], dialogue, plans[pid], topic_res)
        semantic += targets
        sessions += per_session
        results += sem_res + topic_res
        fallbacks += n + m
    with duckdb.get_connection() as con:
        write_records(con, "semantic_memory_targets", semantic, {
            "persona_id": ("VARCHAR", lambda s: s.persona_id), "turn_index": ("INTEGER", lambda s: s.turn_index),
            "decision": ("BOOLEAN", lambda s: s.decision)})
        write_records(con, "session_memory_targets", sessions, {
            "persona_id": ("VARCHAR", lambda s: s.persona_id), "session_index": ("INTEGER", lambda s: s.session_index)})
        return finish(con, "memory_targets", stats, (), results, semantic_targets=len(semantic),
                      remembered=sum(s.decision for s in semantic), session_targets=len(sessions),
                      plan_wording_fallbacks=fallbacks)


@dg.asset(group_name=SUPERVISION, deps=["dialogues"],
          description="Per-turn inferred Big Five states and the EMA personality trajectory.")
def personality_trajectories(settings: FactoryConfig, teacher: TeacherResource,
                             duckdb: DuckDBResource) -> dg.MaterializeResult:
    cfg = settings.load()
    with duckdb.get_connection() as con:
        personas, _, dialogues, _ = load_histories(con)
    stats, t = TeacherStats(), teacher.get()
    steps, results, unparsed = [], [], 0
    for pid, dialogue in dialogues.items():
        res = t.generate(pstage.inference_requests(cfg, personas[pid], dialogue), stats)
        traj, n = pstage.trajectory(cfg, dialogue, res)
        steps += traj
        results += res
        unparsed += n
    with duckdb.get_connection() as con:
        write_records(con, "personality_steps", steps, {
            "persona_id": ("VARCHAR", lambda s: s.persona_id), "turn_index": ("INTEGER", lambda s: s.turn_index)})
        return finish(con, "personality_trajectories", stats, (), results, steps=len(steps),
                      neutral_fallbacks=unparsed, skip_rule=cfg.supervision.personality_skip_rule)


@dg.asset(group_name=SUPERVISION, deps=["memory_targets", "personality_trajectories"],
          description="Per-user memory database (user_data.json shape), replayed turn by turn.")
def memory_db(duckdb: DuckDBResource) -> dg.MaterializeResult:
    with duckdb.get_connection() as con:
        personas, _, dialogues, _ = load_histories(con)
        semantic = read_records(con, "semantic_memory_targets", SemanticMemoryTarget)
        sessions = read_records(con, "session_memory_targets", SessionMemoryTarget)
        steps = read_records(con, "personality_steps", PersonalityStep)
        rows = []
        for pid, dialogue in sorted(dialogues.items()):
            user_data = stage.replay_user_data(
                personas[pid], dialogue, [s for s in semantic if s.persona_id == pid],
                [s for s in sessions if s.persona_id == pid], [s for s in steps if s.persona_id == pid])
            rows.append((pid, personas[pid].split, dumps(user_data)))
        con.execute("CREATE OR REPLACE TABLE memory_db (persona_id VARCHAR, split VARCHAR, user_data JSON)")
        if rows:
            con.executemany("INSERT INTO memory_db VALUES (?, ?, ?)", rows)
    return dg.MaterializeResult(metadata={"users": len(rows)})
