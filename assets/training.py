import json
from collections import Counter

import dagster as dg
from dagster_duckdb import DuckDBResource

from persona_factory.schema import (
    AlignmentPair, PersonalityStep, ReasoningTrajectory, SemanticMemoryTarget, SessionMemoryTarget,
)
from persona_factory.stages import exports as stage
from persona_factory.store import read_records, write_records
from pipelines.resources import FactoryConfig, TeacherResource

from .common import SUPERVISION, by_persona, finish, load_histories, provenance

HISTORY_TEMPLATES = ("system", "persona_enrichment", "plan_details", "dialogue_session", "dialogue_turn",
                     "realization_judge")
# the templates each kind of row was made with, besides those that made the history
TASK_TEMPLATES = {
    "semantic_memory": ("semantic_memory", "sft_semantic_memory"),
    "personality": ("personality_inference", "sft_personality"),
    "episodic_memory": ("episodic_topic", "sft_episodic_memory"),
    "procedural_memory": ("semantic_memory", "sft_procedural_memory"),
    "core_memory": ("sft_core_memory",),
    "reasoning": ("semantic_memory", "episodic_topic", "personality_inference", "reasoning_answer",
                  "sft_reasoning_start", "sft_reasoning_mid"),
    "rl": ("semantic_memory", "episodic_topic", "personality_inference", "reasoning_answer", "alignment_reply",
           "sft_reasoning_start"),
}
TEMPLATES = tuple(dict.fromkeys(HISTORY_TEMPLATES + tuple(t for ts in TASK_TEMPLATES.values() for t in ts)))


@dg.asset(group_name=SUPERVISION,
          deps=["memory_db", "personality_trajectories", "reasoning_trajectories", "alignment_pairs"],
          description="SFT (Qwen2.5-VL conversations) and RL (ms-swift messages) records of the training personas, "
                      "subsampled to the configured shares, with provenance per row.")
def training_records(settings: FactoryConfig, teacher: TeacherResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    cfg = settings.load()
    model = teacher.model_name()
    prov = {task: provenance(cfg, model, *HISTORY_TEMPLATES, *templates) for task, templates in TASK_TEMPLATES.items()}
    with duckdb.get_connection() as con:
        personas, _, dialogues, _ = load_histories(con)
        semantic = by_persona(read_records(con, "semantic_memory_targets", SemanticMemoryTarget))
        sessions = by_persona(read_records(con, "session_memory_targets", SessionMemoryTarget))
        steps = by_persona(read_records(con, "personality_steps", PersonalityStep))
        trajectories = by_persona(read_records(con, "reasoning_trajectories", ReasoningTrajectory))
        pairs = by_persona(read_records(con, "alignment_pairs", AlignmentPair))
        user_data = {pid: json.loads(u) for pid, u in con.execute(
            "SELECT persona_id, user_data FROM memory_db WHERE split = 'train' ORDER BY persona_id").fetchall()}
    sft, rl, quarantined = [], [], []
    for pid in sorted(user_data):
        agent = stage.Agent(personas[pid], dialogues[pid], user_data[pid],
                            {s.turn_index: s for s in steps.get(pid, [])}, cfg.dialogue.session_gap_minutes)
        records, bad = stage.sft_records(agent, semantic.get(pid, []), sessions.get(pid, []), steps.get(pid, []),
                                         trajectories.get(pid, []), prov)
        sft += records
        quarantined += bad
        rl += stage.rl_records(agent, trajectories.get(pid, []), pairs.get(pid, []), prov["rl"], cfg.seed)
    shares = cfg.supervision
    kept_sft = stage.apply_shares(sft, lambda r: stage.SHARE_GROUP[r.task], lambda r: f"{r.persona_id}:{r.task}",
                                  shares.sft_shares, cfg.seed, "sft")
    kept_rl = stage.apply_shares(rl, lambda r: r.kind, stage.rl_stratum, shares.rl_shares, cfg.seed, "rl")
    with duckdb.get_connection() as con:
        write_records(con, "sft_records", kept_sft, {
            "record_id": ("VARCHAR", lambda r: r.record_id), "persona_id": ("VARCHAR", lambda r: r.persona_id),
            "task": ("VARCHAR", lambda r: r.task), "n_images": ("INTEGER", lambda r: len(r.image)),
            "n_image_tokens": ("INTEGER", lambda r: sum(c["value"].count("<image>") for c in r.conversations))})
        write_records(con, "rl_records", kept_rl, {
            "record_id": ("VARCHAR", lambda r: r.record_id), "persona_id": ("VARCHAR", lambda r: r.persona_id),
            "kind": ("VARCHAR", lambda r: r.kind), "solution": ("VARCHAR", lambda r: r.solution)})
        return finish(con, "training_records", None, quarantined, sft_records=len(kept_sft), sft_candidates=len(sft),
                      sft_per_task=dict(sorted(Counter(r.task for r in kept_sft).items())),
                      sft_shares=stage.achieved_shares(kept_sft, lambda r: stage.SHARE_GROUP[r.task]),
                      rl_records=len(kept_rl), rl_candidates=len(rl),
                      rl_shares=stage.achieved_shares(kept_rl, lambda r: r.kind),
                      skip_rule=cfg.supervision.personality_skip_rule)
