"""Asset checks on the supervision targets: the invariants the training formats rely on (blocking), and a report
of how well the inferred personality follows the plan."""

from __future__ import annotations

import json

import dagster as dg
from dagster_duckdb import DuckDBResource

from assets.common import by_persona, load_histories
from assets.memory import replay_all
from persona_factory.schema import (
    PersonalityCorrelation, ReasoningTrajectory, RLRecord, SemanticMemoryTarget, SessionMemoryTarget, SFTRecord,
)
from persona_factory.stages import exports, memory, reasoning
from persona_factory.store import dumps, read_records
from pipelines.resources import FactoryConfig

SHOWN = 20  # problems listed in a check's metadata


def result(problems: list[str], **metadata) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": len(problems),
                                                              "first_problems": problems[:SHOWN], **metadata})


@dg.asset_check(asset="memory_targets", blocking=True,
                description="One semantic decision per turn, remembered exactly when the turn tells a plan fact; "
                            "episodic topics cover every round of their session once; at most five procedural entries.")
def memory_targets_follow_the_plan(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    with duckdb.get_connection() as con:
        _, plans, dialogues, _ = load_histories(con)
        semantic = by_persona(read_records(con, "semantic_memory_targets", SemanticMemoryTarget))
        sessions = by_persona(read_records(con, "session_memory_targets", SessionMemoryTarget))
    problems = [p for pid in sorted(dialogues) if pid in plans
                for p in memory.target_problems(dialogues[pid], plans[pid], semantic.get(pid, []),
                                                sessions.get(pid, []))]
    return result(problems, personas=len(dialogues))


@dg.asset_check(asset="memory_db", blocking=True,
                description="Replaying the stored targets again gives byte-identical user_data.json.")
def memory_db_replays_identically(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    with duckdb.get_connection() as con:
        replayed, _ = replay_all(con)
        stored = dict(con.execute("SELECT persona_id, user_data FROM memory_db").fetchall())
    problems = [f"{pid}: stored database differs from a fresh replay" for pid, data in sorted(stored.items())
                if pid not in replayed or dumps(replayed[pid][1]) != dumps(json.loads(data))]
    return result(problems, users=len(stored))


@dg.asset_check(asset="reasoning_trajectories", blocking=True,
                description="Every step parses as <think>…</think> then <answer> or <retrieve>; every retrieved "
                            "memory was in the persona's database at probe time, outside the short-term window.")
def trajectories_parse_without_leakage(settings: FactoryConfig, duckdb: DuckDBResource) -> dg.AssetCheckResult:
    gap = settings.load().dialogue.session_gap_minutes
    with duckdb.get_connection() as con:
        trajectories = read_records(con, "reasoning_trajectories", ReasoningTrajectory)
        user_data = {pid: json.loads(u) for pid, u in con.execute("SELECT persona_id, user_data FROM memory_db").fetchall()}
    problems = [p for t in trajectories for p in reasoning.trajectory_problems(t, user_data[t.persona_id], gap)]
    return result(problems, trajectories=len(trajectories),
                  retrieved_memories=sum(len(s.retrieved) for t in trajectories for s in t.steps))


@dg.asset_check(asset="training_records", blocking=True,
                description="Each record's <image> tokens match its image list; every row's provenance names the "
                            "personality skip rule.")
def training_records_are_well_formed(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    with duckdb.get_connection() as con:
        sft = read_records(con, "sft_records", SFTRecord)
        rl = read_records(con, "rl_records", RLRecord)
    return result(exports.export_problems(sft, rl), sft_records=len(sft), rl_records=len(rl))


@dg.asset_check(asset="training_records",
                description="Every training persona yields every SFT task type (warns, listing what is missing).")
def every_training_persona_has_every_task(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    with duckdb.get_connection() as con:
        sft = read_records(con, "sft_records", SFTRecord)
        training = [r[0] for r in con.execute("SELECT persona_id FROM memory_db WHERE split = 'train' ORDER BY 1").fetchall()]
    missing = exports.missing_tasks(sft, training)
    return dg.AssetCheckResult(passed=not missing, severity=dg.AssetCheckSeverity.WARN,
                               metadata={"training_personas": len(training), "missing": missing})


@dg.asset_check(asset="personality_trajectories",
                description="Reports per persona Pearson r of the inferred states with the planned personality "
                            "(sampled Big Five plus planned drifts at each turn's time) and the mean; warns when a "
                            "persona's inferred states are constant, so that nothing can be correlated.")
def personality_follows_the_plan(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    with duckdb.get_connection() as con:
        rows = read_records(con, "personality_correlations", PersonalityCorrelation)
    defined = [c.inferred_r for c in rows if c.inferred_r is not None]
    mean = round(sum(defined) / len(defined), 4) if defined else None
    return dg.AssetCheckResult(passed=len(defined) == len(rows), severity=dg.AssetCheckSeverity.WARN, metadata={
        "mean_inferred_r": mean, "personas": len(rows), "undefined": [c.persona_id for c in rows if c.inferred_r is None],
        "per_persona": {c.persona_id: {"inferred_r": c.inferred_r, "ema_r": c.ema_r, "drift_trait": c.drift_trait,
                                       "drift_r": c.drift_r, "final_ema_mae": c.final_ema_mae} for c in rows}})


supervision_checks = [memory_targets_follow_the_plan, memory_db_replays_identically, trajectories_parse_without_leakage,
                      training_records_are_well_formed, every_training_persona_has_every_task,
                      personality_follows_the_plan]
