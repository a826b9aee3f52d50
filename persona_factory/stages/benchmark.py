"""Persona-MME-style items, as in PersonaVLM's Persona-MME release: first-person questions posed at the persona's
single probe time (after the last turn), four short options, one gold letter, for the 13 primary tasks.

Every gold answer is a plan fact the history realized (a turn's `realizes`), every distractor a value of the same
answer type that is false for this persona: false by the history's own state (an outdated like, a goal given up,
another person's relation, the other pole of a style) or never told at all (drawn from the vocabulary and the other
plans). Each option carries the claim that makes it right or wrong (`OptionFact`), so the gates re-check every
option against the whole history rather than trusting the generator. Relative time phrases are computed from the
probe time and the evidence turn's time. The tips of Tiered Explanation Delivery come from per-tier templates, so
the program labels each; the teacher may reword a skill's tips, kept only where it, blind to the labels, puts every
reworded tip back in its own tier.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Callable, Iterator, Literal

import yaml
from pydantic import BaseModel, ConfigDict, StringConstraints, create_model

from ..config import ConfigError, PipelineConfig
from ..schema import (
    GOAL_OUTCOMES, SKILL_LEVELS, AlignmentPair, BenchmarkCandidate, BenchmarkItem, Dialogue, ImageRecord, OptionFact,
    Persona, PlanItem, TimelinePlan, Turn, bucket_of, fmt_time,
)
from ..teacher.types import Sampling, TeacherRequest, TeacherResult
from .common import chat, contains_phrase, normalize, parse_time, rng_for, sampling, stable_id
from .alignment import PairSpec, contrasting_profile
from .dialogues import current_personality
from .plans import likes_at, relation_tone, vocabulary

BENCH_VOCABULARY_FILE = Path(__file__).resolve().parent.parent / "data" / "benchmark_vocabulary.yaml"
LETTERS = ("(a)", "(b)", "(c)", "(d)")
TASKS = {  # question_type -> type (aspect): Persona-MME's exact strings
    "Visual Detail Recall": "Memory Recall",
    "Semantic Information Recall": "Memory Recall",
    "Explicit Intent Inference": "Intent Inference",
    "Implicit Intent Recognition": "Intent Inference",
    "Latest Preference Recognition": "Preference Recognition",
    "Interest Evolution Analysis": "Preference Recognition",
    "Implicit Preference Recommendation": "Preference Recognition",
    "Behavioral Pattern Recognition": "Behavioral Awareness",
    "Long-term Goal Tracking": "Behavioral Awareness",
    "Relationship Recognition": "Relationship Understanding",
    "Relationship Dynamics Comprehension": "Relationship Understanding",
    "Tiered Explanation Delivery": "Personalized Growth Modeling",
    "Generalizing to New Scenarios": "Personalized Growth Modeling",
}
VDR, SIR, EII, IIR, LPR, IEA, IPR, BPR, LGT, RR, RDC, TED, GNS = TASKS
MIN_OPTION_CHARS = 8  # shorter options count as this long: "Tom" vs "Elena" says nothing about the gold
UNKNOWN_STATE = "unknown"  # a goal whose outcome the user never reported
TIP_KEYS = ("a", "b", "c", "d")  # what the tier check calls the tips it shows, one per tier
# LGT gold states the balance gate evens out: finished = done, gave up / making progress = not done
GOAL_STATE_GROUPS = {"finished": "done", "gave up": "not done", "making progress": "not done", UNKNOWN_STATE: "unknown"}


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
    if tiers[:len(SKILL_LEVELS)] != list(SKILL_LEVELS) or len(tiers) != len(TIP_KEYS):
        problems.append(f"tip_tiers must be the skill levels {SKILL_LEVELS} plus one tier above them")
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


# ---------------------------------------------------------------------------------------------- pools


def answer_type_pools(plans: list[TimelinePlan], images: list[ImageRecord]) -> dict[str, list[str]]:
    """Option pools per answer type (event, routine, hobby, name, ...): the benchmark's own distractors, the plan
    vocabulary and what every plan holds (a distractor is then taken only where it is false for the persona
    asked)."""
    vocab, extra = vocabulary(), bench_vocabulary()["distractors"]
    of = lambda *kinds: [i.value for p in plans for i in p.items if i.kind in kinds]  # noqa: E731
    causes = {i.cause_item_id for p in plans for i in p.items if i.kind == "preference_shift"}
    pools = {
        "event": list(vocab["events"]) + [i.value for p in plans for i in p.items
                                          if i.kind == "event" and i.item_id not in causes],
        "routine": [r[1] for r in vocab["routines"]] + of("routine"),
        "hobby": list(vocab["interests"]) + of("preference", "preference_shift"),
        "name": list(vocab["names"]) + [i.subject for p in plans for i in p.items if i.kind == "relationship"],
        "dislike": list(vocab["dislikes"]) + of("dislike"),
        "goal": list(vocab["goals"]) + [i.subject for p in plans for i in p.items if i.kind == "goal"],
        "label": [label for img in images for label in img.labels],
    }
    return {k: sorted({normalize(v): v for v in [*extra.get(k, []), *values] if normalize(v)}.values())
            for k, values in pools.items()}


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


# ---------------------------------------------------------------------------------------------- candidates


@dataclass
class Draft:
    """One question before its options are shuffled: options are (text, claim args), the gold first."""

    task: str
    query: str
    fact: str
    options: list[tuple[str, list[str]]]
    answer_type: str
    evidence: list[Turn]
    sources: list[str]
    images: list[str] = field(default_factory=list)
    time_phrase: str | None = None


def shown(text: str) -> str:
    """One option style for every option: no trailing period, capital first letter."""
    text = text.strip().rstrip(".").strip()
    return text[:1].upper() + text[1:]


def in_order(turns: list[Turn]) -> list[Turn]:
    return sorted({t.turn_index: t for t in turns}.values(), key=lambda t: t.turn_index)


def has_digit(text: str) -> bool:
    return any(ch.isdigit() for ch in text)


def option_length(text: str) -> int:
    return max(len(text), MIN_OPTION_CHARS)


def length_ratio(texts: list[str]) -> float:
    lengths = [option_length(t) for t in texts]
    return max(lengths) / min(lengths)


class PersonaQuestions:
    """Every question the realized plan of one persona supports, with type-consistent distractors."""

    def __init__(self, cfg: PipelineConfig, persona: Persona, dialogue: Dialogue, plan: TimelinePlan,
                 images: dict[str, ImageRecord], pools: dict[str, list[str]], tips: dict[str, dict[str, str]]):
        self.cfg, self.persona, self.dialogue, self.plan = cfg, persona, dialogue, plan
        self.images, self.pools, self.tips = images, pools, tips
        self.vocab = bench_vocabulary()
        self.rng = rng_for(cfg.seed, "benchmark", persona.persona_id)
        self.probe = probe_time(cfg, dialogue)
        self.told = realized_turns(dialogue)
        self.items = {i.item_id: i for i in plan.items}
        self.user_text = " ".join(t.user for t in dialogue.turns)
        # every value of this persona's plan and profile, told or not: none may serve as a never-told distractor
        self.own = {normalize(v) for i in plan.items for v in (i.value, i.subject, i.person or "", i.previous_value or "")}
        self.own |= {normalize(v) for v in persona.profile.preferences}
        self.own |= {normalize(label) for i in plan.items if i.image_id in images for label in images[i.image_id].labels}

    # ------------------------------------------------------------------ helpers

    def realized(self, *kinds: str) -> list[PlanItem]:
        return sorted((i for i in self.plan.items if i.kind in kinds and i.item_id in self.told),
                      key=lambda i: self.told[i.item_id].turn_index)

    def turn(self, item: PlanItem) -> Turn:
        return self.told[item.item_id]

    def when(self, turn: Turn) -> str:
        return relative_phrase(self.probe, parse_time(turn.time))

    def never_told(self, pool: str) -> list[str]:
        """Pool values that are no value of this persona's plan and that no user turn mentions."""
        text = f" {normalize(self.user_text)} "
        return [v for v in self.pools[pool] if normalize(v) not in self.own and f" {normalize(v)} " not in text]

    def choose(self, gold: str, traps: list[str], pool: list[str], show: Callable[[str], str] = shown,
               n: int = 3) -> list[str] | None:
        """n wrong values: known-false ones (traps) first, then never-told ones, each keeping every option within
        the length ratio, apart from the others (neither equal nor inside one) and with digits only if the gold has
        them; None when too few fit."""
        picked: list[str] = []
        seen = [f" {normalize(show(gold))} "]
        shuffled_traps = self.rng.sample(traps, k=len(traps))
        for value in shuffled_traps + self.rng.sample(pool, k=len(pool)):
            key = f" {normalize(show(value))} "
            if len(picked) == n:
                break
            if key.strip() and not any(key in k or k in key for k in seen) and has_digit(value) == has_digit(gold) \
                    and length_ratio([show(v) for v in [gold, *picked, value]]) <= self.cfg.benchmark.max_option_length_ratio:
                picked.append(value)
                seen.append(key)
        return picked if len(picked) == n else None

    def likes_now(self) -> tuple[list[PlanItem], list[str]]:
        """The told likes the history leaves standing at the probe, and the likes its told shifts replaced."""
        now = likes_at(self.persona, self.plan, fmt_time(self.probe), set(self.told))
        return ([i for i in self.realized("preference", "preference_shift") if i.value in now],
                sorted(s.previous_value for s in self.realized("preference_shift") if s.previous_value))

    def progress(self, kind: str, update_kind: str) -> Iterator[tuple[PlanItem, list[PlanItem], list[PlanItem]]]:
        """Goals or skills the history tells of, by their own turn or a later report: (item, its told reports,
        the told items among both)."""
        for item in (i for i in self.plan.items if i.kind == kind):
            updates = [u for u in self.realized(update_kind) if u.cause_item_id == item.item_id]
            told = [item] * (item.item_id in self.told) + updates
            if told:
                yield item, updates, told

    def draft(self, task: str, query: str, fact: str, gold: str, wrong: list[str] | None,
              args: Callable[[str], list[str]], answer_type: str, evidence: list[Turn], sources: list[PlanItem],
              show: Callable[[str], str] = shown, **extra) -> Iterator[Draft]:
        if wrong is not None:
            yield Draft(task, query, fact, [(show(v), args(v)) for v in [gold, *wrong]], answer_type,
                        in_order(evidence), [s.item_id for s in sources], **extra)

    # ------------------------------------------------------------------ tasks

    def memory_recall(self) -> Iterator[Draft]:
        """SIR: what I did / who was there / what I dislike / what a photo showed; VDR: a detail of a photo."""
        causes = {s.cause_item_id for s in self.plan.items if s.kind == "preference_shift"}
        events = [e for e in self.realized("event") if e.item_id not in causes]
        phrases = Counter(self.when(self.turn(e)) for e in events)
        people = [p.subject for p in self.realized("relationship")]
        for e in events:
            t, when = self.turn(e), self.when(self.turn(e))
            if phrases[when] == 1:
                yield from self.draft(SIR, f"{shown(when)}, I told you about something I did. What was it?",
                                      "event_told_on", e.value, self.choose(e.value, [], self.never_told("event")),
                                      lambda v, d=t.time[:10]: [d, v], "event", [t], [e], time_phrase=when)
            if e.person:
                yield from self.draft(SIR, f"Who was with me when I {e.value}?", "event_with", e.person,
                                      self.choose(e.person, [p for p in people if p != e.person],
                                                  self.never_told("name")),
                                      lambda v, ev=e.value: [ev, v], "name", [t], [e])
        for d in self.realized("dislike"):
            yield from self.draft(SIR, "What did I tell you I really dislike?", "dislikes", d.value,
                                  self.choose(d.value, [], self.never_told("dislike")), lambda v: [v], "dislike",
                                  [self.turn(d)], [d])
        photos = self.realized("photo_share")
        for p in photos:
            t = self.turn(p)
            when, day = self.when(t), t.time[:10]
            if sum(self.when(self.turn(q)) == when for q in photos) > 1:
                continue  # "the photo I sent yesterday" must name one photo
            others = sorted({q.subject for q in photos if q.subject != p.subject and self.turn(q).time[:10] != day})
            yield from self.draft(SIR, f"What did I send you a photo of {when}?", "photo_of_on", p.subject,
                                  self.choose(p.subject, others, self.never_told("label")),
                                  lambda v: [day, v], "label", [t], [p], images=[p.image_id], time_phrase=when)
            yield from self.visual_details(p, t, when)

    def visual_details(self, photo: PlanItem, t: Turn, when: str) -> Iterator[Draft]:
        image = self.images.get(photo.image_id or "")
        if image is None:
            return
        asked = f"In the photo of the {photo.subject} I sent you {when}"
        for question, answer in sorted(image.details.items()):
            kind = visual_answer_type(answer)
            if kind is None:
                continue  # the form gate cannot type it, so it is not asked
            near = set(self.vocab["colour_neighbours"].get(answer, [])) if kind == "colour" else set()
            pool = [v for v in self.vocab["visual_answers"][kind] if v != answer and v not in near]
            yield from self.draft(VDR, f"{asked}, {question[0].lower()}{question[1:]}", "image_detail", answer,
                                  self.choose(answer, [], pool), lambda v, q=question: [image.image_id, q, v],
                                  f"visual {kind}", [t], [photo], images=[image.image_id], time_phrase=when)
        if not image.details and len(image.labels) > 1:  # photos without details: what else the photo showed
            also = self.rng.choice(image.labels[1:])
            pool = [v for v in self.pools["label"] if normalize(v) not in {normalize(x) for x in image.labels}]
            yield from self.draft(VDR, f"Besides the {image.labels[0]}, what else was in the photo I sent you {when}?",
                                  "image_shows", also, self.choose(also, [], pool),
                                  lambda v: [image.image_id, v], "label", [t], [photo], images=[image.image_id],
                                  time_phrase=when)

    def intent(self) -> Iterator[Draft]:
        """EII: why I sent a photo; IIR: which photo a situation calls for, which goal I am making time for."""
        purposes = self.vocab["photo_purposes"]
        photos = self.realized("photo_share")
        by_purpose = Counter(p.value for p in photos)
        for p in photos:
            t = self.turn(p)
            when, day = self.when(t), t.time[:10]
            if sum(q.subject == p.subject and self.when(self.turn(q)) == when for q in photos) == 1:
                others = [v for v in purposes if v != p.value]
                yield from self.draft(EII, f"Why did I send you that photo of the {p.subject} {when}?",
                                      "photo_purpose_on", p.value, self.choose(p.value, others, [],
                                                                                lambda v: purposes[v]["option"]),
                                      lambda v: [day, p.subject, v], "purpose", [t], [p],
                                      lambda v: purposes[v]["option"], images=[p.image_id], time_phrase=when)
            if by_purpose[p.value] == 1:
                others = sorted({q.subject for q in photos if q.value != p.value and q.subject != p.subject})
                yield from self.draft(IIR, purposes[p.value]["situation"], "photo_for", p.subject,
                                      self.choose(p.subject, others, self.never_told("label"), self.photo_option),
                                      lambda v: [v, p.value], "photo", [t], [p], self.photo_option,
                                      images=[p.image_id])
        goals = [(goal, updates[-1].value if updates else UNKNOWN_STATE, told)
                 for goal, updates, told in self.progress("goal", "goal_update")]
        ended = [goal.subject for goal, state, _ in goals if state in ("finished", "gave up")]
        for goal, state, told in goals:
            if state in (UNKNOWN_STATE, "making progress"):
                yield from self.draft(IIR, "I've cleared some time this weekend for one of my long-term goals. "
                                           "Which one am I most likely working on?", "goal_active", goal.subject,
                                      self.choose(goal.subject, ended, self.never_told("goal")), lambda v: [v],
                                      "goal", [self.turn(i) for i in told], told)

    @staticmethod
    def photo_option(label: str) -> str:
        return f"The {label} photo"

    def preference(self) -> Iterator[Draft]:
        """LPR: the newer of two likes; IEA: what set a shift off; IPR: a suggestion among likes and non-likes."""
        liked, replaced = self.likes_now()
        dislikes = self.realized("dislike")
        hobbies = self.never_told("hobby")
        for s in self.realized("preference_shift"):
            shift_turn = self.turn(s)
            yield from self.draft(LPR, "Of these, which have I been most into lately?", "likes_now", s.value,
                                  self.choose(s.value, [s.previous_value or ""], hobbies), lambda v: [v], "hobby",
                                  [shift_turn], [s])
            cause = self.items.get(s.cause_item_id or "")
            if cause is not None and cause.item_id in self.told and s.previous_value:
                first_go = lambda v: f"My first go at {v}"  # noqa: E731
                yield from self.draft(IEA, f"I used to be really into {s.previous_value}, but something changed "
                                           "that. What set it off?", "shift_cause", s.value,
                                      self.choose(s.value, [], hobbies, first_go),
                                      lambda v, old=s.previous_value: [old, v], "first try", [self.turn(cause),
                                                                                              shift_turn],
                                      [cause, s], first_go)
        not_liked = dislikes + [p for p in self.realized("preference") if p.value in replaced]
        for like in liked:
            wrong = self.choose(like.value, [i.value for i in not_liked], hobbies)
            trap_turns = [self.turn(i) for i in not_liked if wrong and i.value in wrong]
            yield from self.draft(IPR, "I've got a free afternoon. Which of these would you suggest I spend it on?",
                                  "likes_now", like.value, wrong, lambda v: [v], "activity",
                                  [self.turn(like), *trap_turns], [like])

    def behavior(self) -> Iterator[Draft]:
        """BPR: what I usually do at a routine's time; LGT: a goal's outcome, or that it was never reported."""
        for r in self.realized("routine"):
            yield from self.draft(BPR, f"What do I usually do {r.subject}?", "routine", r.value,
                                  self.choose(r.value, [], self.never_told("routine")), lambda v, w=r.subject: [w, v],
                                  "routine", [self.turn(r)], [r])
        states = self.vocab["goal_states"]
        for goal, updates, told in self.progress("goal", "goal_update"):
            state = updates[-1].value if updates else UNKNOWN_STATE
            yield from self.draft(LGT, f"Did I ever finish my goal to {goal.subject}?", "goal_status", state,
                                  [s for s in states if s != state], lambda v: [goal.subject, v], "goal state",
                                  [self.turn(i) for i in told], told, lambda v: states[v])

    def relationships(self) -> Iterator[Draft]:
        """RR: who is my <relation>, who I spend the most time with; RDC: the tone a message to someone takes."""
        people = self.realized("relationship")
        with_person = [e for e in self.realized("event") if e.person]
        seen = Counter(e.person for e in with_person)
        names = sorted({p.subject for p in people} | set(seen))
        top = seen.most_common(2)
        tones = sorted(set(vocabulary()["relations"].values()))
        for p in people:
            others = [n for n in names if n != p.subject]
            yield from self.draft(RR, f"Which of these people is my {p.value}?", "relation_of", p.subject,
                                  self.choose(p.subject, others, self.never_told("name")), lambda v, r=p.value: [v, r],
                                  "name", [self.turn(p)], [p])
            tone = relation_tone(p.value)
            yield from self.draft(RDC, f"I'm writing a message to {p.subject}. What tone should I go for?", "tone_for",
                                  tone, self.choose(tone, [t for t in tones if t != tone], []),
                                  lambda v, n=p.subject: [n, v], "tone", [self.turn(p)], [p])
        if top and (len(top) == 1 or top[0][1] > top[1][1]):
            name = top[0][0]
            yield from self.draft(RR, "Going by what I've told you, who have I spent the most time with lately?",
                                  "most_present", name,
                                  self.choose(name, [n for n in names if n != name], self.never_told("name")),
                                  lambda v: [v], "name", [self.turn(e) for e in with_person], with_person)

    def growth(self) -> Iterator[Draft]:
        """TED: the tip that fits my current level; GNS: a new activity that fits both my likes and my style."""
        tiers = self.vocab["tip_tiers"]
        for skill, updates, told in self.progress("skill", "skill_update"):
            tips = self.tips[skill.subject]
            level = updates[-1].value if updates else skill.value
            yield from self.draft(TED, f"I'd like one tip for {skill.subject} that fits where I am now. "
                                       "Which suits me best?", "skill_tier", level,
                                  [t for t in tiers if t != level], lambda v: [skill.subject, v], "tip",
                                  [self.turn(i) for i in told], told, lambda v, tips=tips: shown(tips[v]))
        liked, replaced = self.likes_now()
        if not liked:
            return
        for style in self.realized("style"):
            poles = self.vocab["style_poles"][style.subject]
            other = next(p for p in poles if p != style.value)
            like = self.rng.choice(liked)
            grid = lambda thing, pole: f"{shown(thing)}, {poles[pole]}"  # noqa: E731
            # the other thing: a like the user moved on from if one fits the length ratio, else a never-told hobby,
            # else a dislike (a workshop in something disliked reads oddly)
            hobbies = self.never_told("hobby")
            unliked = replaced + self.rng.sample(hobbies, k=len(hobbies)) + [d.value for d in self.realized("dislike")]
            fitting = [u for u in unliked
                       if length_ratio([grid(like.value, style.value), grid(u, other), grid(u, style.value),
                                        grid(like.value, other)]) <= self.cfg.benchmark.max_option_length_ratio]
            if not fitting:
                continue
            thing = fitting[0]
            cells = [(like.value, style.value), (like.value, other), (thing, style.value), (thing, other)]
            unliked_turns = [self.turn(i) for i in self.realized("dislike", "preference") if i.value == thing]
            yield Draft(GNS, "I'd like to sign up for a weekend workshop. Which would suit me best?", "suits",
                        [(grid(a, b), [a, style.subject, b]) for a, b in cells], "activity and style",
                        in_order([self.turn(style), self.turn(like), *unliked_turns]),
                        [style.item_id, like.item_id])

    def drafts(self) -> list[Draft]:
        return [*self.memory_recall(), *self.intent(), *self.preference(), *self.behavior(), *self.relationships(),
                *self.growth()]

    def candidate(self, d: Draft) -> BenchmarkCandidate:
        """Options shuffled (letters are assigned for good once the gates have run)."""
        order = self.rng.sample(range(4), k=4)
        texts = [d.options[k][0] for k in order]
        item = BenchmarkItem(
            item_id=stable_id("q_", self.persona.persona_id, d.task, d.query, d.options[0][0]),
            persona_id=self.persona.persona_id, bucket=bucket_of(self.persona.split, len(self.dialogue.turns)),
            type=TASKS[d.task], question_type=d.task, time=fmt_time(self.probe), query=d.query,
            choices=dict(zip(LETTERS, texts)), answer=LETTERS[order.index(0)],
            evidence_turns=[t.turn_index for t in d.evidence], evidence_images=list(d.images), source_item_ids=d.sources)
        return BenchmarkCandidate(item=item, answer_type=d.answer_type, time_phrase=d.time_phrase,
                                  option_facts={text: OptionFact(fact=d.fact, args=args) for text, args in d.options})


def persona_candidates(cfg: PipelineConfig, persona: Persona, dialogue: Dialogue, plan: TimelinePlan,
                       images: dict[str, ImageRecord], pools: dict[str, list[str]],
                       tips: dict[str, dict[str, str]]) -> list[BenchmarkCandidate]:
    q = PersonaQuestions(cfg, persona, dialogue, plan, images, pools, tips)
    unique: dict[str, BenchmarkCandidate] = {}
    for d in q.drafts():
        c = q.candidate(d)
        unique.setdefault(c.item.item_id, c)
    return list(unique.values())


# ---------------------------------------------------------------------------------------------- selection


def gold_text(c: BenchmarkCandidate) -> str:
    return c.item.choices[c.item.answer]


def goal_state_group(c: BenchmarkCandidate) -> str:
    """done / not done / unknown, for Long-term Goal Tracking items."""
    return GOAL_STATE_GROUPS[c.option_facts[gold_text(c)].args[1]]


def select_items(cfg: PipelineConfig, candidates: list[BenchmarkCandidate]) -> list[BenchmarkCandidate]:
    """Up to `items_per_persona` per persona: every task once before any twice, the task least asked so far
    overall first, image items steered to `image_item_share`, LGT gold states evened out."""
    n, share = cfg.benchmark.items_per_persona, cfg.benchmark.image_item_share
    by_persona: dict[str, list[BenchmarkCandidate]] = defaultdict(list)
    for c in sorted(candidates, key=lambda c: c.item.item_id):
        by_persona[c.item.persona_id].append(c)
    tasks, states = Counter(), Counter()
    images = total = 0
    chosen = []
    for pid, cands in sorted(by_persona.items()):
        rng = rng_for(cfg.seed, "benchmark-select", pid)
        open_: dict[str, list[BenchmarkCandidate]] = defaultdict(list)
        for c in rng.sample(cands, k=len(cands)):
            open_[c.item.question_type].append(c)
        tie = {t: rng.random() for t in open_}
        mine: Counter[str] = Counter()
        used: set[tuple[str, ...]] = set()
        while sum(mine.values()) < n and any(open_.values()):
            want_image = images < share * (total + 1)
            task = min((t for t in open_ if open_[t]), key=lambda t: (
                mine[t], tasks[t], want_image and not any(c.item.evidence_images for c in open_[t]), tie[t]))
            pick = min(open_[task], key=lambda c: (
                tuple(c.item.source_item_ids) in used,  # a second question on one fact only when nothing else is left
                bool(c.item.evidence_images) != want_image,
                states[goal_state_group(c)] if task == LGT else 0))
            open_[task].remove(pick)
            used.add(tuple(pick.item.source_item_ids))
            chosen.append(pick)
            mine[task] += 1
            tasks[task] += 1
            total += 1
            images += bool(pick.item.evidence_images)
            if task == LGT:
                states[goal_state_group(pick)] += 1
    return chosen


def assign_letters(cfg: PipelineConfig, candidates: list[BenchmarkCandidate]) -> list[BenchmarkCandidate]:
    """Gold letters balanced by construction: each item takes the letter its task has used least, then the one
    used least overall (so an "always (a)" baseline scores at chance per task and overall); the distractors keep
    their shuffled order around the gold."""
    rng = rng_for(cfg.seed, "benchmark-letters")
    per_task: Counter[tuple[str, str]] = Counter()
    overall: Counter[str] = Counter()
    out = []
    for c in sorted(candidates, key=lambda c: (c.item.question_type, c.item.item_id)):
        task = c.item.question_type
        letter = min(LETTERS, key=lambda k: (per_task[task, k], overall[k], rng.random()))
        per_task[task, letter] += 1
        overall[letter] += 1
        others = [v for k, v in c.item.choices.items() if k != c.item.answer]
        others.insert(LETTERS.index(letter), gold_text(c))
        item = c.item.model_copy(update={"choices": dict(zip(LETTERS, others)), "answer": letter})
        out.append(c.model_copy(update={"item": item}))
    return out


def alignment_specs(cfg: PipelineConfig, persona: Persona, plan: TimelinePlan, dialogue: Dialogue, probe: str,
                    items: list[BenchmarkCandidate]) -> dict[str, PairSpec]:
    """Personality Alignment for about `alignment_share` of a persona's items: replies to the item's own query at
    the probe, chosen for the personality the plan gives the user then, rejected generic and for a contrasting
    profile in turn (so the aligned reply is not simply the personalized one). Keyed by item id."""
    rng = rng_for(cfg.seed, "benchmark-alignment", persona.persona_id)
    ids = sorted(c.item.item_id for c in items)
    chosen = sorted(rng.sample(ids, k=round(cfg.benchmark.alignment_share * len(ids))))
    current, interests = current_personality(persona, plan, probe), likes_at(persona, plan, probe)
    start = rng.randint(0, 1)
    query = {c.item.item_id: c.item.query for c in items}
    specs = {}
    for k, item_id in enumerate(chosen):
        kind = ("generic", "other_profile")[(start + k) % 2]
        specs[item_id] = PairSpec(stable_id("pa_", item_id), dialogue.turns[-1], probe, query[item_id], kind, current,
                                  contrasting_profile(current, rng) if kind == "other_profile" else None, interests)
    return specs


def attach_alignment(items: list[BenchmarkCandidate], pairs: dict[str, AlignmentPair]) -> list[BenchmarkCandidate]:
    """Items with the pair written for them, keyed by item id."""
    out = []
    for c in items:
        pair = pairs.get(c.item.item_id)
        if pair is not None:
            c = c.model_copy(update={"item": c.item.model_copy(
                update={"alignment": {"chosen": pair.chosen, "rejected": pair.rejected}})})
        out.append(c)
    return out

