"""Personality: per-turn inferred Big Five states, PersonaVLM's EMA trajectory, and how well the inferred
states follow the plan's personality (the sampled Big Five plus its planned drifts).

p <- lambda_m * p + (1 - lambda_m) * p'_m with lambda_m = 0.7 - 0.2 cos(pi min(m, 50) / 50) (paper App. A.1).
Skip rules: "all_neutral" (paper: skip the update when all five inferred scores are 3), "per_trait"
(released inference code: skip each trait scored 3), "none" (released RL replay).
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

from pydantic import BaseModel, ConfigDict

from ..config import PipelineConfig
from ..schema import BIG_FIVE_TRAITS, Dialogue, Persona, PersonalityCorrelation, PersonalityStep, TimelinePlan
from ..teacher.types import TeacherRequest, TeacherResult
from .common import chat, sampling
from .timeline import plan_state
from .memory import short_term

Score = Literal[1, 2, 3, 4, 5]
NEUTRAL = 3
INITIAL = 3.0  # PersonaVLM's starting value on every trait


class PersonalityDraft(BaseModel):
    model_config = ConfigDict(extra="forbid")
    openness: Score
    conscientiousness: Score
    extraversion: Score
    agreeableness: Score
    neuroticism: Score


def ema_lambda(m: int) -> float:
    return 0.7 - 0.2 * math.cos(math.pi * min(m, 50) / 50)


def ema_step(current: dict[str, float], inferred: dict[str, int], m: int,
             skip_rule: str) -> tuple[dict[str, float], list[str]]:
    """One PEM update at interaction m (0-based); returns the new vector and the skipped traits."""
    if skip_rule == "all_neutral" and all(inferred[t] == NEUTRAL for t in BIG_FIVE_TRAITS):
        return dict(current), list(BIG_FIVE_TRAITS)
    lam = ema_lambda(m)
    updated, skipped = {}, []
    for t in BIG_FIVE_TRAITS:
        if skip_rule == "per_trait" and inferred[t] == NEUTRAL:
            updated[t] = current[t]
            skipped.append(t)
        else:
            updated[t] = lam * current[t] + (1 - lam) * inferred[t]
    return updated, skipped


def inference_requests(cfg: PipelineConfig, persona: Persona, dialogue: Dialogue,
                       sessions_from: int = 0) -> list[TeacherRequest]:
    """The momentary state the latest message shows, read from it and its recent context (never from the plan).
    A turn's request depends on the turns up to it only: `sessions_from` skips the sessions before it."""
    gap, turns = cfg.dialogue.session_gap_minutes, dialogue.turns
    return [TeacherRequest(chat("personality_inference", name=persona.profile.name, role=persona.role_description,
                                recent=short_term(turns[:t.turn_index], t.time, gap), user=t.user),
                           sampling(cfg, "personality", persona.persona_id, t.turn_index, schema=PersonalityDraft),
                           PersonalityDraft, tag=f"personality:{persona.persona_id}:{t.turn_index}")
            for session in dialogue.sessions[sessions_from:] for t in session.turns]


def trajectory(cfg: PipelineConfig, persona: Persona, plan: TimelinePlan, dialogue: Dialogue,
               results: list[TeacherResult]) -> tuple[list[PersonalityStep], int]:
    """The EMA from 3.0 on every trait; a state the teacher could not give counts as neutral (as PersonaVLM's
    parser does). Returns (steps, neutral fallbacks)."""
    current = {t: INITIAL for t in BIG_FIVE_TRAITS}
    steps, failures = [], 0
    for m, (turn, res) in enumerate(zip(dialogue.turns, results, strict=True)):
        if res.ok:
            inferred = res.value.model_dump()  # type: ignore[union-attr]
        else:
            failures += 1
            inferred = {t: NEUTRAL for t in BIG_FIVE_TRAITS}
        current, skipped = ema_step(current, inferred, m, cfg.supervision.personality_skip_rule)
        steps.append(PersonalityStep(persona_id=dialogue.persona_id, turn_index=turn.turn_index, inferred=inferred,
                                     inferred_by="teacher" if res.ok else "neutral_fallback",
                                     ema={t: round(v, 4) for t, v in current.items()}, skipped=skipped,
                                     planned=plan_state(persona, plan, turn.time).personality))
    return steps, failures


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson's r; None when either side is constant (or there are fewer than two points)."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / math.sqrt(sxx * syy), 4)


def correlation(persona_id: str, steps: list[PersonalityStep]) -> PersonalityCorrelation:
    """Do the inferred states follow the planned personality? Pooled over (turn, trait) pairs, so the between-trait
    levels count as well as the drifts; and on the one trait a drift moves within the history, over time."""
    pairs = [(s.inferred[t], s.ema[t], s.planned[t]) for s in steps for t in BIG_FIVE_TRAITS]
    inferred, ema, planned = zip(*pairs) if pairs else ((), (), ())
    drifted = [t for t in BIG_FIVE_TRAITS if len({s.planned[t] for s in steps}) > 1]
    drift_trait = drifted[0] if drifted else None
    drift_r = (pearson([s.inferred[drift_trait] for s in steps], [s.planned[drift_trait] for s in steps])
               if drift_trait else None)
    last = steps[-1] if steps else None
    mae = round(sum(abs(last.ema[t] - last.planned[t]) for t in BIG_FIVE_TRAITS) / 5, 4) if last else 0.0
    return PersonalityCorrelation(persona_id=persona_id, turns=len(steps), inferred_r=pearson(inferred, planned),
                                  ema_r=pearson(ema, planned), drift_trait=drift_trait, drift_r=drift_r,
                                  final_ema_mae=mae)
