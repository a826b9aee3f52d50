"""M2 timeline plans: the ground truth every later gold answer is traced to.

The teacher proposes names and phrases (people, goals, routines, events, interests, dislikes, skills); the
program checks each as a phrase of its kind (`plan_values`: a refused one is a quarantine row with the reason),
fills what is short from a closed vocabulary, schedules the conversations, gives every item a date and a session,
and draws the planned changes (preference shifts with the first try that set them off, goal outcomes, skill
progress, personality drifts) with the probabilities declared in the config. Categories a benchmark answer depends
on (relation and its tone, why a photo was shared, how the user likes to work) always come from the vocabulary.
Item ids hash the persona, the kind and the item's position, never its value, so an id says nothing about it.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from itertools import zip_longest
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Callable

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..config import PipelineConfig, TurnRange
from ..schema import (
    BIG_FIVE_TRAITS, BUCKET_MAX_TURNS, GOAL_OUTCOMES, SKILL_LEVELS, ImageRecord, Persona, PlanItem, PlannedSession,
    QuarantineRow, TimelinePlan, fmt_time,
)
from ..teacher.types import TeacherRequest, TeacherResult
from .common import chat, normalize, parse_time, rng_for, sampling, stable_id
from .plan_values import value_problem

VOCABULARY_FILE = Path(__file__).resolve().parent.parent / "data" / "plan_vocabulary.yaml"
Phrase = Annotated[str, StringConstraints(min_length=3, max_length=48)]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Z][a-z]{1,15}$")]  # bounds inside: see grammar_schema
MINUTES_PER_TURN = 6  # turns of one session are at most this far apart


class RoutineDraft(BaseModel):
    model_config = ConfigDict(extra="forbid")
    when: Annotated[str, StringConstraints(min_length=3, max_length=32)]  # e.g. "every Saturday morning"
    action: Annotated[str, StringConstraints(min_length=3, max_length=40)]  # e.g. "go to the farmers market"


class PlanDraft(BaseModel):
    """What the teacher proposes for one persona (structured output)."""

    model_config = ConfigDict(extra="forbid")
    people: list[Name] = Field(min_length=1, max_length=6)
    goals: list[Phrase] = Field(max_length=6)
    routines: list[RoutineDraft] = Field(max_length=6)
    events: list[Phrase] = Field(max_length=12)
    new_interests: list[Phrase] = Field(min_length=1, max_length=4)
    dislikes: list[Phrase] = Field(max_length=4)
    skills: list[Phrase] = Field(max_length=3)


@lru_cache(maxsize=1)
def vocabulary() -> dict:
    return yaml.safe_load(VOCABULARY_FILE.read_text())


def relation_tone(relation: str) -> str:
    """How a message to someone of this relation should sound (the closed vocabulary's mapping)."""
    return vocabulary()["relations"][relation]


def span_days(cfg: PipelineConfig, persona: Persona) -> int:
    return cfg.plan.span_days_train if persona.split == "train" else cfg.plan.span_days_bench


def turn_range(cfg: PipelineConfig, persona: Persona) -> TurnRange:
    """The preset's turn range for the persona's split, narrowed to its Persona-MME bucket where it has one (the
    small bucket holds histories up to its size, the large one longer ones), as far as the range allows."""
    d = cfg.dialogue
    full = {"train": d.turns_train, "bench_32k": d.turns_32k, "bench_128k": d.turns_128k}[persona.split]
    if persona.bucket is None:
        return full
    small, _ = BUCKET_MAX_TURNS[persona.split]
    lo, hi = (full.min, min(full.max, small)) if int(persona.bucket) == small else (max(full.min, small + 1), full.max)
    return TurnRange(min=lo, max=hi) if lo <= hi else full


def plan_request(cfg: PipelineConfig, persona: Persona) -> TeacherRequest:
    p = cfg.plan
    messages = chat("plan_details", name=persona.profile.name, role=persona.role_description,
                    preferences=", ".join(persona.profile.preferences), people=p.people, goals=p.goals,
                    routines=p.routines, events=p.events + p.person_events, new_interests=2,
                    dislikes=p.dislikes, skills=p.skills)
    return TeacherRequest(messages, sampling(cfg, "plan", persona.persona_id, schema=PlanDraft),
                          PlanDraft, tag=f"plan:{persona.persona_id}")


# PlanDraft field -> the plan value kinds its entries are checked as
DRAFT_KINDS = {"goals": ("goal",), "events": ("event",), "new_interests": ("hobby",), "dislikes": ("dislike",),
               "skills": ("skill",), "routines": ("routine_when", "routine_action")}


def checked_draft(persona: Persona, draft: PlanDraft) -> tuple[PlanDraft, list[QuarantineRow]]:
    """The proposals that read as phrases of their kind, and a quarantine row for each refused one (the plan fills
    its place from the vocabulary). The profile's likes become told likes only when they pass as hobbies too."""
    refused: list[QuarantineRow] = []

    def ok(kind: str, value: str, shown: str | None = None) -> bool:
        problem = value_problem(kind, value)
        if problem:
            refused.append(QuarantineRow(table_name="timeline_plans", row_key=persona.persona_id,
                                         rule="plan_value_refused", value=f"{kind}: {shown or value!r} ({problem})"))
        return problem is None

    kept: dict[str, list] = {}
    for name, kinds in DRAFT_KINDS.items():
        values = getattr(draft, name)
        if name == "routines":
            kept[name] = [r for r in values if all([ok(kinds[0], r.when, repr(f"{r.when} / {r.action}")),
                                                    ok(kinds[1], r.action, repr(f"{r.when} / {r.action}"))])]
        else:
            kept[name] = [v for v in values if ok(kinds[0], v)]
    for like in persona.profile.preferences:
        ok("hobby", like, f"profile preference {like!r}")
    return draft.model_copy(update=kept), refused


def told_likes(persona: Persona) -> list[str]:
    """The profile's likes a history may tell (each a phrase a slot can take)."""
    return [v for v in persona.profile.preferences if value_problem("hobby", v) is None]


def schedule_sessions(cfg: PipelineConfig, persona: Persona) -> list[PlannedSession]:
    """Conversation calendar: a turn budget from the preset range, split into sessions on distinct days."""
    rng = rng_for(cfg.seed, "sessions", persona.persona_id)
    tr, per = turn_range(cfg, persona), cfg.dialogue.turns_per_session
    total = rng.randint(tr.min, tr.max)
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(min(rng.randint(per.min, per.max), total - sum(sizes)))
    if len(sizes) > 1 and sizes[-1] < 2:  # a one-turn tail joins the previous session
        tail = sizes.pop()
        sizes[-1] += tail
    days = span_days(cfg, persona)
    offsets = sorted(rng.sample(range(days), k=min(len(sizes), days)))
    while len(offsets) < len(sizes):  # more sessions than days: later ones share the last day, hours apart
        offsets.append(offsets[-1])
    start = parse_time(persona.start_time)
    sessions, last_end = [], None
    min_gap = timedelta(minutes=cfg.dialogue.session_gap_minutes + 1)
    for i, (off, n) in enumerate(zip(offsets, sizes)):
        t = start + timedelta(days=off, hours=rng.randint(0, 11), minutes=rng.randrange(0, 60, 5))
        if last_end is not None and t < last_end + min_gap:
            t = last_end + min_gap + timedelta(minutes=rng.randrange(0, 120, 5))
        sessions.append(PlannedSession(session_index=i, start=fmt_time(t), n_turns=n))
        last_end = t + timedelta(minutes=MINUTES_PER_TURN * (n - 1))
    return sessions


def _unique(values: list, key: Callable = normalize) -> list:
    seen, out = set(), []
    for v in values:
        k = key(v)
        if k and k not in seen:
            seen.add(k)
            out.append(v)
    return out


def _proposals(proposed: list, pool: list, n: int, rng: random.Random, key: Callable = normalize,
               taken: set[str] | None = None) -> list:
    """The teacher's distinct proposals first, then vocabulary entries, n in all; nothing already taken."""
    taken = taken if taken is not None else set()
    out = []
    extra = list(pool)
    rng.shuffle(extra)
    for v in _unique(list(proposed), key) + extra:
        if len(out) == n:
            break
        k = key(v)
        if k and k not in taken:
            taken.add(k)
            out.append(v)
    return out


@dataclass
class _Calendar:
    """Free plan-item capacity per session, and the dates an item told in a session can carry."""

    sessions: list[PlannedSession]
    free: list[int]

    def window(self, index: int) -> tuple[str, str]:
        """(earliest, latest) time for an item first told in session `index`: after the previous session ended."""
        start = parse_time(self.sessions[index].start)
        if index == 0:
            return fmt_time(start - timedelta(days=2)), fmt_time(start)
        prev = self.sessions[index - 1]
        prev_end = parse_time(prev.start) + timedelta(minutes=MINUTES_PER_TURN * (prev.n_turns - 1) + 1)
        return fmt_time(prev_end), fmt_time(start)

    def take(self, rng: random.Random, earliest: int = 0, latest: int | None = None) -> int | None:
        latest = len(self.sessions) - 1 if latest is None else latest
        open_ = [i for i in range(earliest, latest + 1) if self.free[i] > 0]
        if not open_:
            return None
        index = rng.choice(open_)
        self.free[index] -= 1
        return index


def build_plan(cfg: PipelineConfig, persona: Persona, draft: PlanDraft, images: list[ImageRecord]) -> TimelinePlan:
    """Every item gets the session it is told in; its time falls between the previous session and that one.

    Items are added one kind at a time in rounds (one of each kind, then a second of each ...), so a short
    history still gets every kind before any kind gets its second item.
    """
    rng = rng_for(cfg.seed, "plan", persona.persona_id)
    p, vocab, pid = cfg.plan, vocabulary(), persona.persona_id
    sessions = schedule_sessions(cfg, persona)
    total_turns = sum(s.n_turns for s in sessions)
    side = "train" if persona.split == "train" else "bench"
    photo_pool = sorted((i for i in images if image_side(i) == side), key=lambda i: i.image_id)
    n_photos = round(cfg.dialogue.image_turn_share * total_turns) if photo_pool else 0
    facts = total_turns - n_photos - round(p.small_talk_share * total_turns)
    free = [s.n_turns for s in sessions]
    photo_sessions = []
    for _ in range(n_photos):  # photos first: their share of turns is fixed by the config
        photo_sessions.append(rng.choice([i for i, f in enumerate(free) if f > 0]))
        free[photo_sessions[-1]] -= 1
    cal = _Calendar(sessions, free)
    for _ in range(max(0, sum(free) - facts)):  # keep the small-talk share free
        free[rng.choice([i for i, f in enumerate(free) if f > 0])] -= 1
    items: list[PlanItem] = []

    def add(kind: str, session: int, subject: str, value: str, **extra: object) -> PlanItem:
        lo, hi = cal.window(session)
        lo_t, hi_t = parse_time(lo), parse_time(hi)
        minutes = int((hi_t - lo_t).total_seconds() // 60)
        when = lo_t + timedelta(minutes=rng.randint(0, max(0, minutes)))
        item = PlanItem(item_id=stable_id("i_", pid, kind, len(items)), persona_id=pid, kind=kind,
                        time=fmt_time(when), subject=subject, value=value, **extra)
        items.append(item)
        return item

    taken: set[str] = {normalize(x) for x in persona.profile.preferences}
    names = _proposals(draft.people, vocab["names"], p.people, rng, taken=set())
    relations = rng.sample(sorted(vocab["relations"]), k=min(len(names), len(vocab["relations"])))
    people = list(zip(names, relations))
    goals = _proposals(draft.goals, vocab["goals"], p.goals, rng, taken=taken)
    routines = _proposals([(r.when, r.action) for r in draft.routines], [tuple(r) for r in vocab["routines"]],
                          p.routines, rng, key=lambda r: normalize(r[1]), taken=taken)
    events = _proposals(draft.events, vocab["events"], p.events + p.person_events, rng, taken=taken)
    interests = _proposals(draft.new_interests, vocab["interests"], 1, rng, taken=taken)
    # likes the history tells: the profile's own, alternating with likes only the history reveals
    profile_likes = told_likes(persona)
    revealed = _proposals(draft.new_interests[1:], vocab["interests"], p.preferences, rng, taken=taken)
    likes = [v for pair in zip_longest(profile_likes, revealed) for v in pair if v is not None][:p.preferences]
    dislikes = _proposals(draft.dislikes, vocab["dislikes"], p.dislikes, rng, taken=taken)
    skills = _proposals(draft.skills, vocab["skills"], p.skills, rng, taken=taken)
    styles = rng.sample(sorted(vocab["styles"]), k=min(p.styles, len(vocab["styles"])))

    people_sessions: dict[str, int] = {}
    person_events = events[p.events:]
    plain_events = events[:p.events]
    # the first person is the most present one: they get every other person event, the rest share the others
    event_people = [names[0] if k % 2 == 0 or len(names) == 1 else names[1 + (k // 2) % (len(names) - 1)]
                    for k in range(len(person_events))]

    def add_preference(k: int) -> bool:
        if k >= len(likes):
            return False
        s = cal.take(rng, 0, max(0, len(sessions) // 3))
        return s is not None and bool(add("preference", s, "hobby", likes[k]))

    def add_person(k: int) -> bool:
        if k >= len(people):
            return False
        s = cal.take(rng, 0, max(0, len(sessions) // 2))
        if s is None:
            return False
        name, relation = people[k]
        people_sessions[name] = s
        return bool(add("relationship", s, name, relation))

    def add_person_event(k: int) -> bool:
        """After the session that introduces the person, where there is one."""
        if k >= len(person_events) or event_people[k] not in people_sessions:
            return False
        s = cal.take(rng, min(people_sessions[event_people[k]] + 1, len(sessions) - 1))
        return s is not None and bool(add("event", s, "event", person_events[k], person=event_people[k]))

    def told_once(kind: str, values: list, fields: Callable[[Any], tuple[str, str]]) -> Callable[[int], bool]:
        """Adds the k-th value, if there is one, as a `kind` item told in any session with a free turn."""
        def add_kth(k: int) -> bool:
            if k >= len(values):
                return False
            s = cal.take(rng)
            return s is not None and bool(add(kind, s, *fields(values[k])))
        return add_kth

    add_event = told_once("event", plain_events, lambda v: ("event", v))
    add_routine = told_once("routine", routines, lambda r: r)
    add_dislike = told_once("dislike", dislikes, lambda v: ("dislike", v))
    add_style = told_once("style", styles, lambda dim: (dim, rng.choice(vocab["styles"][dim])))

    def add_goal(k: int) -> bool:
        """A goal, and with goal_update_prob a later outcome report (otherwise its outcome stays unknown)."""
        if k >= len(goals):
            return False
        s = cal.take(rng, 0, max(0, len(sessions) - 2))
        if s is None:
            return False
        goal = add("goal", s, goals[k], "started")
        if s < len(sessions) - 1 and rng.random() < p.goal_update_prob:
            u = cal.take(rng, s + 1)
            if u is not None:
                add("goal_update", u, goal.subject, rng.choice(GOAL_OUTCOMES), previous_value="started",
                    cause_item_id=goal.item_id)
        return True

    def add_skill(k: int) -> bool:
        """The level the history ends at is uniform over the levels; with skill_update_prob it is reached by a
        later report of progress from the level below."""
        if k >= len(skills):
            return False
        s = cal.take(rng, 0, max(0, len(sessions) - 2))
        if s is None:
            return False
        final = rng.randrange(len(SKILL_LEVELS))
        grows = final > 0 and s < len(sessions) - 1 and rng.random() < p.skill_update_prob
        u = cal.take(rng, s + 1) if grows else None
        skill = add("skill", s, skills[k], SKILL_LEVELS[final - (u is not None)])
        if u is not None:
            add("skill_update", u, skill.subject, SKILL_LEVELS[final], previous_value=skill.value,
                cause_item_id=skill.item_id)
        return True

    def add_shift(k: int) -> bool:
        """A new interest replacing an earlier like, caused by a first try one or more sessions before; and, where
        a turn is free, a first try of something else that changed nothing (so "what set it off" needs the
        history's order, not just spotting a first try)."""
        old = [i for i in items if i.kind == "preference"]
        if k >= len(interests) or not old or len(sessions) < 2 or rng.random() >= p.preference_shift_prob:
            return False
        first_pref = min(told_in(sessions, i) for i in old)
        cause_s = cal.take(rng, first_pref, len(sessions) - 2)
        if cause_s is None:
            return False
        shift_s = cal.take(rng, cause_s + 1)
        if shift_s is None:
            cal.free[cause_s] += 1
            return False
        cause = add("event", cause_s, interests[k], first_try(interests[k]))
        add("preference_shift", shift_s, "hobby", interests[k],
            previous_value=rng.choice([i for i in old if told_in(sessions, i) <= cause_s]).value,
            cause_item_id=cause.item_id)
        decoy = _proposals([], vocab["interests"], 1, rng, taken=taken)
        decoy_s = cal.take(rng)
        if decoy and decoy_s is not None:
            add("event", decoy_s, decoy[0], first_try(decoy[0]))
        return True

    # most telling first: when turns run short, the kinds at the end lose their items first
    kinds = [add_preference, add_person, add_shift, add_goal, add_routine, add_person_event, add_event, add_skill,
             add_dislike, add_style]
    rounds = max(p.preferences, p.people, p.routines, p.goals, p.person_events, p.events, p.dislikes, p.skills,
                 p.styles, 1)
    for k in range(rounds):
        for kind in kinds:
            kind(k)
    for k in range(len(person_events)):  # persons introduced late may still take events in later rounds
        if not any(i.kind == "event" and i.value == person_events[k] for i in items):
            add_person_event(k)

    _add_photos(photo_pool, photo_sessions, add, rng)
    events_told = [i for i in items if i.kind == "event"]
    if events_told and rng.random() < p.personality_drift_prob:
        cause = rng.choice(events_told)
        trait = rng.choice(BIG_FIVE_TRAITS)
        items.append(PlanItem(item_id=stable_id("i_", pid, "drift", trait, cause.item_id), persona_id=pid,
                              kind="personality_drift", time=cause.time, subject=trait, value=trait, trait=trait,
                              delta=rng.choice([-1.0, -0.5, 0.5, 1.0]), cause_item_id=cause.item_id))
    items.sort(key=lambda i: (i.time, i.item_id))
    return TimelinePlan(persona_id=pid, span_days=span_days(cfg, persona), sessions=sessions, items=items)


def first_try(interest: str) -> str:
    return f"tried {interest} for the first time"


def tried_interest(item: PlanItem) -> str | None:
    """The interest a first-try event is about (its subject), or None for any other item."""
    return item.subject if item.kind == "event" and item.value == first_try(item.subject) else None


def image_side(image: ImageRecord) -> str:
    """Training and benchmark histories draw from disjoint halves of the pool, so no image leaks across; the crops
    of a bundled photograph go with it, which a perceptual hash would not tie them to."""
    key = image.image_id if image.photograph is None else hashlib.sha256(image.photograph.encode()).hexdigest()
    return "train" if int(key[:8], 16) % 2 == 0 else "bench"


def _add_photos(pool: list[ImageRecord], photo_sessions: list[int], add: Callable, rng: random.Random) -> None:
    """A photo_share item in each session reserved for one, with distinct photos until the pool runs out."""
    order = rng.sample(pool, k=len(pool))
    purposes = list(vocabulary()["photo_purposes"])
    for k, session in enumerate(photo_sessions):
        image = order[k % len(order)]
        add("photo_share", session, image.labels[0], rng.choice(purposes), image_id=image.image_id)


def build_plans(cfg: PipelineConfig, personas: list[Persona], results: list[TeacherResult],
                images: list[ImageRecord]) -> tuple[list[TimelinePlan], list[QuarantineRow]]:
    plans, quarantined = [], []
    for persona, res in zip(personas, results):
        if res.ok:
            draft, refused = checked_draft(persona, res.value)  # type: ignore[arg-type]
            plans.append(build_plan(cfg, persona, draft, images))
            quarantined += refused
        else:
            quarantined.append(QuarantineRow(table_name="timeline_plans", row_key=persona.persona_id,
                                             rule="teacher_failure", value=res.failure or ""))
    return plans, quarantined


@dataclass(frozen=True)
class Realization:
    """How a plan item is told: what the user does in the turn (third person, as in "the user ..."), the
    phrases the user message must contain, and the fact in third person (memory wording falls back to it)."""

    instruction: str
    phrases: tuple[str, ...]
    statement: str


GOAL_NEWS = {"finished": "they finished it", "gave up": "they gave up on it",
             "making progress": "they are making progress"}


def realizable(item: PlanItem) -> bool:
    """Items a user turn states; drifts show in the user's tone, not as a sentence."""
    return item.kind != "personality_drift"


def realization(item: PlanItem) -> Realization:
    v, s = item.value, item.subject
    match item.kind:
        case "preference":
            return Realization(f"says they enjoy {v}", (v,), f"The user enjoys {v}.")
        case "dislike":
            return Realization(f"says they really dislike {v}", (v,), f"The user dislikes {v}.")
        case "preference_shift":
            return Realization(f"says that these days they are more into {v} than {item.previous_value}",
                               tuple(x for x in (v, item.previous_value) if x),
                               f"The user is now more into {v} than {item.previous_value}.")
        case "event" if item.person:
            return Realization(f"says they {v} with {item.person}", (v, item.person),
                               f"The user {v} with {item.person}.")
        case "event":
            return Realization(f"says they {v}", (v,), f"The user {v}.")
        case "routine":
            return Realization(f"says that {s} they {v}, as a habit", (s, v), f"{s[0].upper()}{s[1:]}, the user {v}.")
        case "goal":
            return Realization(f"says they have set themselves a long-term goal: to {s}", (s,),
                               f"The user has a long-term goal: to {s}.")
        case "goal_update":
            return Realization(f"gives news on their goal to {s}: {GOAL_NEWS[v]}", (s, v),
                               f"On the goal to {s}, {GOAL_NEWS[v].replace('they', 'the user', 1)}.")
        case "relationship":
            return Realization(f"mentions {s}, who is their {v}", (v, s), f"{s} is the user's {v}.")
        case "skill":
            return Realization(f"says they practise {s} and are at {v} level", (s, v),
                               f"The user practises {s} at {v} level.")
        case "skill_update":
            return Realization(f"says they have now reached {v} level at {s}", (s, v),
                               f"The user has reached {v} level at {s}.")
        case "style":
            return Realization(f"says they like to do things {v}", (v,), f"The user likes to do things {v}.")
        case "photo_share":
            return Realization(f"shares a photo of the {s} and says they are sending it {v}", (s, v),
                               f"The user shared a photo of the {s} {v}.")
    raise ValueError(f"plan item kind {item.kind} is not realizable")


def told_in(sessions: list[PlannedSession], item: PlanItem) -> int:
    """The session an item is told in: the first one starting at or after the item's time."""
    return next(s.session_index for s in sessions if item.time <= s.start)
