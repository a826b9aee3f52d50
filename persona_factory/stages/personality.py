"""M6 personality: per-turn inferred Big Five states and PersonaVLM's EMA trajectory.

p <- lambda_m * p + (1 - lambda_m) * p'_m with lambda_m = 0.7 - 0.2 cos(pi min(m, 50) / 50) (paper App. A.1).
Skip rules: "all_neutral" (paper: skip the update when all five inferred scores are 3), "per_trait"
(released inference code: skip each trait scored 3), "none" (released RL replay).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ..config import PipelineConfig
from ..schema import BIG_FIVE_TRAITS, Dialogue, Persona, PersonalityStep
from ..teacher.types import TeacherRequest, TeacherResult
from .common import chat, sampling

Score = Literal[1, 2, 3, 4, 5]
NEUTRAL = 3


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


def inference_requests(cfg: PipelineConfig, persona: Persona, dialogue: Dialogue) -> list[TeacherRequest]:
    return [TeacherRequest(chat("personality_inference", name=persona.profile.name, role=persona.role_description,
                                user=t.user),
                           sampling(cfg, "personality", persona.persona_id, t.turn_index, max_tokens=64),
                           PersonalityDraft, tag=f"personality:{persona.persona_id}:{t.turn_index}")
            for t in dialogue.turns]


def trajectory(cfg: PipelineConfig, dialogue: Dialogue,
               results: list[TeacherResult]) -> tuple[list[PersonalityStep], int]:
    """The EMA starts at 3.0 on every trait (PersonaVLM's initial value); unparsable states count as neutral."""
    current = {t: 3.0 for t in BIG_FIVE_TRAITS}
    steps, failures = [], 0
    for m, (turn, res) in enumerate(zip(dialogue.turns, results)):
        if res.ok:
            inferred = res.value.model_dump()  # type: ignore[union-attr]
        else:
            failures += 1
            inferred = {t: NEUTRAL for t in BIG_FIVE_TRAITS}
        current, skipped = ema_step(current, inferred, m, cfg.supervision.personality_skip_rule)
        steps.append(PersonalityStep(persona_id=dialogue.persona_id, turn_index=turn.turn_index, inferred=inferred,
                                     ema={t: round(v, 4) for t, v in current.items()}, skipped=skipped))
    return steps, failures
