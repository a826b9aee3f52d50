import dagster as dg
from dagster_duckdb import DuckDBResource

from persona_factory.schema import (
    AlignmentPair, PersonalityStep, ReasoningTrajectory, SemanticMemoryTarget, SessionMemoryTarget,
)
from persona_factory.stages import exports as stage
from persona_factory.stages.benchmark import distractor_pools
from persona_factory.store import read_records, write_records
from pipelines.resources import FactoryConfig, TeacherResource

from .common import SUPERVISION, finish, load_histories, provenance

POOL_OF_KIND = {"event": "event", "routine": "routine", "preference": "hobby", "preference_shift": "hobby",
                "relationship": "name", "goal": "routine", "goal_update": "routine"}
TEMPLATES = ("system", "persona_enrichment", "plan_details", "dialogue_session", "dialogue_repair", "realization_judge",
             "semantic_memory", "episodic_topic", "personality_inference",
             "reasoning_answer", "alignment_reply", "sft_reasoning_start", "sft_reasoning_mid", "sft_semantic_memory",
             "sft_episodic_memory", "sft_procedural_memory", "sft_core_memory", "sft_personality")


@dg.asset(group_name=SUPERVISION, deps=["memory_db", "reasoning_trajectories", "alignment_pairs"],
          description="SFT (Qwen2.5-VL conversations) and RL (ms-swift messages) records with provenance.")
def training_records(settings: FactoryConfig, teacher: TeacherResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    cfg = settings.load()
    prov = provenance(cfg, teacher.model_name(), *TEMPLATES)
    with duckdb.get_connection() as con:
        personas, plans, dialogues, images = load_histories(con)
        semantic = read_records(con, "semantic_memory_targets", SemanticMemoryTarget)
        sessions = read_records(con, "session_memory_targets", SessionMemoryTarget)
        steps = read_records(con, "personality_steps", PersonalityStep)
        trajectories = read_records(con, "reasoning_trajectories", ReasoningTrajectory)
        pairs = read_records(con, "alignment_pairs", AlignmentPair)
    pools = distractor_pools(list(plans.values()), images)
    items = {i.item_id: i for plan in plans.values() for i in plan.items}
    distractors = {t.gold_item_id: pools[POOL_OF_KIND[items[t.gold_item_id].kind]] for t in trajectories}
    sft, rl = [], []
    for pid in sorted(dialogues):
        if personas[pid].split != "train":
            continue
        mine = lambda rows: [r for r in rows if r.persona_id == pid]  # noqa: E731
        sft += stage.sft_records(cfg, personas[pid], dialogues[pid], mine(semantic), mine(sessions), mine(steps),
                                 mine(trajectories), prov)
        rl += stage.rl_records(personas[pid], mine(trajectories), mine(pairs), distractors, prov, cfg.seed)
    kept = stage.apply_shares(cfg, sft)
    with duckdb.get_connection() as con:
        write_records(con, "sft_records", kept, {
            "record_id": ("VARCHAR", lambda r: r.record_id), "persona_id": ("VARCHAR", lambda r: r.persona_id),
            "task": ("VARCHAR", lambda r: r.task), "n_images": ("INTEGER", lambda r: len(r.image)),
            "n_image_tokens": ("INTEGER", lambda r: sum(c["value"].count("<image>") for c in r.conversations))})
        write_records(con, "rl_records", rl, {
            "record_id": ("VARCHAR", lambda r: r.record_id), "persona_id": ("VARCHAR", lambda r: r.persona_id),
            "kind": ("VARCHAR", lambda r: r.kind)})
        per_task: dict[str, int] = {}
        for r in kept:
            per_task[r.task] = per_task.get(r.task, 0) + 1
        return finish(con, "training_records", None, (), sft_records=len(kept), sft_candidates=len(sft),
                      sft_per_task=per_task, rl_records=len(rl))
