"""M3 dialogues: sessions of {time, user, assistant} turns realizing the plan in order.

Every turn slot is planned first (time, the plan item it tells, the photo it shares); the teacher only writes the
words. Personas never wait for each other: every persona goes through its sessions on its own, all of them in
flight at the teacher at once, and a history's requests go ahead of other queued work, the longest remaining
history first (it is the run's critical path). A session prompt carries the persona, what the user has told so far
(bounded), the last few turns of text and this session's slots, never the whole history, so its size does not grow
with the history and its persona prefix stays stable for vLLM's prefix cache. "So far" means up to the session
`dialogue.sessions_in_flight` before it: with 1 every session waits for the one before, with n a history has n
sessions in flight at once and its chain of requests is about n times shorter.

Each drafted turn is checked: its required phrases are present, it denies no fact that is true at its date, and it
does not mention a planned new interest before the plan introduces it. Turns failing a check are rewritten alone
a bounded number of times, then dropped with a quarantine row; a plan item no kept turn states is quarantined too.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from typing import Annotated, Awaitable, Callable, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, StringConstraints, create_model

from ..config import PipelineConfig
from ..schema import (
    Dialogue, ImageRecord, Persona, PlanItem, QuarantineRow, Session, TimelinePlan, Turn, fmt_time,
)
from ..teacher.types import TeacherRequest, TeacherResult, TeacherStats, is_answer_failure
from .common import (
    PHRASE_MODEL_CONFIG, chat, contains_phrase, negates, parse_time, personality_text, phrase_pattern, rng_for, sampling,
)
from .plans import MINUTES_PER_TURN, Realization, realizable, realization, told_in
from .timeline import plan_state

T = TypeVar("T")
IMG = "<img>"
KNOWN_FACTS = 8  # statements of what the user told before that a session prompt carries
SMALL_TALK = ["the weather", "weekend plans", "a recipe idea", "a book recommendation", "a work deadline",
              "a short trip", "sleep habits", "a gift idea", "a movie night", "a shopping list"]


class TeacherLike(Protocol):
    def generate(self, requests: list[TeacherRequest], stats: TeacherStats | None = None) -> list[TeacherResult]: ...

    async def agenerate(self, requests: list[TeacherRequest], stats: TeacherStats | None = None,
                        priority: int = 0) -> list[TeacherResult]: ...

    def run(self, main: Awaitable[T]) -> T: ...


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    consistent: bool


@dataclass
class TurnSlot:
    persona_id: str
    session_index: int
    slot_index: int  # position in the planned history, before failed slots are dropped
    time: str
    item: PlanItem | None = None
    image: ImageRecord | None = None  # the photo a photo_share item shares
    topic: str | None = None

    @property
    def key(self) -> str:
        return f"{self.persona_id}:{self.slot_index}"

    @property
    def told(self) -> Realization | None:
        return realization(self.item) if self.item is not None else None

    def instruction(self) -> str:
        if self.told is None:
            return f"makes small talk or asks for everyday help about {self.topic}"
        if self.image is not None:
            return f"{self.told.instruction} (the photo shows {self.image.caption})"
        return self.told.instruction

    @property
    def phrases(self) -> tuple[str, ...]:
        return self.told.phrases if self.told else ()


@dataclass
class PersonaState:
    """One persona's progress through its sessions."""

    persona: Persona
    plan: TimelinePlan
    sessions: list[list[TurnSlot]]
    kept: dict[str, tuple[str, str]] = field(default_factory=dict)  # slot key -> (user, assistant)

    def written(self, sessions: int) -> list[TurnSlot]:
        """The kept turns of the first `sessions` sessions, in order."""
        return [s for ss in self.sessions[:sessions] for s in ss if s.key in self.kept]

    def context(self, cfg: PipelineConfig, k: int) -> tuple[list[str], list[tuple[str, str, str]]]:
        """What session k's prompts carry of the history: the statements told so far (the last KNOWN_FACTS, in plan
        order) and the last `dialogue.recent_window` turns (time, user, assistant), both as of the sessions final
        before it may start (all before it when `dialogue.sessions_in_flight` is 1), so they never depend on
        answers' timing."""
        written = self.written(max(0, k - cfg.dialogue.sessions_in_flight + 1))
        told = {s.item.item_id for s in written if s.item}
        known = [realization(i).statement for i in self.plan.items if i.item_id in told][-KNOWN_FACTS:]
        window = cfg.dialogue.recent_window
        recent = [(s.time, *self.kept[s.key]) for s in written][-window:] if window else []
        return known, recent


def plan_slots(cfg: PipelineConfig, persona: Persona, plan: TimelinePlan,
               images: dict[str, ImageRecord]) -> tuple[list[list[TurnSlot]], list[PlanItem]]:
    """Turn slots per session with the items told in each, at random positions; returns (slots, unplaced items)."""
    rng = rng_for(cfg.seed, "slots", persona.persona_id)
    due: dict[int, list[PlanItem]] = {}
    for item in plan.items:
        if realizable(item):
            due.setdefault(told_in(plan.sessions, item), []).append(item)
    sessions: list[list[TurnSlot]] = []
    carry: list[PlanItem] = []
    count = 0
    for planned in plan.sessions:
        start = parse_time(planned.start)
        times = [start]
        for _ in range(planned.n_turns - 1):
            times.append(times[-1] + timedelta(minutes=rng.randint(1, MINUTES_PER_TURN)))
        slots = [TurnSlot(persona.persona_id, planned.session_index, count + k, fmt_time(t)) for k, t in enumerate(times)]
        count += len(slots)
        queue = carry + due.get(planned.session_index, [])
        positions = sorted(rng.sample(range(len(slots)), k=min(len(queue), len(slots))))
        for pos, item in zip(positions, queue):
            slots[pos].item = item
            if item.image_id is not None:
                slots[pos].image = images.get(item.image_id)
        carry = queue[len(positions):]  # more items than turns: they wait for the next session
        for slot in slots:
            if slot.item is None:
                slot.topic = rng.choice(persona.profile.preferences + SMALL_TALK)
        sessions.append(slots)
    return sessions, carry


# ---------------------------------------------------------------------------------------------- output schemas


def turn_model(cfg: PipelineConfig, phrases: tuple[str, ...]) -> type[BaseModel]:
    d = cfg.dialogue
    return _turn_model(phrases, d.constrain_phrases, d.max_user_chars, d.max_assistant_chars)


@lru_cache(maxsize=4096)
def _turn_model(phrases: tuple[str, ...], constrain: bool, user_max: int, assistant_max: int) -> type[BaseModel]:
    pattern = phrase_pattern(phrases, user_max) if constrain else None
    # a pattern carries its own length bounds (the grammar backend refuses a pattern with minLength/maxLength)
    user = Annotated[str, StringConstraints(pattern=pattern) if pattern else StringConstraints(min_length=3,
                                                                                             max_length=user_max)]
    assistant = Annotated[str, StringConstraints(min_length=3, max_length=assistant_max)]
    name = "Turn_" + (re.sub(r"\W+", "_", "_".join(phrases))[:40] if constrain and phrases else "free")
    return create_model(name, __config__=PHRASE_MODEL_CONFIG, user=(user, ...), assistant=(assistant, ...))


def session_model(cfg: PipelineConfig, slots: list[TurnSlot]) -> type[BaseModel]:
    turns = tuple[tuple(turn_model(cfg, s.phrases) for s in slots)]  # type: ignore[misc]
    return create_model("SessionDraft", __config__=ConfigDict(extra="forbid"), turns=(turns, ...))


# ---------------------------------------------------------------------------------------------- requests


def _header(st: PersonaState, time: str) -> dict[str, object]:
    """The persona part of every prompt: identical across a persona's sessions except the drifted traits."""
    p = st.persona
    return {"name": p.profile.name, "age": p.profile.age, "role": p.role_description,
            "personality": personality_text(plan_state(p, st.plan, time).personality)}


def _photos(cfg: PipelineConfig, slots: list[TurnSlot]) -> list[bytes]:
    """The photos a vision-language teacher sees, up to the engine's per-prompt limit (every photo's caption is
    in its round's instruction, so one past the limit is still described)."""
    if not cfg.teacher.supports_images:
        return []
    shown = [s for s in slots if s.image is not None][:cfg.teacher.max_images_per_prompt]
    return [open(s.image.path, "rb").read() for s in shown]


def session_request(cfg: PipelineConfig, st: PersonaState, k: int) -> TeacherRequest:
    slots = st.sessions[k]
    start = parse_time(slots[0].time)
    known, recent = st.context(cfg, k)
    messages = chat("dialogue_session", images=_photos(cfg, slots), **_header(st, slots[0].time), known=known,
                    recent=recent, start=f"{fmt_time(start)} ({start.strftime('%A')})",
                    rounds=[{"instruction": s.instruction(), "phrases": s.phrases} for s in slots])
    model = session_model(cfg, slots)
    # a failed session is not asked again whole: its turns are rewritten one by one, which is cheaper
    return TeacherRequest(messages, sampling(cfg, "session", st.persona.persona_id, k, schema=model), model,
                          tag=f"session:{st.persona.persona_id}:{k}", retry_answers=False)


def turn_request(cfg: PipelineConfig, st: PersonaState, slot: TurnSlot, attempt: int,
                 problem: str | None = None) -> TeacherRequest:
    """One turn written alone: a first draft (draft unit "turn") or the rewrite of a rejected one (`problem`).
    It carries the last kept turns before it (at most `dialogue.recent_window`) and what the earlier rounds of its
    session are about, so the prompt stays bounded whatever the history's length."""
    session = st.sessions[slot.session_index]
    earlier = [s for s in session if s.slot_index < slot.slot_index]
    kept = [(s.time, *st.kept[s.key]) for s in earlier if s.key in st.kept]
    known, recent = st.context(cfg, slot.session_index)
    previous = (recent + kept)[-cfg.dialogue.recent_window:] if cfg.dialogue.recent_window else []
    messages = chat("dialogue_turn", images=_photos(cfg, [slot]), **_header(st, slot.time), known=known,
                    previous=previous, topics=[s.instruction() for s in earlier if s.key not in st.kept],
                    time=slot.time, instruction=slot.instruction(), phrases=slot.phrases, problem=problem)
    kind = "turn" if problem is None else "repair"
    model = turn_model(cfg, slot.phrases)
    return TeacherRequest(messages, sampling(cfg, kind, slot.key, attempt, schema=model), model, tag=f"{kind}:{slot.key}")


def judge_request(cfg: PipelineConfig, slot: TurnSlot, user: str, fact: PlanItem) -> TeacherRequest:
    messages = chat("realization_judge", statement=realization(fact).statement, user=user)
    return TeacherRequest(messages, sampling(cfg, "judge", slot.key, fact.item_id, user, schema=Verdict), Verdict,
                          tag=f"judge:{slot.key}")


# ---------------------------------------------------------------------------------------------- checks


@dataclass
class Check:
    reason: str | None  # why the turn cannot stand; None = accepted or undecided
    ask_judge: list[PlanItem] = field(default_factory=list)  # facts a lexical check could not decide on


def standing_facts(persona: Persona, plan: TimelinePlan, time: str) -> list[PlanItem]:
    """Lasting facts no turn at `time` may deny: the plan's likes held then, its skills and routines, and its goals
    not given up by then."""
    now = plan_state(persona, plan, time)
    return [i for i in plan.items if i.kind in ("skill", "routine")
            or (i.kind == "goal" and now.goals.get(i.subject) != "gave up")
            or (i.kind in ("preference", "preference_shift") and now.likes_now(i.value))]


def check_turn(st: PersonaState, slot: TurnSlot, user: str, assistant: str) -> Check:
    if IMG in user or IMG in assistant:
        return Check("placeholder_in_text")
    for phrase in slot.phrases:
        if not contains_phrase(user, phrase):
            return Check("missing_phrase" if slot.image is None else "image_text_mismatch")
    for shift in (i for i in st.plan.items if i.kind == "preference_shift" and i.time > slot.time):
        if contains_phrase(user, shift.value) and (slot.item is None or slot.item.item_id != shift.cause_item_id):
            return Check("premature_shift")
    doubtful = [f for f in standing_facts(st.persona, st.plan, slot.time)
                if f != slot.item and negates(user, realization(f).phrases[0])]
    # a dislike is told with a negative word by design, and a shift may well deny the like it replaces
    denied = () if slot.item is None or slot.item.kind == "dislike" else \
        slot.phrases[:1] if slot.item.kind == "preference_shift" else slot.phrases
    if any(negates(user, p) for p in denied):
        doubtful.append(slot.item)
    return Check(None, doubtful)


# ---------------------------------------------------------------------------------------------- per persona

# a history's own requests go before other work queued at the teacher, the longest remaining history first: its
# sessions are a chain of requests that nothing can shorten, so it must never wait behind work that could wait
def chain_priority(st: PersonaState, k: int) -> int:
    return -sum(len(s) for s in st.sessions[k:])


SessionDone = Callable[[Persona, TimelinePlan, Dialogue, int, bool], None]


def generate_dialogues(cfg: PipelineConfig, teacher: TeacherLike, personas: list[Persona], plans: list[TimelinePlan],
                       images: list[ImageRecord], stats: TeacherStats,
                       failures: list[TeacherResult] | None = None) -> tuple[list[Dialogue], list[QuarantineRow]]:
    """Dialogues and quarantine rows; `failures`, if given, receives the teacher failure that cost each dropped
    turn (once per request), so dropped turns are counted with the other teacher failures."""
    return teacher.run(write_dialogues(cfg, teacher, personas, plans, images, stats, failures))


async def write_dialogues(cfg: PipelineConfig, teacher: TeacherLike, personas: list[Persona],
                          plans: list[TimelinePlan], images: list[ImageRecord], stats: TeacherStats,
                          failures: list[TeacherResult] | None = None,
                          session_done: SessionDone | None = None) -> tuple[list[Dialogue], list[QuarantineRow]]:
    """`generate_dialogues` inside the teacher's event loop. Each persona goes through its sessions on its own, so
    a persona never waits for another's session; the outcome is the same whatever order answers arrive in.
    `session_done(persona, plan, dialogue so far, sessions done, whole)` is called as each session is final."""
    by_id = {p.persona_id: p for p in personas}
    by_image = {i.image_id: i for i in images}
    states, quarantined = [], []
    for plan in sorted(plans, key=lambda p: p.persona_id):
        slots, unplaced = plan_slots(cfg, by_id[plan.persona_id], plan, by_image)
        states.append(PersonaState(by_id[plan.persona_id], plan, slots))
        quarantined += [QuarantineRow(table_name="timeline_plans", row_key=f"{i.persona_id}:{i.item_id}", rule="unplaced",
                                      value=f"{realization(i).statement} | more items than turns") for i in unplaced]
    outcomes = await asyncio.gather(*(_write_history(cfg, teacher, st, stats, session_done) for st in states))
    dialogues = []
    for st, (dropped, lost) in zip(states, outcomes):
        quarantined += dropped
        if failures is not None:
            failures += lost
        told = {s.item.item_id for ss in st.sessions for s in ss if s.item and s.key in st.kept}
        quarantined += [QuarantineRow(table_name="timeline_plans", row_key=f"{i.persona_id}:{i.item_id}",
                                      rule="unrealized", value=f"{realization(i).statement} | its turn was dropped")
                        for ss in st.sessions for s in ss if (i := s.item) is not None and i.item_id not in told]
        dialogues.append(assemble_dialogue(st))
    return dialogues, quarantined


async def _write_history(cfg: PipelineConfig, teacher: TeacherLike, st: PersonaState, stats: TeacherStats,
                         session_done: SessionDone | None) -> tuple[list[QuarantineRow], list[TeacherResult]]:
    """One persona's sessions, at most `dialogue.sessions_in_flight` at once, reported final in order; returns the
    dropped turns' quarantine rows and the teacher failures behind them, in session order."""
    final = [asyncio.Event() for _ in st.sessions]  # session k and every session before it are final

    async def session(k: int) -> tuple[list[QuarantineRow], list[TeacherResult]]:
        if k >= cfg.dialogue.sessions_in_flight:  # its prompts carry the history up to that session
            await final[k - cfg.dialogue.sessions_in_flight].wait()
        outcome = await _write_session(cfg, teacher, st, k, stats)
        if k:
            await final[k - 1].wait()
        final[k].set()
        if session_done is not None:
            session_done(st.persona, st.plan, assemble_dialogue(st, k + 1), k + 1, k + 1 == len(st.sessions))
        return outcome

    tasks = [asyncio.ensure_future(session(k)) for k in range(len(st.sessions))]
    try:
        outcomes = await asyncio.gather(*tasks)
    except BaseException:  # e.g. the teacher became unreachable: no session is left waiting for another
        for task in tasks:
            task.cancel()
        raise
    dropped = [row for rows, _ in outcomes for row in rows]
    lost: list[TeacherResult] = []
    for failure in (f for _, failures in outcomes for f in failures):
        if all(failure.key != seen.key for seen in lost):  # one request can cost several turns
            lost.append(failure)
    return dropped, lost


async def _write_session(cfg: PipelineConfig, teacher: TeacherLike, st: PersonaState, k: int,
                         stats: TeacherStats) -> tuple[list[QuarantineRow], list[TeacherResult]]:
    """Session k drafted, checked, its rejected turns rewritten alone a bounded number of times; returns its
    dropped turns' quarantine rows and the teacher failure behind each (if the teacher's)."""
    priority = chain_priority(st, k)
    rejected = await _accept(cfg, teacher, await _first_drafts(cfg, teacher, st, k, stats, priority), stats, priority)
    for attempt in range(1, cfg.dialogue.realization_retries + 1):
        if not rejected:
            break
        results = await teacher.agenerate([_next_request(cfg, d, attempt) for d in rejected], stats, priority)
        rejected = await _accept(cfg, teacher, [Draft.of(d.st, d.slot, res) for d, res in zip(rejected, results)],
                                 stats, priority)
    dropped = [QuarantineRow(table_name="dialogue_turns", row_key=d.slot.key, rule=d.failure.split(":")[0],
                             value=f"{d.slot.instruction()} | {d.failure}") for d in rejected]
    return dropped, [d.result for d in rejected if d.result is not None]


@dataclass
class Draft:
    """A turn's text as the teacher wrote it, or why there is none (or why it was rejected)."""

    st: PersonaState
    slot: TurnSlot
    user: str = ""
    assistant: str = ""
    failure: str | None = None
    result: TeacherResult | None = None  # the failed teacher request behind `failure`, if the teacher's

    @classmethod
    def of(cls, st: PersonaState, slot: TurnSlot, res: TeacherResult) -> "Draft":
        if not res.ok:
            return cls(st, slot, failure=res.failure or "teacher_failure", result=res)
        return cls(st, slot, res.value.user.strip(), res.value.assistant.strip())  # type: ignore[union-attr]

    def feedback(self) -> str | None:
        """What a rewrite is told: why the text was rejected (a failed check, an answer that broke its schema).
        A failure on the way (lost in transport, refused by the server, an unanswered judge) says nothing about
        the text and never reaches a prompt (it would carry endpoint URLs and server error bodies)."""
        return self.failure if self.result is None or is_answer_failure(self.failure or "") else None


def _next_request(cfg: PipelineConfig, d: Draft, attempt: int) -> TeacherRequest:
    """A rewrite told what was wrong; or, when nothing was said about the text, the turn's first draft (written
    alone) asked again as it was, so a failure on the way does not change the text a run ends with."""
    problem = d.feedback()
    return turn_request(cfg, d.st, d.slot, attempt if problem else 0, problem)


async def _first_drafts(cfg: PipelineConfig, teacher: TeacherLike, st: PersonaState, k: int, stats: TeacherStats,
                        priority: int) -> list[Draft]:
    """Session k's first drafts: one request for the session, or one per turn (sent together)."""
    if cfg.dialogue.draft_unit == "turn":
        slots = st.sessions[k]
        results = await teacher.agenerate([turn_request(cfg, st, slot, 0) for slot in slots], stats, priority)
        return [Draft.of(st, slot, res) for slot, res in zip(slots, results)]
    [res] = await teacher.agenerate([session_request(cfg, st, k)], stats, priority)
    if not res.ok:
        return [Draft.of(st, slot, res) for slot in st.sessions[k]]
    return [Draft(st, slot, t.user.strip(), t.assistant.strip())
            for slot, t in zip(st.sessions[k], res.value.turns)]  # type: ignore[union-attr]


async def _accept(cfg: PipelineConfig, teacher: TeacherLike, drafts: list[Draft], stats: TeacherStats,
                  priority: int) -> list[Draft]:
    """Keeps drafts that pass the checks (asking the judge where they cannot decide); returns the others, each
    with the reason it failed."""
    rejected, judged = [], []
    for d in drafts:
        if d.failure is None:
            check = check_turn(d.st, d.slot, d.user, d.assistant)
            d.failure = check.reason
            if d.failure is None and check.ask_judge and not cfg.dialogue.judge_ambiguous:
                d.failure = "contradiction"
        if d.failure is not None:
            rejected.append(d)
        elif check.ask_judge:
            judged.append((d, check.ask_judge))
        else:
            d.st.kept[d.slot.key] = (d.user, d.assistant)
    requests = [judge_request(cfg, d.slot, d.user, fact) for d, facts in judged for fact in facts]
    verdicts = iter(await teacher.agenerate(requests, stats, priority) if requests else [])
    for d, facts in judged:
        answers = [next(verdicts) for _ in facts]
        if all(a.ok and a.value.consistent for a in answers):  # type: ignore[union-attr]
            d.st.kept[d.slot.key] = (d.user, d.assistant)
        else:  # an unanswered judge cannot clear the turn either, but says so
            unanswered = next((a for a in answers if not a.ok), None)
            d.failure = "contradiction" if unanswered is None else f"judge_failure: {unanswered.failure}"
            d.result = unanswered
            rejected.append(d)
    return rejected


def assemble_dialogue(st: PersonaState, through: int | None = None) -> Dialogue:
    """Kept turns of the first `through` sessions (all by default) in order, renumbered; empty sessions are dropped
    so session indices stay contiguous."""
    sessions: list[Session] = []
    index = 0
    for slots in st.sessions[:through]:
        turns = []
        for slot in slots:
            if slot.key not in st.kept:
                continue
            user, assistant = st.kept[slot.key]
            turns.append(Turn(persona_id=st.persona.persona_id, session_index=len(sessions), turn_index=index,
                              time=slot.time, user=f"{IMG}{user}" if slot.image else user, assistant=assistant,
                              image_id=slot.image.image_id if slot.image else None,
                              realizes=[slot.item.item_id] if slot.item else []))
            index += 1
        if turns:
            sessions.append(Session(persona_id=st.persona.persona_id, session_index=len(sessions), turns=turns))
    return Dialogue(persona_id=st.persona.persona_id, split=st.persona.split, sessions=sessions)
