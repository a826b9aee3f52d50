"""The 13 Persona-MME tasks, each one registered object: its Persona-MME names (`question_type`, `type`), its
abbreviation, and the generator that turns one persona's realized plan into questions.

Every question is posed at the persona's single probe time (after the last turn). Its gold is a plan fact the
history realized, with the claim that makes it true (schema `Claim`); its pool holds every wrong option the history
allows, each with the claim that makes it false: told-but-wrong values from the same user's history (their other
routines, events, people, photos, first tries, replaced likes) marked `told`, so that spotting a mention is not
enough and the answer needs the time, state or relation the task is about, and never-told values of the same type
from the typed pools (`distractors`). The gates re-evaluate every claim against the whole history; the distractor
assignment picks three per item. Evidence lists every turn that states the gold's value, causes included.

Adding a task touches this module (a generator under `@task`) plus, where it needs wording, the vocabulary.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterator

from ..config import PipelineConfig
from ..schema import (
    Claim, Dialogue, Dislikes, EventOn, EventWith, GoalActive, GoalStatus, ImageDetail, ImageRecord, ImageShows,
    LikesNow, MostPresent, Option, Persona, PhotoFor, PhotoOn, PhotoPurposeOn, PlanItem, RelationOf, RoutineAt,
    ShiftCause, SkillTier, Suits, TimelinePlan, ToneFor, Turn, fmt_time,
)
from .benchmark import bench_vocabulary, probe_time, realized_turns, relative_phrase, shown, visual_answer_type
from .common import contains_phrase, normalize, parse_time, rng_for
from .distractors import Pools, own_values
from .memory import STOPWORDS
from .plans import first_try, realizable, realization, relation_tone, tried_interest, vocabulary
from .timeline import UNKNOWN_STATE, history_state


@dataclass
class Draft:
    """One question before its distractors are chosen."""

    task: str
    query: str
    answer_type: str
    gold: Option
    pool: list[Option]
    evidence: list[Turn]
    sources: list[str]  # plan item ids that settle the gold
    images: list[str] = field(default_factory=list)
    time_phrase: str | None = None
    once_key: str | None = None  # a question that may be asked of one persona only across the whole benchmark


@dataclass(frozen=True)
class Task:
    name: str  # Persona-MME question_type
    abbr: str
    aspect: str  # Persona-MME type
    generate: Callable[["PersonaQuestions"], Iterator[Draft]]


TASKS: dict[str, Task] = {}


def task(name: str, abbr: str, aspect: str) -> Callable:
    def register(generate: Callable[["PersonaQuestions"], Iterator[Draft]]) -> Callable:
        TASKS[name] = Task(name, abbr, aspect, generate)
        return generate
    return register


def in_order(turns: list[Turn]) -> list[Turn]:
    return sorted({t.turn_index: t for t in turns}.values(), key=lambda t: t.turn_index)


def content_words(text: str) -> set[str]:
    return {w for w in normalize(text).split() if w not in STOPWORDS}


class PersonaQuestions:
    """One persona's realized plan and history state at the probe, with the helpers every task generator shares."""

    def __init__(self, cfg: PipelineConfig, persona: Persona, dialogue: Dialogue, plan: TimelinePlan,
                 images: dict[str, ImageRecord], pools: Pools, tips: dict[str, dict[str, str]]):
        self.cfg, self.persona, self.dialogue, self.plan = cfg, persona, dialogue, plan
        self.images, self.pools, self.tips = images, pools, tips
        self.vocab = bench_vocabulary()
        self.rng = rng_for(cfg.seed, "benchmark", persona.persona_id)
        self.probe: datetime = probe_time(cfg, dialogue)
        self.state = history_state(persona, plan, dialogue, fmt_time(self.probe))
        self.told = realized_turns(dialogue)
        self.items = {i.item_id: i for i in plan.items}
        self.history = f" {normalize(' '.join(t.user for t in dialogue.turns))} "
        self.own = own_values(persona, plan, images)

    # ------------------------------------------------------------------ helpers

    def realized(self, *kinds: str) -> list[PlanItem]:
        return sorted((i for i in self.plan.items if i.kind in kinds and i.item_id in self.told),
                      key=lambda i: self.told[i.item_id].turn_index)

    def turn(self, item: PlanItem) -> Turn:
        return self.told[item.item_id]

    def day(self, item: PlanItem) -> str:
        return self.turn(item).time[:10]

    def when(self, item: PlanItem) -> str:
        return relative_phrase(self.probe, parse_time(self.turn(item).time))

    def never_told(self, answer_type: str) -> list[str]:
        return self.pools.never_told(answer_type, self.own, self.history)

    def options(self, values: list[str], claim: Callable[[str], Claim], told: bool,
                show: Callable[[str], str] = shown) -> list[Option]:
        return [Option(text=show(v), claim=claim(v), told=told) for v in values]

    def evidence_for(self, gold: Option, planned: list[Turn]) -> list[Turn]:
        """The planned evidence plus every earlier turn that states a fact naming the gold's value (the first try
        that led to a like, the events a person was at), so no turn that gives the answer away goes unlisted."""
        entity = gold.claim.entity
        extra = [] if entity is None else [
            self.turn(i) for i in self.plan.items
            if i.item_id in self.told and realizable(i) and contains_phrase(realization(i).statement, entity)]
        return in_order([*planned, *extra])

    def draft(self, task: str, query: str, answer_type: str, gold: Option, wrong: list[Option],
              evidence: list[Turn], sources: list[PlanItem], **extra) -> Iterator[Draft]:
        """A draft when at least three wrong options remain: each apart from the gold, one per text (a told one
        kept over a never-told one), none sharing a word with the query unless the gold does (an option echoing
        the question must not single itself out)."""
        echo = content_words(query)
        gold_echoes = bool(content_words(gold.text) & echo)
        pool: dict[str, Option] = {}
        for o in sorted(wrong, key=lambda o: not o.told):
            key = normalize(o.text)
            if not key or key in pool or normalize(gold.text) == key or o.claim == gold.claim:
                continue
            if (content_words(o.text) & echo) and not gold_echoes:
                continue
            pool[key] = o
        if len(pool) >= 3:
            yield Draft(task, query, answer_type, gold, list(pool.values()), self.evidence_for(gold, evidence),
                        [s.item_id for s in sources], **extra)


# ---------------------------------------------------------------------------------------------- Memory Recall

SIR, VDR = "Semantic Information Recall", "Visual Detail Recall"


@task(SIR, "SIR", "Memory Recall")
def semantic_recall(q: PersonaQuestions) -> Iterator[Draft]:
    """What I did on a day, who was with me, what I said I dislike that day, what I sent a photo of."""
    causes = {s.cause_item_id for s in q.plan.items if s.kind == "preference_shift"}
    events = q.realized("event")
    days = Counter(q.when(e) for e in events)
    people = sorted({p.subject for p in q.realized("relationship")} | {e.person for e in events if e.person})
    for e in (e for e in events if e.item_id not in causes):
        day, when = q.day(e), q.when(e)
        if days[when] == 1:  # "what I did on Monday" must name one event
            others = [o.value for o in events if q.when(o) != when]
            yield from q.draft(SIR, f"{shown(when)}, I told you about something I did. What was it?", "event",
                               Option(text=shown(e.value), claim=EventOn(day=day, event=e.value), told=True),
                               q.options(others, lambda v: EventOn(day=day, event=v), True)
                               + q.options(q.never_told("event"), lambda v: EventOn(day=day, event=v), False),
                               [q.turn(e)], [e], time_phrase=when)
        if e.person:
            yield from q.draft(SIR, f"Who was with me when I {e.value}?", "name",
                               Option(text=e.person, claim=EventWith(event=e.value, person=e.person), told=True),
                               q.options([n for n in people if n != e.person],
                                         lambda v: EventWith(event=e.value, person=v), True)
                               + q.options(q.never_told("name"), lambda v: EventWith(event=e.value, person=v), False),
                               [q.turn(e)], [e])
    dislikes = q.realized("dislike")
    for d in dislikes:
        day, when = q.day(d), q.when(d)
        told = [x.value for x in dislikes if q.when(x) != when]  # what I said I dislike on other days
        if told and sum(q.when(x) == when for x in dislikes) == 1:
            yield from q.draft(SIR, f"{shown(when)}, I told you about something I really dislike. What was it?",
                               "dislike",
                               Option(text=shown(d.value), claim=Dislikes(thing=d.value, day=day), told=True),
                               q.options(told, lambda v: Dislikes(thing=v, day=day), True)
                               + q.options(q.never_told("dislike"), lambda v: Dislikes(thing=v, day=day), False),
                               [q.turn(d)], [d], time_phrase=when)
    photos = q.realized("photo_share")
    for p in photos:
        when, day = q.when(p), q.day(p)
        if sum(q.when(x) == when for x in photos) > 1:
            continue  # "the photo I sent yesterday" must name one photo
        others = sorted({x.subject for x in photos if x.subject != p.subject and q.day(x) != day})
        yield from q.draft(SIR, f"What did I send you a photo of {when}?", "label",
                           Option(text=shown(p.subject), claim=PhotoOn(day=day, label=p.subject), told=True),
                           q.options(others, lambda v: PhotoOn(day=day, label=v), True)
                           + q.options(q.never_told("label"), lambda v: PhotoOn(day=day, label=v), False),
                           [q.turn(p)], [p], images=[p.image_id], time_phrase=when)


@task(VDR, "VDR", "Memory Recall")
def visual_detail(q: PersonaQuestions) -> Iterator[Draft]:
    """A detail of a photo I sent: distractors of the same answer type, first from my other photos."""
    photos = q.realized("photo_share")
    mine = [q.images[p.image_id] for p in photos if p.image_id in q.images]
    for p in photos:
        image = q.images.get(p.image_id or "")
        when = q.when(p)
        if image is None or sum(q.when(x) == when for x in photos) > 1:
            continue
        asked = f"In the photo of the {p.subject} I sent you {when}"
        for question, answer in sorted(image.details.items()):
            kind = visual_answer_type(answer)
            if kind is None:
                continue  # the form gate cannot type it, so it is not asked
            near = set(q.vocab["colour_neighbours"].get(answer, [])) if kind == "colour" else set()
            ok = lambda v: v != answer and v not in near  # noqa: E731
            seen_elsewhere = sorted({a for other in mine if other is not image for a in other.details.values()
                                     if visual_answer_type(a) == kind and ok(a)})
            claim = lambda v: ImageDetail(image_id=image.image_id, question=question, answer=v)  # noqa: E731
            rest = [v for v in q.vocab["visual_answers"][kind] if ok(v) and v not in seen_elsewhere]
            yield from q.draft(VDR, f"{asked}, {question[0].lower()}{question[1:]}", f"visual {kind}",
                               Option(text=shown(answer), claim=claim(answer), told=True),
                               q.options(seen_elsewhere, claim, True) + q.options(rest, claim, False),
                               [q.turn(p)], [p], images=[image.image_id], time_phrase=when,
                               once_key=f"{image.image_id}:{question}")
        if not image.details and len(image.labels) > 1:  # photos without details: what else the photo showed
            also = q.rng.choice(image.labels[1:])
            own_labels = {normalize(x) for x in image.labels}
            others = sorted({label for other in mine if other is not image for label in other.labels
                             if normalize(label) not in own_labels})
            rest = [v for v in q.pools["label"] if normalize(v) not in own_labels and v not in others]
            claim = lambda v: ImageShows(image_id=image.image_id, label=v)  # noqa: E731
            yield from q.draft(VDR, f"Besides the {image.labels[0]}, what else was in the photo I sent you {when}?",
                               "label", Option(text=shown(also), claim=claim(also), told=True),
                               q.options(others, claim, True) + q.options(rest, claim, False),
                               [q.turn(p)], [p], images=[image.image_id], time_phrase=when,
                               once_key=f"{image.image_id}:shows")


# ---------------------------------------------------------------------------------------------- Intent Inference

EII, IIR = "Explicit Intent Inference", "Implicit Intent Recognition"


@task(EII, "EII", "Intent Inference")
def explicit_intent(q: PersonaQuestions) -> Iterator[Draft]:
    """Why I sent a photo: the purposes of my other photos are the first distractors."""
    purposes = q.vocab["photo_purposes"]
    photos = q.realized("photo_share")
    for p in photos:
        when, day = q.when(p), q.day(p)
        if sum(x.subject == p.subject and q.when(x) == when for x in photos) != 1:
            continue
        claim = lambda v: PhotoPurposeOn(day=day, label=p.subject, purpose=v)  # noqa: E731
        label = lambda v: purposes[v]["option"]  # noqa: E731
        mine = sorted({x.value for x in photos if x.value != p.value})
        yield from q.draft(EII, f"Why did I send you that photo of the {p.subject} {when}?", "purpose",
                           Option(text=label(p.value), claim=claim(p.value), told=True),
                           q.options(mine, claim, True, label)
                           + q.options([v for v in purposes if v != p.value and v not in mine], claim, False, label),
                           [q.turn(p)], [p], images=[p.image_id], time_phrase=when)


@task(IIR, "IIR", "Intent Inference")
def implicit_intent(q: PersonaQuestions) -> Iterator[Draft]:
    """Which photo a situation calls for; which goal I would make time for."""
    purposes = q.vocab["photo_purposes"]
    photos = q.realized("photo_share")
    by_purpose = Counter(p.value for p in photos)
    photo = lambda v: f"The {v} photo"  # noqa: E731
    for p in photos:
        if by_purpose[p.value] != 1:
            continue
        others = sorted({x.subject for x in photos if x.value != p.value and x.subject != p.subject})
        claim = lambda v: PhotoFor(label=v, purpose=p.value)  # noqa: E731
        yield from q.draft(IIR, purposes[p.value]["situation"], "photo",
                           Option(text=photo(p.subject), claim=claim(p.subject), told=True),
                           q.options(others, claim, True, photo)
                           + q.options(q.never_told("label"), claim, False, photo),
                           [q.turn(p)], [p], images=[p.image_id])
    goals = [(goal, told) for goal, told in progress(q, "goal", "goal_update")]
    ended = [g.subject for g, _ in goals if not q.state.goal_open(g.subject)]
    for goal, told in goals:
        if q.state.goal_open(goal.subject):
            yield from q.draft(IIR, "I've cleared some time this weekend for one of my long-term goals. "
                                    "Which one am I most likely working on?", "goal",
                               Option(text=shown(goal.subject), claim=GoalActive(goal=goal.subject), told=True),
                               q.options(ended, lambda v: GoalActive(goal=v), True)
                               + q.options(q.never_told("goal"), lambda v: GoalActive(goal=v), False),
                               [q.turn(i) for i in told], told)


def progress(q: PersonaQuestions, kind: str, update_kind: str) -> Iterator[tuple[PlanItem, list[PlanItem]]]:
    """Goals or skills the history tells of, by their own turn or a later report: (item, the told items among it
    and its reports)."""
    for item in (i for i in q.plan.items if i.kind == kind):
        updates = [u for u in q.realized(update_kind) if u.cause_item_id == item.item_id]
        told = [item] * (item.item_id in q.told) + updates
        if told:
            yield item, told


# ---------------------------------------------------------------------------------------------- Preference Recognition

LPR, IEA, IPR = "Latest Preference Recognition", "Interest Evolution Analysis", "Implicit Preference Recommendation"


def unliked(q: PersonaQuestions) -> list[str]:
    """Told hobbies the user does not like now: the likes a shift replaced, and what they tried once and left."""
    tried = [t for e in q.realized("event") if (t := tried_interest(e)) is not None]
    return [v for v in [*q.state.replaced, *tried] if not q.state.likes_now(v)]


@task(LPR, "LPR", "Preference Recognition")
def latest_preference(q: PersonaQuestions) -> Iterator[Draft]:
    """The like a shift brought in, against the one it replaced and what I dislike."""
    for s in q.realized("preference_shift"):
        if q.state.likes_now(s.value):
            yield from q.draft(LPR, "Of these, which have I been most into lately?", "hobby",
                               Option(text=shown(s.value), claim=LikesNow(thing=s.value), told=True),
                               q.options(unliked(q), lambda v: LikesNow(thing=v), True)
                               + q.options(q.never_told("hobby"), lambda v: LikesNow(thing=v), False),
                               [q.turn(s)], [s])


@task(IEA, "IEA", "Preference Recognition")
def interest_evolution(q: PersonaQuestions) -> Iterator[Draft]:
    """What set a shift off: the first try told before it, against the other first tries I told you of (and
    first tries of things I never mentioned), so the answer needs which try the change followed."""
    tries = [e for e in q.realized("event") if tried_interest(e) is not None]
    for s in q.realized("preference_shift"):
        cause = q.items.get(s.cause_item_id or "")
        old = s.previous_value
        if cause is None or cause.item_id not in q.told or not old \
                or not any(x.item_id == s.item_id and x.cause == cause.value for x in q.state.shifts):
            continue
        claim = lambda v, old=old: ShiftCause(old=old, event=v)  # noqa: E731
        yield from q.draft(IEA, f"I used to be really into {old}, but something changed that. What set it off?",
                           "event", Option(text=shown(cause.value), claim=claim(cause.value), told=True),
                           q.options([e.value for e in tries if e.item_id != cause.item_id], claim, True)
                           + q.options([first_try(h) for h in q.never_told("hobby")], claim, False),
                           [q.turn(cause), q.turn(s)], [cause, s])


@task(IPR, "IPR", "Preference Recognition")
def implicit_preference(q: PersonaQuestions) -> Iterator[Draft]:
    """A suggestion I would take: one of my current likes, against what I no longer like or tried and left. A like
    the profile already lists is asked only against another like the profile lists and the history took back
    (else the profile alone would answer it)."""
    profile = {normalize(v) for v in q.persona.profile.preferences}
    for like in q.realized("preference", "preference_shift"):
        if not q.state.likes_now(like.value):
            continue
        told = unliked(q)
        if normalize(like.value) in profile:
            told = [v for v in told if normalize(v) in profile]
            if not told:
                continue
        yield from q.draft(IPR, "I've got a free afternoon. Which of these would you suggest I spend it on?",
                           "hobby", Option(text=shown(like.value), claim=LikesNow(thing=like.value), told=True),
                           q.options(told, lambda v: LikesNow(thing=v), True)
                           + q.options(q.never_told("hobby"), lambda v: LikesNow(thing=v), False),
                           [q.turn(like)], [like])


# ---------------------------------------------------------------------------------------------- Behavioral Awareness

BPR, LGT = "Behavioral Pattern Recognition", "Long-term Goal Tracking"


@task(BPR, "BPR", "Behavioral Awareness")
def behavioral_pattern(q: PersonaQuestions) -> Iterator[Draft]:
    """What I usually do at a routine's time: my other routines and my goals are the first distractors."""
    routines = q.realized("routine")
    goals = [g.subject for g in q.realized("goal")]
    for r in routines:
        if q.state.routines.get(r.subject) != r.value:
            continue
        claim = lambda v, w=r.subject: RoutineAt(when=w, action=v)  # noqa: E731
        mine = [x.value for x in routines if x.value != r.value] + goals
        yield from q.draft(BPR, f"What do I usually do {r.subject}?", "routine",
                           Option(text=shown(r.value), claim=claim(r.value), told=True),
                           q.options(mine, claim, True) + q.options(q.never_told("routine"), claim, False),
                           [q.turn(r)], [r])


@task(LGT, "LGT", "Behavioral Awareness")
def goal_tracking(q: PersonaQuestions) -> Iterator[Draft]:
    """A goal's last reported outcome, or that it was never reported: the four states are always the options."""
    states = q.vocab["goal_states"]
    for goal, told in progress(q, "goal", "goal_update"):
        state = q.state.goals.get(goal.subject, UNKNOWN_STATE)
        claim = lambda v, g=goal.subject: GoalStatus(goal=g, state=v)  # noqa: E731
        show = lambda v: states[v]  # noqa: E731
        yield from q.draft(LGT, f"Did I ever finish my goal to {goal.subject}?", "goal state",
                           Option(text=show(state), claim=claim(state), told=True),
                           q.options([s for s in states if s != state], claim, False, show),
                           [q.turn(i) for i in told], told)


# ---------------------------------------------------------------------------------------------- Relationships

RR, RDC = "Relationship Recognition", "Relationship Dynamics Comprehension"


@task(RR, "RR", "Relationship Understanding")
def relationship(q: PersonaQuestions) -> Iterator[Draft]:
    """Who is my <relation>; who I have spent the most time with. My other people are the first distractors."""
    people = q.realized("relationship")
    with_person = [e for e in q.realized("event") if e.person]
    names = sorted({p.subject for p in people} | {e.person for e in with_person if e.person})
    for p in people:
        claim = lambda v, r=p.value: RelationOf(person=v, relation=r)  # noqa: E731
        yield from q.draft(RR, f"Which of these people is my {p.value}?", "name",
                           Option(text=p.subject, claim=claim(p.subject), told=True),
                           q.options([n for n in names if n != p.subject], claim, True, str)
                           + q.options(q.never_told("name"), claim, False, str), [q.turn(p)], [p])
    top = q.state.appearances.most_common(2)
    if top and (len(top) == 1 or top[0][1] > top[1][1]):
        name = top[0][0]
        yield from q.draft(RR, "Going by what I've told you, who have I spent the most time with lately?", "name",
                           Option(text=name, claim=MostPresent(person=name), told=True),
                           q.options([n for n in names if n != name], lambda v: MostPresent(person=v), True, str)
                           + q.options(q.never_told("name"), lambda v: MostPresent(person=v), False, str),
                           [q.turn(e) for e in with_person if e.person == name], [e for e in with_person
                                                                                  if e.person == name])


@task(RDC, "RDC", "Relationship Understanding")
def relationship_dynamics(q: PersonaQuestions) -> Iterator[Draft]:
    """The tone a message to someone takes: the tones my other people call for are the first distractors."""
    people = q.realized("relationship")
    tones = sorted(set(vocabulary()["relations"].values()))
    for p in people:
        tone = relation_tone(p.value)
        mine = sorted({relation_tone(x.value) for x in people if relation_tone(x.value) != tone})
        claim = lambda v, n=p.subject: ToneFor(person=n, tone=v)  # noqa: E731
        yield from q.draft(RDC, f"I'm writing a message to {p.subject}. What tone should I go for?", "tone",
                           Option(text=shown(tone), claim=claim(tone), told=True),
                           q.options(mine, claim, True)
                           + q.options([t for t in tones if t != tone and t not in mine], claim, False),
                           [q.turn(p)], [p])


# ---------------------------------------------------------------------------------------------- Personalized Growth

TED, GNS = "Tiered Explanation Delivery", "Generalizing to New Scenarios"


@task(TED, "TED", "Personalized Growth Modeling")
def tiered_explanation(q: PersonaQuestions) -> Iterator[Draft]:
    """The tip that fits my level now: one tip per tier, the four always offered."""
    for skill, told in progress(q, "skill", "skill_update"):
        tips = q.tips[skill.subject]
        level = q.state.skills[skill.subject]
        claim = lambda v, s=skill.subject: SkillTier(skill=s, tier=v)  # noqa: E731
        show = lambda v, tips=tips: shown(tips[v])  # noqa: E731
        yield from q.draft(TED, f"I'd like one tip for {skill.subject} that fits where I am now. "
                                "Which suits me best?", "tip",
                           Option(text=show(level), claim=claim(level), told=True),
                           q.options([t for t in tips if t != level], claim, False, show),
                           [q.turn(i) for i in told], told)


@task(GNS, "GNS", "Personalized Growth Modeling")
def new_scenarios(q: PersonaQuestions) -> Iterator[Draft]:
    """A workshop that fits both what I like now and how I like to work: the 2x2 grid of a like and something I
    no longer like or dislike (else a never-told hobby), each in either pole of the style."""
    liked = [i for i in q.realized("preference", "preference_shift") if q.state.likes_now(i.value)]
    if not liked:
        return
    for style in q.realized("style"):
        poles = q.vocab["style_poles"][style.subject]
        other = next(p for p in poles if p != style.value)
        like = q.rng.choice(liked)
        grid = lambda thing, pole: f"{shown(thing)}, {poles[pole]}"  # noqa: E731
        told_things = unliked(q)
        things = [(t, True) for t in told_things] + [(t, False) for t in q.rng.sample(
            q.never_told("hobby"), k=len(q.never_told("hobby")))]
        fitting = [(t, told) for t, told in things if q.cfg.benchmark.max_option_length_ratio >= max(
            len(grid(a, b)) for a in (like.value, t) for b in poles) / min(
            len(grid(a, b)) for a in (like.value, t) for b in poles)]
        if not fitting:
            continue
        thing, thing_told = fitting[0]
        claim = lambda v_pole: Suits(thing=v_pole[0], dimension=style.subject, pole=v_pole[1])  # noqa: E731
        cells = [(thing, style.value, thing_told), (like.value, other, True), (thing, other, thing_told)]
        yield from q.draft(GNS, "I'd like to sign up for a weekend workshop. Which would suit me best?",
                           "activity and style",
                           Option(text=grid(like.value, style.value), claim=claim((like.value, style.value)),
                                  told=True),
                           [Option(text=grid(a, b), claim=claim((a, b)), told=told) for a, b, told in cells],
                           [q.turn(style), q.turn(like)], [style, like])


ASPECTS = {name: t.aspect for name, t in TASKS.items()}  # question_type -> type, as the release suite checks them
