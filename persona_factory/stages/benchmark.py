"""The benchmark's shared ground: its vocabulary (closed option texts, typed answer pools, tip templates), relative
time phrases computed from the probe and the evidence turn, the probe time itself, the one option style, and the
tiers of Tiered Explanation Delivery (per-tier templates the program labels; the teacher may reword a skill's tips,
kept only where it, blind to the labels, puts every reworded tip back in its own tier). The tasks are registered in
`benchmark_tasks`, selection and letters live in `benchmark_select`, the gates in `benchmark_gates`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, StringConstraints, create_model

from ..config import ConfigError, PipelineConfig
from ..schema import GOAL_OUTCOMES, SKILL_LEVELS, Dialogue, TimelinePlan, Turn
from ..teacher.types import Sampling, TeacherRequest, TeacherResult
from .common import chat, contains_phrase, normalize, parse_time, rng_for, sampling
from .plans import vocabulary
from .timeline import UNKNOWN_STATE

BENCH_VOCABULARY_FILE = Path(__file__).resolve().parent.parent / "data" / "benchmark_vocabulary.yaml"
LETTERS = ("(a)", "(b)", "(c)", "(d)")
TIP_KEYS = ("a", "b", "c", "d")  # what the tier check calls the tips it shows, one per tier
MIN_RATIO_CHARS = 8


@lru_cache(maxsize=1)
def bench_vocabulary() -> dict:
    """The benchmark vocabulary, checked against the plan vocabulary whose categories it phrases."""
    bench, plan = yaml.safe_load(BENCH_VOCABULARY_FILE.read_text()), vocabulary()
    problems = []
    if missing := set(plan["photo_purposes"]) ^ set(bench["photo_purposes"]):
        problems.append(f"photo_purposes differ from the plan vocabulary on {sorted(missing)}")
    for dim, poles in plan["styles"].items():
        if set(poles) != set(bench["style_poles"].get(dim, {})):
            problems.append(f"style_poles.{dim} must phrase exactly the poles {poles}")
    if set(bench["goal_states"]) != {*GOAL_OUTCOMES, UNKNOWN_STATE}:
        problems.append(f"goal_states needs exactly the keys {[*GOAL_OUTCOMES, UNKNOWN_STATE]}")
    tiers = bench["tip_tiers"]
    if tiers != list(SKILL_LEVELS) or len(tiers) != len(TIP_KEYS):
        problems.append(f"tip_tiers must be the skill levels {list(SKILL_LEVELS)}")
    if list(bench["tip_templates"]) != tiers:
        problems.append(f"tip_templates needs one list per tip tier, in the order {tiers}")
    for tier, variants in bench["tip_templates"].items():
        if len(variants) < 2 or any("{skill}" not in v or names_a_tier(v, tiers) for v in variants):
            problems.append(f"tip_templates.{tier}: two or more variants, each with a {{skill}} slot and no tier name")
    if problems:
        raise ConfigError(f"{BENCH_VOCABULARY_FILE.name}: " + "; ".join(problems))
    return bench


def visual_answer_type(answer: str) -> str | None:
    """The answer type (colour, count, ...) an image detail's answer belongs to."""
    return next((t for t, values in bench_vocabulary()["visual_answers"].items() if answer in values), None)


# ---------------------------------------------------------------------------------------------- time


def relative_phrase(probe: datetime, event: datetime) -> str:
    """Computed, never written freely: 'earlier today', 'yesterday', 'on Monday', 'about 3 weeks ago' ..."""
    days = (probe.date() - event.date()).days
    if days <= 0:
        return "earlier today"
    if days == 1:
        return "yesterday"
    if days < 7:
        return f"on {event.strftime('%A')}"
    if days < 14:
        return "about a week ago"
    if days < 31:
        return f"about {round(days / 7)} weeks ago"
    months = round(days / 30)
    return "about a month ago" if months == 1 else f"about {months} months ago"


def probe_time(cfg: PipelineConfig, dialogue: Dialogue) -> datetime:
    """The persona's one probe time: after the last turn, past the session gap."""
    return parse_time(dialogue.turns[-1].time) + timedelta(minutes=cfg.benchmark.probe_gap_minutes)


# ---------------------------------------------------------------------------------------------- tips

Tip = Annotated[str, StringConstraints(min_length=8, max_length=60)]


def names_a_tier(text: str, tiers: list[str]) -> bool:
    """A tip naming a tier gives its label away (to the user and to the tier check alike)."""
    return any(contains_phrase(text, tier) for tier in tiers)


@lru_cache(maxsize=1)
def tips_model() -> type[BaseModel]:
    """One tip per tier, as a structured output."""
    return create_model("TierTips", __config__=ConfigDict(extra="forbid"),
                        **{tier: (Tip, ...) for tier in bench_vocabulary()["tip_tiers"]})


@lru_cache(maxsize=1)
def tier_check_model() -> type[BaseModel]:
    """The tier each shown tip suits, as a structured output."""
    tiers = tuple(bench_vocabulary()["tip_tiers"])
    return create_model("TipTiers", __config__=ConfigDict(extra="forbid"),
                        **{key: (Literal[tiers], ...) for key in TIP_KEYS})  # type: ignore[valid-type]


def tip_templates(cfg: PipelineConfig, skills: list[str]) -> dict[str, dict[str, str]]:
    """Skill -> tier -> a template variant for that tier with the skill filled in."""
    vocab = bench_vocabulary()
    out = {}
    for skill in skills:
        rng = rng_for(cfg.seed, "tip-templates", skill)
        out[skill] = {tier: rng.choice(vocab["tip_templates"][tier]).format(skill=skill) for tier in vocab["tip_tiers"]}
    return out


def rewording_requests(cfg: PipelineConfig, templates: dict[str, dict[str, str]]) -> list[TeacherRequest]:
    """The teacher may reword each skill's tips, tier by tier, in the order of `templates`."""
    return [TeacherRequest(chat("benchmark_tips", skill=skill, tips=tips),
                           sampling(cfg, "tips", skill, schema=tips_model()), tips_model(), tag=f"tips:{skill}")
            for skill, tips in templates.items()]


def rewording_problem(tips: dict[str, str], max_ratio: float) -> str | None:
    """Why reworded tips cannot be options at all: a repeat, a tier named, lengths too far apart."""
    texts = [shown(t) for t in tips.values()]
    if len({normalize(t) for t in texts}) < len(texts):
        return "duplicate_tips"
    if any(names_a_tier(t, list(tips)) for t in texts):
        return "names_a_tier"
    if length_ratio(texts) > max_ratio:
        return "option_length_ratio"
    return None


def reworded_tips(cfg: PipelineConfig, skills: list[str],
                  results: list[TeacherResult]) -> tuple[dict[str, dict[str, str]], Counter[str]]:
    """The rewordings worth a tier check (skill -> tier -> tip), and why the other skills keep their templates."""
    out, kept_templates = {}, Counter[str]()
    for skill, res in zip(skills, results, strict=True):
        tips = res.value.model_dump() if res.ok else None  # type: ignore[union-attr]
        problem = "teacher_failure" if tips is None else rewording_problem(tips, cfg.benchmark.max_option_length_ratio)
        if problem:
            kept_templates[problem] += 1
        else:
            out[skill] = tips
    return out, kept_templates


@dataclass(frozen=True)
class TierCheck:
    """The teacher, at temperature 0 and blind to the labels, asked which tier each of a skill's tips suits."""

    skill: str
    shown: dict[str, str]  # key the tip is shown under -> the tier it was written for
    request: TeacherRequest


def tier_checks(cfg: PipelineConfig, rewordings: dict[str, dict[str, str]]) -> list[TierCheck]:
    """One check per skill, the tips in a seeded shuffled order, so their order says nothing about their tier."""
    tiers = bench_vocabulary()["tip_tiers"]
    out = []
    for skill, tips in rewordings.items():
        shown_as = dict(zip(TIP_KEYS, rng_for(cfg.seed, "tip-order", skill).sample(tiers, k=len(tiers))))
        budget = sampling(cfg, "tip-tier", skill, schema=tier_check_model())
        out.append(TierCheck(skill, shown_as, TeacherRequest(
            chat("benchmark_tip_tier", skill=skill, tiers=tiers, tips={k: tips[t] for k, t in shown_as.items()}),
            Sampling(0.0, 1.0, budget.max_tokens, budget.seed), tier_check_model(), tag=f"tip-tier:{skill}")))
    return out


def settle_tips(templates: dict[str, dict[str, str]], rewordings: dict[str, dict[str, str]], checks: list[TierCheck],
                results: list[TeacherResult]) -> tuple[dict[str, dict[str, str]], Counter[str]]:
    """Skill -> tier -> tip: the rewording where the check put every tip in the tier it was written for, else the
    templates; and how many skills took each way ("teacher", or why the templates stayed)."""
    tips, ways = dict(templates), Counter[str]()
    for check, res in zip(checks, results, strict=True):
        if not res.ok:
            ways["check_failure"] += 1
        elif all(getattr(res.value, key) == tier for key, tier in check.shown.items()):
            tips[check.skill] = rewordings[check.skill]
            ways["teacher"] += 1
        else:
            ways["tier_disagreement"] += 1
    return tips, ways


def length_ratio(texts: list[str]) -> float:
    """Longest over shortest option, in characters, counting a short option as MIN_RATIO_CHARS long (options of a
    few letters, "Tom" and "Elena", may sit together; where the gold sits among the lengths is drawn per item, so
    length says nothing about it either way)."""
    lengths = [max(len(t), MIN_RATIO_CHARS) for t in texts]
    return max(lengths) / min(lengths)


def shown(text: str) -> str:
    """One option style for every option: no trailing period, capital first letter."""
    text = text.strip().rstrip(".").strip()
    return text[:1].upper() + text[1:]


def realized_turns(dialogue: Dialogue) -> dict[str, Turn]:
    """Plan item id -> the first turn that told it."""
    out: dict[str, Turn] = {}
    for t in dialogue.turns:
        for item_id in t.realizes:
            out.setdefault(item_id, t)
    return out


def skills_to_explain(plans: list[TimelinePlan], dialogues: dict[str, Dialogue]) -> list[str]:
    """Skills a benchmark history tells of, by their own turn or a progress report (each needs tiered tips)."""
    skills = set()
    for plan in plans:
        if plan.persona_id in dialogues:
            told = realized_turns(dialogues[plan.persona_id])
            skills |= {i.subject for i in plan.items if i.kind in ("skill", "skill_update") and i.item_id in told}
    return sorted(skills)


