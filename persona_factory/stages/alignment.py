"""M7 alignment pairs: a reply fitting the persona's current personality (chosen) against one that is
either generic or personalized for a *different* Big Five profile (rejected), half each, so a pair cannot be
solved by spotting the generic reply."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

from ..config import PipelineConfig
from ..schema import BIG_FIVE_TRAITS, AlignmentPair, Persona, TimelinePlan
from ..teacher.types import TeacherRequest, TeacherResult
from .common import chat, personality_text, rng_for, sampling, stable_id

QUERIES = [
    "Can you help me plan my weekend?",
    "I have a stressful week ahead. Any advice?",
    "How should I tell a friend I can't come to their party?",
    "Suggest something new I could try this month.",
    "How do I organise my tasks for tomorrow?",
    "What should I cook for dinner tonight?",
]


class ReplyDraft(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reply: Annotated[str, StringConstraints(min_length=10, max_length=360)]


def current_personality(persona: Persona, plan: TimelinePlan) -> dict[str, float]:
    """The planned personality at the end of the history: the sampled vector plus every planned drift."""
    values = persona.big_five.model_dump()
    for item in plan.items:
        if item.kind == "personality_drift" and item.trait and item.delta is not None:
            values[item.trait] = round(min(5.0, max(1.0, values[item.trait] + item.delta)), 1)
    return values


def contrasting_profile(big_five: dict[str, float]) -> dict[str, float]:
    """The mirror profile (6 - x on every trait): personalized, but for someone else."""
    return {t: round(6 - big_five[t], 1) for t in BIG_FIVE_TRAITS}


def pair_specs(cfg: PipelineConfig, persona: Persona, current: dict[str, float]) -> list[dict]:
    rng = rng_for(cfg.seed, "alignment", persona.persona_id)
    specs = []
    for k, query in enumerate(rng.sample(QUERIES, k=min(cfg.supervision.alignment_pairs_per_persona, len(QUERIES)))):
        kind = "generic" if (k + rng.randint(0, 1)) % 2 == 0 else "other_profile"
        specs.append({"pair_id": stable_id("a_", persona.persona_id, query), "query": query, "kind": kind,
                      "current": current, "other": contrasting_profile(current) if kind == "other_profile" else None})
    return specs


def reply_requests(cfg: PipelineConfig, persona: Persona, specs: list[dict]) -> list[TeacherRequest]:
    """Two requests per pair: chosen, then rejected."""
    interests = ", ".join(persona.profile.preferences)
    out = []
    for s in specs:
        for role, profile, with_interests in (("chosen", s["current"], True), ("rejected", s["other"], False)):
            out.append(TeacherRequest(
                chat("alignment_reply", query=s["query"], personality=personality_text(profile) if profile else None,
                     interests=interests if with_interests else None),
                sampling(cfg, "alignment", s["pair_id"], role), ReplyDraft, tag=f"alignment:{s['pair_id']}:{role}"))
    return out


def build_pairs(persona: Persona, specs: list[dict], results: list[TeacherResult]) -> tuple[list[AlignmentPair], int]:
    pairs, failed = [], 0
    for i, s in enumerate(specs):
        chosen, rejected = results[2 * i], results[2 * i + 1]
        if not (chosen.ok and rejected.ok) or chosen.value.reply.strip() == rejected.value.reply.strip():
            failed += 1
            continue
        pairs.append(AlignmentPair(pair_id=s["pair_id"], persona_id=persona.persona_id, query=s["query"],
                                   chosen=chosen.value.reply.strip(), rejected=rejected.value.reply.strip(),
                                   rejected_kind=s["kind"], rejected_profile=s["other"]))
    return pairs, failed
