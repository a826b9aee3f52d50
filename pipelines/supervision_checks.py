"""Asset checks on the supervision targets, per persona shard like the assets they check: the invariants the
training formats rely on (blocking), and a report of how well the inferred personality follows the plan."""

import dagster as dg

from persona_factory.catalog import (
    PERSONALITY_CORRELATIONS, REASONING_TRAJECTORIES, RL_RECORDS, SEMANTIC_MEMORY_TARGETS, SESSION_MEMORY_TARGETS,
    SFT_RECORDS,
)
from persona_factory.readers import by_persona, load_histories, memory_databases, read_shards, replay_all
from persona_factory.stages import exports, memory, reasoning
from persona_factory.store import dumps

from .resources import FactoryConfig, StoreResource

SHOWN = 20  # problems listed in a check's metadata


def result(problems: list[str], **metadata) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": len(problems),
                                                              "first_problems": problems[:SHOWN], **metadata})


def _shards(context: dg.AssetCheckExecutionContext) -> list[str]:
    return list(context.op_execution_context.partition_keys)


def supervision_checks(shards: dg.PartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(asset="memory_targets", blocking=True, partitions_def=shards,
                    description="One semantic decision per turn, remembered exactly when the turn tells a plan fact; "
                                "episodic topics cover every round of their session once; at most five procedural "
                                "entries.")
    def memory_targets_follow_the_plan(context: dg.AssetCheckExecutionContext,
                                       store: StoreResource) -> dg.AssetCheckResult:
        keys = _shards(context)
        with store.get().reader() as con:
            _, plans, dialogues, _ = load_histories(con, keys)
            semantic = by_persona(read_shards(con, SEMANTIC_MEMORY_TARGETS, keys))
            sessions = by_persona(read_shards(con, SESSION_MEMORY_TARGETS, keys))
        problems = [p for pid in sorted(dialogues) if pid in plans
                    for p in memory.target_problems(dialogues[pid], plans[pid], semantic.get(pid, []),
                                                    sessions.get(pid, []))]
        return result(problems, personas=len(dialogues))

    @dg.asset_check(asset="memory_db", blocking=True, partitions_def=shards,
                    description="Replaying the stored targets again gives byte-identical user_data.json.")
    def memory_db_replays_identically(context: dg.AssetCheckExecutionContext,
                                      store: StoreResource) -> dg.AssetCheckResult:
        keys = _shards(context)
        with store.get().reader() as con:
            replayed, _ = replay_all(con, keys)
            stored = memory_databases(con, shards=keys)
        problems = [f"{pid}: stored database differs from a fresh replay" for pid, data in sorted(stored.items())
                    if pid not in replayed or dumps(replayed[pid][1]) != dumps(data)]
        return result(problems, users=len(stored))

    @dg.asset_check(asset="reasoning_trajectories", blocking=True, partitions_def=shards,
                    description="Every step parses as <think>…</think> then <answer> or <retrieve>; every retrieved "
                                "memory was in the persona's database at probe time, outside the short-term window.")
    def trajectories_parse_without_leakage(context: dg.AssetCheckExecutionContext, settings: FactoryConfig,
                                           store: StoreResource) -> dg.AssetCheckResult:
        keys = _shards(context)
        gap = settings.load().dialogue.session_gap_minutes
        with store.get().reader() as con:
            trajectories = read_shards(con, REASONING_TRAJECTORIES, keys)
            user_data = memory_databases(con, shards=keys)
        problems = [p for t in trajectories for p in reasoning.trajectory_problems(t, user_data[t.persona_id], gap)]
        return result(problems, trajectories=len(trajectories),
                      retrieved_memories=sum(len(s.retrieved) for t in trajectories for s in t.steps))

    @dg.asset_check(asset="training_records", blocking=True, partitions_def=shards,
                    description="Each record's <image> tokens match its image list; every row's provenance names the "
                                "personality skip rule.")
    def training_records_are_well_formed(context: dg.AssetCheckExecutionContext,
                                         store: StoreResource) -> dg.AssetCheckResult:
        keys = _shards(context)
        with store.get().reader() as con:
            sft = read_shards(con, SFT_RECORDS, keys)
            rl = read_shards(con, RL_RECORDS, keys)
        return result(exports.export_problems(sft, rl), sft_records=len(sft), rl_records=len(rl))

    @dg.asset_check(asset="training_records", partitions_def=shards,
                    description="Every training persona yields every SFT task type (warns, listing what is missing).")
    def every_training_persona_has_every_task(context: dg.AssetCheckExecutionContext,
                                              store: StoreResource) -> dg.AssetCheckResult:
        keys = _shards(context)
        with store.get().reader() as con:
            sft = read_shards(con, SFT_RECORDS, keys)
            training = sorted(memory_databases(con, "train", keys))
        missing = exports.missing_tasks(sft, training)
        return dg.AssetCheckResult(passed=not missing, severity=dg.AssetCheckSeverity.WARN,
                                   metadata={"training_personas": len(training), "missing": missing})

    @dg.asset_check(asset="personality_trajectories", partitions_def=shards,
                    description="Reports per persona Pearson r of the inferred states with the planned personality "
                                "(sampled Big Five plus planned drifts at each turn's time) and the mean; warns when "
                                "a persona's inferred states are constant, so that nothing can be correlated.")
    def personality_follows_the_plan(context: dg.AssetCheckExecutionContext,
                                     store: StoreResource) -> dg.AssetCheckResult:
        with store.get().reader() as con:
            rows = read_shards(con, PERSONALITY_CORRELATIONS, _shards(context))
        defined = [c.inferred_r for c in rows if c.inferred_r is not None]
        mean = round(sum(defined) / len(defined), 4) if defined else None
        return dg.AssetCheckResult(passed=len(defined) == len(rows), severity=dg.AssetCheckSeverity.WARN, metadata={
            "mean_inferred_r": mean, "personas": len(rows),
            "undefined": [c.persona_id for c in rows if c.inferred_r is None],
            "per_persona": {c.persona_id: {"inferred_r": c.inferred_r, "ema_r": c.ema_r, "drift_trait": c.drift_trait,
                                           "drift_r": c.drift_r, "final_ema_mae": c.final_ema_mae} for c in rows}})

    return [memory_targets_follow_the_plan, memory_db_replays_identically, trajectories_parse_without_leakage,
            training_records_are_well_formed, every_training_persona_has_every_task, personality_follows_the_plan]
