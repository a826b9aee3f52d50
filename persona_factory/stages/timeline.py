"""One view of a user's state at a moment: the plan's items replayed in order. What the plan makes true by a time
(`plan_state`) and what a history has told by a time (`history_state`) are the same replay over different items,
so dialogue checks, memory, reasoning probes, alignment replies and the benchmark's questions and gates all get
one answer to "what does the user like now", "how is that goal going", "who is Maya to them".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from ..schema import Dialogue, Persona, PlanItem, TimelinePlan
from .common import normalize
from .plans import relation_tone

UNKNOWN_STATE = "unknown"  # a goal whose outcome the user never reported


@dataclass(frozen=True)
class Event:
    day: str  # YYYY-MM-DD the user told it (history) or it happened (plan)
    value: str
    person: str | None
    item_id: str


@dataclass(frozen=True)
class Photo:
    day: str
    label: str
    purpose: str
    image_id: str | None
    item_id: str


@dataclass(frozen=True)
class Shift:
    old: str
    new: str
    cause: str | None  # the event that set it off, when that event was replayed before the shift
    item_id: str


@dataclass
class TimelineState:
    """The user's state after the replayed items. Later items override earlier ones."""

    personality: dict[str, float]
    likes: list[str] = field(default_factory=list)  # in the order they became likes
    replaced: list[str] = field(default_factory=list)  # likes a shift replaced
    dislikes: list[str] = field(default_factory=list)
    routines: dict[str, str] = field(default_factory=dict)  # when -> what
    goals: dict[str, str] = field(default_factory=dict)  # goal -> last reported outcome, or UNKNOWN_STATE
    skills: dict[str, str] = field(default_factory=dict)  # skill -> level
    relations: dict[str, str] = field(default_factory=dict)  # person -> relation
    styles: dict[str, str] = field(default_factory=dict)  # dimension -> pole
    events: list[Event] = field(default_factory=list)
    photos: list[Photo] = field(default_factory=list)
    shifts: list[Shift] = field(default_factory=list)
    told: set[str] = field(default_factory=set)  # normalized values of every replayed fact (profile likes too)
    told_days: dict[str, set[str]] = field(default_factory=dict)  # normalized value -> days it was told
    settled_by: dict[tuple[str, str], str] = field(default_factory=dict)  # (fact, subject) -> the item that set it

    @property
    def appearances(self) -> Counter[str]:
        """Person -> events replayed with them."""
        return Counter(e.person for e in self.events if e.person)

    def likes_now(self, value: str) -> bool:
        return normalize(value) in {normalize(v) for v in self.likes}

    def told_on(self, value: str, day: str) -> bool:
        return day in self.told_days.get(normalize(value), set())

    def tone_of(self, person: str) -> str:
        return relation_tone(self.relations[person])

    def goal_open(self, goal: str) -> bool:
        return self.goals.get(goal) in (UNKNOWN_STATE, "making progress")

    def apply(self, item: PlanItem, day: str) -> None:
        v, subject = item.value, item.subject
        values = {normalize(x) for x in (v, subject, item.person or "", item.previous_value or "") if x}
        self.told |= values
        for key in values:
            self.told_days.setdefault(key, set()).add(day)
        match item.kind:
            case "preference":
                self._like(v)
            case "dislike":
                self.dislikes.append(v)
            case "preference_shift":
                old = normalize(item.previous_value or "")
                if any(normalize(x) == old for x in self.likes):
                    self.replaced.append(item.previous_value or "")
                self.likes = [x for x in self.likes if normalize(x) not in (old, normalize(v))] + [v]
                cause = next((e.value for e in self.events if e.item_id == item.cause_item_id), None)
                self.shifts.append(Shift(item.previous_value or "", v, cause, item.item_id))
            case "event":
                self.events.append(Event(day, v, item.person, item.item_id))
            case "routine":
                self.routines[subject] = v
            case "goal":
                self.goals.setdefault(subject, UNKNOWN_STATE)
            case "goal_update":
                self.goals[subject] = v
            case "skill" | "skill_update":
                self.skills[subject] = v
            case "relationship":
                self.relations[subject] = v
            case "style":
                self.styles[subject] = v
            case "photo_share":
                self.photos.append(Photo(day, subject, v, item.image_id, item.item_id))
            case "personality_drift":
                if item.trait and item.delta is not None:
                    t = item.trait
                    self.personality[t] = round(min(5.0, max(1.0, self.personality[t] + item.delta)), 1)
        self.settled_by[item.kind.removesuffix("_update"), subject] = item.item_id

    def _like(self, value: str) -> None:
        if not self.likes_now(value):
            self.likes.append(value)


def replay(persona: Persona, items: Iterable[tuple[PlanItem, str]]) -> TimelineState:
    """The state after the profile's likes (the core memory the user starts from) and then `items` in order, each
    with the day it counts from."""
    state = TimelineState(personality=persona.big_five.model_dump())
    for like in persona.profile.preferences:
        state._like(like)
    state.told |= {normalize(v) for v in persona.profile.preferences}
    for item, day in items:
        state.apply(item, day)
    return state


def plan_state(persona: Persona, plan: TimelinePlan, time: str, told: set[str] | None = None) -> TimelineState:
    """What the plan makes true at `time`: every item dated by then, in time order. With `told` (the ids of the items
    a history has told), only those, plus the planned personality drifts (which show in tone, never in a sentence)."""
    counts = lambda i: told is None or i.item_id in told or i.kind == "personality_drift"  # noqa: E731
    items = sorted((i for i in plan.items if i.time <= time and counts(i)), key=lambda i: (i.time, i.item_id))
    return replay(persona, ((i, i.time[:10]) for i in items))


def history_state(persona: Persona, plan: TimelinePlan, dialogue: Dialogue, before: str) -> TimelineState:
    """What a history says before `before`: the plan items its turns state, in turn order (a later turn overrides
    an earlier one), each dated by the turn that told it; the planned drifts dated by then shape the personality."""
    items = {i.item_id: i for i in plan.items}
    told: list[tuple[PlanItem, str]] = []
    seen: set[str] = set()
    for turn in dialogue.turns:
        if turn.time >= before:
            break
        for item_id in turn.realizes:
            if item_id in items and item_id not in seen:
                seen.add(item_id)
                told.append((items[item_id], turn.time[:10]))
    drifts = [(i, i.time[:10]) for i in plan.items if i.kind == "personality_drift" and i.time <= before]
    state = replay(persona, drifts)
    for item, day in told:
        state.apply(item, day)
    return state
