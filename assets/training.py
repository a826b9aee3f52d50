from collections import Counter

import dagster as dg

from persona_factory.catalog import (
    ALIGNMENT_PAIRS, PERSONALITY_STEPS, REASONING_TRAJECTORIES, RL_RECORDS, SEMANTIC_MEMORY_TARGETS,
    SESSION_MEMORY_TARGETS, SFT_RECORDS,
)
from persona_factory.readers import by_persona, load_histories, memory_databases, read_shards
from persona_factory.stages import exports as stage
from persona_factory.stages.common import provenance
from pipelines.jobs import SUPERVISION
from pipelines.partitions import SHARD_BACKFILL
from pipelines.resources import FactoryConfig, StoreResource, TeacherResource

from .common import finish, run_shards, shard_batch

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


def training_asset(shards: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(group_name=SUPERVISION, partitions_def=shards, backfill_policy=SHARD_BACKFILL,
              deps=["memory_db", "personality_trajectories", "reasoning_trajectories", "alignment_pairs"],
              description="SFT (Qwen2.5-VL conversations) and RL (ms-swift messages) records of the training "
                          "personas, subsampled to the configured shares within each shard, with provenance per row.")
    def training_records(context: dg.AssetExecutionContext, settings: FactoryConfig, teacher: TeacherResource,
                         store: StoreResource) -> dg.MaterializeResult:
        cfg = settings.load()
        keys = run_shards(context, cfg)
        model = teacher.model_name()
        prov = {task: provenance(cfg, model, *HISTORY_TEMPLATES, *templates)
                for task, templates in TASK_TEMPLATES.items()}
        with store.get().reader() as con:
            personas, _, dialogues, _ = load_histories(con, keys)
            semantic = by_persona(read_shards(con, SEMANTIC_MEMORY_TARGETS, keys))
            sessions = by_persona(read_shards(con, SESSION_MEMORY_TARGETS, keys))
            steps = by_persona(read_shards(con, PERSONALITY_STEPS, keys))
            trajectories = by_persona(read_shards(con, REASONING_TRAJECTORIES, keys))
            pairs = by_persona(read_shards(con, ALIGNMENT_PAIRS, keys))
            user_data = memory_databases(con, "train", keys)
        shares = cfg.supervision
        sft, rl, kept_sft, kept_rl, quarantined = [], [], [], [], []
        for shard in keys:  # shares are met within each shard, so a shard's records never depend on others
            shard_sft, shard_rl = [], []
            for pid in sorted(p for p in user_data if personas[p].shard == shard):
                agent = stage.Agent(personas[pid], dialogues[pid], user_data[pid],
                                    {s.turn_index: s for s in steps.get(pid, [])}, cfg.dialogue.session_gap_minutes)
                records, bad = stage.sft_records(agent, semantic.get(pid, []), sessions.get(pid, []),
                                                 steps.get(pid, []), trajectories.get(pid, []), prov)
                shard_sft += records
                quarantined += bad
                shard_rl += stage.rl_records(agent, trajectories.get(pid, []), pairs.get(pid, []), prov["rl"],
                                             cfg.seed)
            kept_sft += stage.apply_shares(shard_sft, lambda r: stage.SHARE_GROUP[r.task],
                                           lambda r: f"{r.persona_id}:{r.task}", shares.sft_shares, cfg.seed,
                                           f"sft:{shard}")
            kept_rl += stage.apply_shares(shard_rl, lambda r: r.kind, stage.rl_stratum, shares.rl_shares, cfg.seed,
                                          f"rl:{shard}")
            sft += shard_sft
            rl += shard_rl
        shard_of = {pid: p.shard for pid, p in personas.items()}
        batch = shard_batch("training_records", keys, cfg)
        batch.add(SFT_RECORDS, kept_sft, shard_of=shard_of)
        batch.add(RL_RECORDS, kept_rl, shard_of=shard_of)
        return finish(store.get(), batch, None, quarantined, owner_shard=shard_of, sft_records=len(kept_sft),
                      sft_candidates=len(sft), sft_per_task=dict(sorted(Counter(r.task for r in kept_sft).items())),
                      sft_shares=stage.achieved_shares(kept_sft, lambda r: stage.SHARE_GROUP[r.task]),
                      rl_records=len(kept_rl), rl_candidates=len(rl),
                      rl_shares=stage.achieved_shares(kept_rl, lambda r: r.kind),
                      skip_rule=cfg.supervision.personality_skip_rule)

    return training_records
