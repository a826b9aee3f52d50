"""Alignment pairs: for an in-situ query, a reply fitting the persona's planned personality at that moment
(chosen) against one that is either generic or personalized for a *different* Big Five profile (rejected), half
each, so a pair cannot be solved by spotting the generic reply. Every reply sees the user's interests, the generic
one too: only the personality differs, so mentioning what the profile lists does not single out the chosen one.

Checks: both replies present and distinct, neither naming the traits or scores it was written for, and their
lengths within `alignment_max_length_ratio` of each other (length must not give the chosen one away); a pair
failing one is quarantined with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

from ..config import PipelineConfig
from ..schema import BIG_FIVE_TRAITS, AlignmentPair, Dialogue, Persona, QuarantineRow, TimelinePlan, Turn, fmt_time
from ..teacher.types import TeacherRequest, TeacherResult
from .common import chat, normalize, parse_time, personality_text, rng_for, sampling, stable_id
from .timeline import plan_state

QUERIES = [
    "Can you help me plan my weekend?",
    "I have a stressful week ahead. Any advice?",
    "How should I tell a friend I can't come to their party?",
    "Suggest something new I could try this month.",
    "How do I organise my tasks for tomorrow?",
    "What should I cook for dinner tonight?",
    "I keep putting off a hard conversation at work. What should I do?",
    "Any ideas for a birthday gift for someone close to me?",
    "How can I make my evenings more relaxing?",
    "I want to get better at something this year. Where do I start?",
]
# trait -> how a low / a high score shows, so the teacher writes for a person rather than for numbers
TRAIT_WORDS = {
    "openness": ("prefers the familiar and practical", "curious and eager for new ideas"),
    "conscientiousness": ("spontaneous and flexible", "organised and methodical"),
    "extraversion": ("reserved and quiet", "outgoing and energetic"),
    "agreeableness": ("frank and sceptical", "warm and accommodating"),
    "neuroticism": ("calm and steady", "prone to worry and glad of reassurance"),
}
QUERY_DELAY_MINUTES = 5


class ReplyDraft(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reply: Annotated[str, StringConstraints(min_length=10, max_length=360)]


@dataclass(frozen=True)
class PairSpec:
    pair_id: str
    after: Turn
    time: str
    query: str
    kind: str  # "generic" | "other_profile"
    current: dict[str, float]
    other: dict[str, float] | None
    interests: tuple[str, ...]


def describe(profile: dict[str, float]) -> str:
    """Words for the traits that lean one way (below 2.5 or above 3.5), with the scores."""
    leaning = [TRAIT_WORDS[t][profile[t] > 3] for t in BIG_FIVE_TRAITS if abs(profile[t] - 3) > 0.5]
    return f"{'; '.join(leaning) or 'balanced on every trait'} ({personality_text(profile)})"


def contrasting_profile(current: dict[str, float], rng) -> dict[str, float]:
    """Every trait on the other side of neutral, at least half a point from it: personalized, for someone else."""
    def flip(x: float) -> float:
        high = x < 3 or (x == 3 and rng.random() < 0.5)
        return round(rng.uniform(3.5, 5.0) if high else rng.uniform(1.0, 2.5), 1)
    return {t: flip(current[t]) for t in BIG_FIVE_TRAITS}


def pair_specs(cfg: PipelineConfig, persona: Persona, plan: TimelinePlan, dialogue: Dialogue) -> list[PairSpec]:
    """In-situ queries after random turns; rejected kinds alternate from a random start (half generic)."""
    rng = rng_for(cfg.seed, "alignment", persona.persona_id)
    n = min(cfg.supervision.alignment_pairs_per_persona, len(QUERIES), len(dialogue.turns))
    queries = rng.sample(QUERIES, k=n)
    turns = sorted(rng.sample(dialogue.turns, k=n), key=lambda t: t.turn_index)
    start = rng.randint(0, 1)
    specs = []
    for k, (query, after) in enumerate(zip(queries, turns)):
        time = fmt_time(parse_time(after.time) + timedelta(minutes=QUERY_DELAY_MINUTES))
        now = plan_state(persona, plan, time)
        kind = ("generic", "other_profile")[(start + k) % 2]
        specs.append(PairSpec(stable_id("a_", persona.persona_id, query, after.turn_index), after, time, query, kind,
                              now.personality, contrasting_profile(now.personality, rng)
                              if kind == "other_profile" else None, tuple(now.likes)))
    return specs


def reply_requests(cfg: PipelineConfig, specs: list[PairSpec]) -> list[TeacherRequest]:
    """Two requests per pair: chosen, then rejected."""
    out = []
    for s in specs:
        for role, profile in (("chosen", s.current), ("rejected", s.other)):
            out.append(TeacherRequest(
                chat("alignment_reply", query=s.query, personality=describe(profile) if profile else None,
                     interests=", ".join(s.interests)),
                sampling(cfg, "alignment", s.pair_id, role, schema=ReplyDraft), ReplyDraft, tag=f"alignment:{s.after.persona_id}:{s.pair_id}:{role}"))
    return out


def pair_problem(chosen: str, rejected: str, max_ratio: float) -> str | None:
    if normalize(chosen) == normalize(rejected):
        return "identical_replies"
    if any(t in normalize(chosen + " " + rejected) for t in BIG_FIVE_TRAITS):
        return "names_a_trait"
    short, long_ = sorted((len(chosen), len(rejected)))
    if long_ > max_ratio * short:
        return "length_gives_it_away"
    return None


def build_pairs(cfg: PipelineConfig, specs: list[PairSpec],
                results: list[TeacherResult]) -> tuple[list[AlignmentPair], list[QuarantineRow]]:
    pairs, quarantined = [], []
    for i, s in enumerate(specs):
        chosen, rejected = results[2 * i], results[2 * i + 1]
        key = f"{s.after.persona_id}:{s.pair_id}"
        if not (chosen.ok and rejected.ok):
            quarantined.append(QuarantineRow(table_name="alignment_pairs", row_key=key, rule="teacher_failure",
                                             value=f"{s.query} | {chosen.failure or rejected.failure}"))
            continue
        c, r = chosen.value.reply.strip(), rejected.value.reply.strip()  # type: ignore[union-attr]
        if problem := pair_problem(c, r, cfg.supervision.alignment_max_length_ratio):
            quarantined.append(QuarantineRow(table_name="alignment_pairs", row_key=key, rule=problem,
                                             value=f"{s.query} | chosen: {c} | rejected: {r}"))
            continue
        pairs.append(AlignmentPair(pair_id=s.pair_id, persona_id=s.after.persona_id, after_turn_index=s.after.turn_index,
                                   query_time=s.time, query=s.query, chosen=c, rejected=r, rejected_kind=s.kind,
                                   chosen_profile=s.current, rejected_profile=s.other))
    return pairs, quarantined
