"""M2 timeline plans: the ground truth. The teacher proposes names and phrases; the program dates them,
schedules the conversations, and draws preference shifts and personality drifts with declared probabilities."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..config import PipelineConfig
from ..schema import BIG_FIVE_TRAITS, Persona, PlanItem, PlannedSession, QuarantineRow, TimelinePlan, fmt_time
from ..teacher.types import TeacherRequest, TeacherResult
from .common import chat, normalize, parse_time, rng_for, sampling, stable_id

Phrase = Annotated[str, StringConstraints(min_length=3, max_length=48)]


class Person(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, StringConstraints(min_length=2, max_length=20)]
    relation: Annotated[str, StringConstraints(min_length=3, max_length=24)]


class PlanDraft(BaseModel):
    model_config = ConfigDict(extra="forbid")
    people: list[Person] = Field(min_length=1, max_length=6)
    goals: list[Phrase] = Field(max_length=6)
    routines: list[Phrase] = Field(max_length=6)
    events: list[Phrase] = Field(max_length=12)
    new_interests: list[Phrase] = Field(min_length=1, max_length=4)


def span_days(cfg: PipelineConfig, persona: Persona) -> int:
    return cfg.plan.span_days_train if persona.split == "train" else cfg.plan.span_days_bench


def turn_range(cfg: PipelineConfig, persona: Persona):
    d = cfg.dialogue
    return {"train": d.turns_train, "bench_32k": d.turns_32k, "bench_128k": d.turns_128k}[persona.split]


def plan_request(cfg: PipelineConfig, persona: Persona) -> TeacherRequest:
    p = cfg.plan
    messages = chat("plan_details", name=persona.profile.name, role=persona.role_description,
                    preferences=", ".join(persona.profile.preferences), people=p.people, goals=p.goals,
                    routines=p.routines, events=p.events, new_interests=2)
    return TeacherRequest(messages, sampling(cfg, "plan", persona.persona_id, max_tokens=max(cfg.teacher.max_tokens, 256)),
                          PlanDraft, tag=f"plan:{persona.persona_id}")


def schedule_sessions(cfg: PipelineConfig, persona: Persona) -> list[PlannedSession]:
    """Conversation calendar: a turn budget from the preset range, split into sessions on distinct days."""
    rng = rng_for(cfg.seed, "sessions", persona.persona_id)
    tr, per = turn_range(cfg, persona), cfg.dialogue.turns_per_session
    total = rng.randint(tr.min, tr.max)
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(min(rng.randint(per.min, per.max), total - sum(sizes)))
    if len(sizes) > 1 and sizes[-1] < 2:  # a one-turn tail joins the previous session
        sizes[-2] += sizes.pop()
    days = span_days(cfg, persona)
    offsets = sorted(rng.sample(range(days), k=min(len(sizes), days)))
    while len(offsets) < len(sizes):  # more sessions than days: later ones share the last day, hours apart
        offsets.append(offsets[-1])
    start = parse_time(persona.start_time)
    sessions, last = [], None
    for i, (off, n) in enumerate(zip(offsets, sizes)):
        t = start + timedelta(days=off, hours=rng.randint(0, 11), minutes=rng.randrange(0, 60, 5))
        if last is not None and t < last + timedelta(minutes=cfg.dialogue.session_gap_minutes + 61):
            t = last + timedelta(minutes=cfg.dialogue.session_gap_minutes + 61 + rng.randrange(0, 120, 5))
        sessions.append(PlannedSession(session_index=i, start=fmt_time(t), n_turns=n))
        last = t + timedelta(minutes=6 * n)  # turns are at most 6 minutes apart
    return sessions


def build_plan(cfg: PipelineConfig, persona: Persona, draft: PlanDraft) -> TimelinePlan:
    """Dates every item just before the session it will be told in; earlier-known facts go first."""
    rng = rng_for(cfg.seed, "plan", persona.persona_id)
    p = cfg.plan
    sessions = schedule_sessions(cfg, persona)
    pid = persona.persona_id
    items: list[PlanItem] = []

    def session_time(index: int, hours_before: int = 0) -> str:
        return fmt_time(parse_time(sessions[index].start) - timedelta(hours=hours_before))

    def add(kind: str, subject: str, value: str, session: int, **extra: object) -> PlanItem:
        item = PlanItem(item_id=stable_id("i_", pid, kind, subject, value, len(items)), persona_id=pid, kind=kind,
                        time=session_time(session, rng.randint(0, 30)), subject=subject, value=value, **extra)
        items.append(item)
        return item

    last = len(sessions) - 1
    early = max(1, len(sessions) // 3)
    for pref in persona.profile.preferences[: p.preferences]:
        add("preference", "hobby", pref, rng.randint(0, early - 1) if early > 0 else 0)
    for person in _unique(draft.people, key=lambda x: normalize(x.name))[: p.people]:
        add("relationship", person.name.strip(), person.relation.strip(), rng.randint(0, last))
    for routine in _unique(draft.routines)[: p.routines]:
        add("routine", "routine", routine.strip(), rng.randint(0, last))
    events = [add("event", "event", e.strip(), rng.randint(0, last)) for e in _unique(draft.events)[: p.events]]
    for goal in _unique(draft.goals)[: p.goals]:
        first = rng.randint(0, max(0, last - 1))
        g = add("goal", goal.strip(), "started", first)
        if first < last and rng.random() < 0.5:
            add("goal_update", g.subject, rng.choice(["finished", "gave up"]), rng.randint(first + 1, last),
                previous_value="started", cause_item_id=g.item_id)
    # planned shifts: each drawn with its declared probability, caused by a dated event
    old_prefs = [i for i in items if i.kind == "preference"]
    for interest in _unique(draft.new_interests)[:1]:
        if old_prefs and last >= 1 and rng.random() < p.preference_shift_prob:
            at = rng.randint(1, last)
            cause = add("event", "event", f"tried {interest.strip()} for the first time", at - 1)
            add("preference_shift", "hobby", interest.strip(), at, previous_value=rng.choice(old_prefs).value,
                cause_item_id=cause.item_id)
    if events and rng.random() < p.personality_drift_prob:
        cause = rng.choice(events)
        trait = rng.choice(BIG_FIVE_TRAITS)
        items.append(PlanItem(item_id=stable_id("i_", pid, "drift", trait), persona_id=pid, kind="personality_drift",
                              time=cause.time, subject=trait, value=trait, trait=trait,
                              delta=rng.choice([-1.0, -0.5, 0.5, 1.0]), cause_item_id=cause.item_id))
    items.sort(key=lambda i: (i.time, i.item_id))
    return TimelinePlan(persona_id=pid, span_days=span_days(cfg, persona), sessions=sessions, items=items)


def _unique(values: list, key=lambda v: normalize(v)) -> list:
    seen, out = set(), []
    for v in values:
        k = key(v)
        if k and k not in seen:
            seen.add(k)
            out.append(v)
    return out


def build_plans(cfg: PipelineConfig, personas: list[Persona],
                results: list[TeacherResult]) -> tuple[list[TimelinePlan], list[QuarantineRow]]:
    plans, quarantined = [], []
    for persona, res in zip(personas, results):
        if res.ok:
            plans.append(build_plan(cfg, persona, res.value))  # type: ignore[arg-type]
        else:
            quarantined.append(QuarantineRow(table_name="timeline_plans", row_key=persona.persona_id,
                                             rule="teacher_failure", value=res.failure or ""))
    return plans, quarantined


def realizable(item: PlanItem) -> bool:
    """Items a user turn states; drifts show in the user's tone, not as a sentence."""
    return item.kind != "personality_drift"


def fact_sentence(item: PlanItem) -> tuple[str, str]:
    """(what the user tells, the exact phrase a realizing turn must contain) for a plan item."""
    match item.kind:
        case "preference":
            return f"they enjoy {item.value}", item.value
        case "preference_shift":
            return f"they are now into {item.value} more than {item.previous_value}", item.value
        case "relationship":
            return f"{item.subject} is their {item.value}", item.subject
        case "routine":
            return f"they have a routine: {item.value}", item.value
        case "event":
            return f"they {item.value}", item.value
        case "goal":
            return f"they have a goal: {item.subject}", item.subject
        case "goal_update":
            return f"they {item.value} their goal to {item.subject}", item.subject
    raise ValueError(f"plan item kind {item.kind} is not realizable")
