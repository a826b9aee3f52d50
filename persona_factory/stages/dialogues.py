"""M3 dialogues: sessions of {time, user, assistant} turns realizing the plan in order.

Every turn slot is planned first (time, plan items to state, image to share); the teacher only writes the
words. A slot whose text fails its check is regenerated a bounded number of times, then dropped with a
quarantine row, so no turn claims a fact it does not state. Prompts never grow with the history: they carry
the persona, the slot's fact or image, and the previous slot's plan only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Protocol

from pydantic import BaseModel, ConfigDict, StringConstraints

from ..config import PipelineConfig
from ..schema import Dialogue, ImageRecord, Persona, PlanItem, QuarantineRow, Session, TimelinePlan, Turn, fmt_time
from ..teacher.types import TeacherRequest, TeacherResult, TeacherStats
from .common import chat, contains_phrase, parse_time, personality_text, rng_for, sampling
from .plans import fact_sentence, realizable

IMG = "<img>"
SMALL_TALK = ["the weather", "weekend plans", "a recipe idea", "a book recommendation", "a work deadline",
              "a short trip", "sleep habits", "a gift idea", "a movie night", "a shopping list"]


class TurnDraft(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: Annotated[str, StringConstraints(min_length=3, max_length=280)]
    assistant: Annotated[str, StringConstraints(min_length=3, max_length=360)]


class TeacherLike(Protocol):
    def generate(self, requests: list[TeacherRequest], stats: TeacherStats | None = None) -> list[TeacherResult]: ...


@dataclass
class TurnSlot:
    persona_id: str
    session_index: int
    slot_index: int  # position in the planned history, before failed slots are dropped
    time: str
    items: list[PlanItem] = field(default_factory=list)
    image: ImageRecord | None = None
    topic: str | None = None

    @property
    def key(self) -> str:
        return f"{self.persona_id}:{self.slot_index}"

    def phrase(self) -> str | None:
        if self.items:
            return fact_sentence(self.items[0])[1]
        if self.image is not None:
            return self.image.labels[0]
        return None

    def describe(self) -> str:
        if self.items:
            return fact_sentence(self.items[0])[0]
        if self.image is not None:
            return f"a photo of {self.image.caption}"
        return self.topic or "small talk"


def image_split(image_id: str) -> str:
    """Training and benchmark histories draw from disjoint halves of the pool, so no image leaks across."""
    return "train" if int(image_id[:8], 16) % 2 == 0 else "bench"


def plan_slots(cfg: PipelineConfig, persona: Persona, plan: TimelinePlan, images: list[ImageRecord]) -> list[TurnSlot]:
    """Place each realizable item in the first session at or after its date, images on small-talk turns."""
    rng = rng_for(cfg.seed, "slots", persona.persona_id)
    queue = [i for i in plan.items if realizable(i)]
    slots: list[TurnSlot] = []
    for session in plan.sessions:
        start = parse_time(session.start)
        t = start
        session_slots = []
        for k in range(session.n_turns):
            if k:
                t += timedelta(minutes=rng.randint(1, 6))
            session_slots.append(TurnSlot(persona.persona_id, session.session_index, len(slots) + k, fmt_time(t)))
        due = [i for i in queue if parse_time(i.time) <= start]
        positions = sorted(rng.sample(range(len(session_slots)), k=min(len(due), len(session_slots))))
        for pos, item in zip(positions, due):
            session_slots[pos].items.append(item)
            queue.remove(item)
        slots.extend(session_slots)
    images = [i for i in images if image_split(i.image_id) == ("train" if persona.split == "train" else "bench")]
    free = [s for s in slots if not s.items]
    n_images = min(len(free), round(cfg.dialogue.image_turn_share * len(slots)))
    for slot in rng.sample(free, k=n_images) if images else []:
        slot.image = rng.choice(images)
    for slot in slots:
        if not slot.items and slot.image is None:
            slot.topic = rng.choice(persona.profile.preferences + SMALL_TALK)
    return slots


def turn_request(cfg: PipelineConfig, persona: Persona, slot: TurnSlot, previous: TurnSlot | None,
                 attempt: int) -> TeacherRequest:
    fact, phrase = fact_sentence(slot.items[0]) if slot.items else (None, slot.phrase())
    show_image = slot.image is not None and cfg.teacher.supports_images
    messages = chat(
        "dialogue_turn", image_png=open(slot.image.path, "rb").read() if show_image else None,
        name=persona.profile.name, age=persona.profile.age, role=persona.role_description,
        personality=personality_text(persona.big_five), time=slot.time,
        previous=previous.describe() if previous and previous.session_index == slot.session_index else None,
        image_caption=slot.image.caption if slot.image else None, fact=fact, phrase=phrase, topic=slot.topic,
    )
    return TeacherRequest(messages, sampling(cfg, "turn", slot.key, attempt), TurnDraft, tag=f"turn:{slot.key}")


def check_turn(slot: TurnSlot, draft: TurnDraft) -> str | None:
    """Why the drafted text cannot stand for this slot, or None."""
    if IMG in draft.user or IMG in draft.assistant:
        return "placeholder_in_text"
    phrase = slot.phrase()
    if phrase and not contains_phrase(draft.user, phrase):
        return "missing_phrase" if slot.items else "image_text_mismatch"
    return None


def generate_dialogues(cfg: PipelineConfig, teacher: TeacherLike, personas: list[Persona], plans: list[TimelinePlan],
                       images: list[ImageRecord], stats: TeacherStats) -> tuple[list[Dialogue], list[QuarantineRow]]:
    by_id = {p.persona_id: p for p in personas}
    slots = {plan.persona_id: plan_slots(cfg, by_id[plan.persona_id], plan, images) for plan in plans}
    flat = [s for ss in slots.values() for s in ss]
    previous = {s.key: (ss[i - 1] if i else None) for ss in slots.values() for i, s in enumerate(ss)}
    drafts: dict[str, TurnDraft] = {}
    last_reason: dict[str, str] = {}
    pending = flat
    for attempt in range(cfg.dialogue.realization_retries + 1):
        if not pending:
            break
        requests = [turn_request(cfg, by_id[s.persona_id], s, previous[s.key], attempt) for s in pending]
        still = []
        for slot, res in zip(pending, teacher.generate(requests, stats)):
            reason = res.failure if not res.ok else check_turn(slot, res.value)  # type: ignore[arg-type]
            if reason is None:
                drafts[slot.key] = res.value  # type: ignore[assignment]
            else:
                last_reason[slot.key] = reason
                still.append(slot)
        pending = still
    quarantined = [QuarantineRow(table_name="dialogue_turns", row_key=s.key, rule=last_reason[s.key].split(":")[0],
                                 value=f"{s.describe()} | {last_reason[s.key]}") for s in pending]
    dialogues = [assemble_dialogue(by_id[pid], ss, drafts) for pid, ss in slots.items()]
    return dialogues, quarantined


def assemble_dialogue(persona: Persona, slots: list[TurnSlot], drafts: dict[str, TurnDraft]) -> Dialogue:
    sessions: dict[int, list[Turn]] = {}
    index = 0
    for slot in slots:
        draft = drafts.get(slot.key)
        if draft is None:
            continue
        user = draft.user.strip()
        turn = Turn(persona_id=persona.persona_id, session_index=slot.session_index, turn_index=index, time=slot.time,
                    user=f"{IMG}{user}" if slot.image else user, assistant=draft.assistant.strip(),
                    image_id=slot.image.image_id if slot.image else None, realizes=[i.item_id for i in slot.items])
        sessions.setdefault(slot.session_index, []).append(turn)
        index += 1
    ordered = [Session(persona_id=persona.persona_id, session_index=i, turns=turns)
               for i, (_, turns) in enumerate(sorted(sessions.items()))]
    for session in ordered:  # renumber after dropped slots so session indices stay contiguous
        for turn in session.turns:
            turn.session_index = session.session_index
    return Dialogue(persona_id=persona.persona_id, split=persona.split, sessions=ordered)
