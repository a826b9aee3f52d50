"""M4 memory targets and the replay into the per-user memory database (`user_data.json`).

Decisions come from the plan: a turn that realizes a plan fact must be remembered, small talk must not.
The teacher writes the wording (reason, content, keywords, topic summaries); wording that drops the fact's
phrase falls back to a sentence built from the plan, and the count of fallbacks is reported.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints

from ..config import PipelineConfig
from ..schema import (
    Dialogue, EpisodicTopic, ImageRecord, Persona, PersonalityStep, PlanItem, SemanticMemoryTarget,
    SessionMemoryTarget, TimelinePlan, Turn, fmt_time,
)
from ..teacher.types import TeacherRequest, TeacherResult
from .common import chat, contains_phrase, parse_time, sampling
from .plans import realization

Sentence = Annotated[str, StringConstraints(min_length=3, max_length=200)]
Keywords = Annotated[str, StringConstraints(min_length=2, max_length=80)]


class SemanticDraft(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Sentence
    content: Sentence
    keywords: Keywords


class TopicDraft(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic_summary: Sentence
    keywords: Keywords


def remembered_items(turn: Turn, plan_items: dict[str, PlanItem]) -> list[PlanItem]:
    return [plan_items[i] for i in turn.realizes if i in plan_items]


def semantic_requests(cfg: PipelineConfig, dialogue: Dialogue, plan: TimelinePlan) -> list[TeacherRequest]:
    items = {i.item_id: i for i in plan.items}
    requests = []
    for turn in dialogue.turns:
        for item in remembered_items(turn, items)[:1]:
            told = realization(item)
            fact, phrase = told.statement, told.phrases[0]
            requests.append(TeacherRequest(
                chat("semantic_memory", user=turn.user, fact=fact, phrase=phrase),
                sampling(cfg, "semantic", dialogue.persona_id, turn.turn_index), SemanticDraft,
                tag=f"semantic:{dialogue.persona_id}:{turn.turn_index}"))
    return requests


def semantic_targets(dialogue: Dialogue, plan: TimelinePlan, images: dict[str, ImageRecord],
                     results: list[TeacherResult]) -> tuple[list[SemanticMemoryTarget], int]:
    """One decision per turn (index-aligned with the interactions); returns (targets, template fallbacks)."""
    items = {i.item_id: i for i in plan.items}
    answers = iter(results)
    targets, fallbacks = [], 0
    for turn in dialogue.turns:
        remembered = remembered_items(turn, items)[:1]
        if not remembered:
            targets.append(SemanticMemoryTarget(
                persona_id=dialogue.persona_id, turn_index=turn.turn_index,
                reason="Small talk: nothing lasting about the user to store.", decision=False, content="",
                keywords=""))
            continue
        item = remembered[0]
        told = realization(item)
        fact, phrase = told.statement, told.phrases[0]
        res = next(answers)
        draft: SemanticDraft | None = res.value if res.ok else None  # type: ignore[assignment]
        if draft is None or not contains_phrase(draft.content, phrase):
            fallbacks += 1
            draft = SemanticDraft(reason=f"The user shared a lasting {item.kind.replace('_', ' ')}.",
                                  content=fact, keywords=phrase)
        content = draft.content.strip()
        if turn.image_id:  # visual concepts are named as in PersonaVLM
            content += f" (Image Object: {images[turn.image_id].labels[0]})"
        targets.append(SemanticMemoryTarget(persona_id=dialogue.persona_id, turn_index=turn.turn_index,
                                            reason=draft.reason.strip(), decision=True, content=content,
                                            keywords=draft.keywords.strip()))
    return targets, fallbacks


def topic_requests(cfg: PipelineConfig, persona: Persona, dialogue: Dialogue) -> list[TeacherRequest]:
    return [TeacherRequest(chat("episodic_topic", name=persona.profile.name, turns=s.turns),
                           sampling(cfg, "topic", dialogue.persona_id, s.session_index), TopicDraft,
                           tag=f"topic:{dialogue.persona_id}:{s.session_index}")
            for s in dialogue.sessions]


def session_targets(cfg: PipelineConfig, persona: Persona, dialogue: Dialogue, plan: TimelinePlan,
                    results: list[TeacherResult]) -> tuple[list[SessionMemoryTarget], int]:
    """Episodic topic (covering every turn index), procedural memory and core profile after each session."""
    items = {i.item_id: i for i in plan.items}
    told: list[PlanItem] = []
    procedural: dict[str, str] = {}
    profile = persona.profile.to_spec()
    targets, fallbacks = [], 0
    for session, res in zip(dialogue.sessions, results):
        for turn in session.turns:
            told.extend(remembered_items(turn, items))
        if res.ok:
            topic = EpisodicTopic(topic_summary=res.value.topic_summary.strip(),  # type: ignore[union-attr]
                                  keywords=res.value.keywords.strip(),  # type: ignore[union-attr]
                                  source_dialog_indices=list(range(len(session.turns))))
        else:
            fallbacks += 1
            topic = EpisodicTopic(topic_summary=f"{persona.profile.name} chatted with the assistant.",
                                  keywords="conversation", source_dialog_indices=list(range(len(session.turns))))
        procedural = update_procedural(procedural, told)
        profile = update_profile(profile, told, session.turns[-1].time, cfg.dialogue.session_gap_minutes)
        targets.append(SessionMemoryTarget(persona_id=persona.persona_id, session_index=session.session_index,
                                           episodic=[topic], procedural=dict(procedural), profile=dict(profile)))
    return targets, fallbacks


def update_procedural(current: dict[str, str], told: list[PlanItem]) -> dict[str, str]:
    """Routines and open goals known so far, newest five; finished or abandoned goals are removed."""
    entries: dict[str, str] = {}
    for item in told:
        if item.kind == "routine":
            entries[f"routine_{item.item_id[-6:]}"] = f"The user keeps a routine: {item.value}."
        elif item.kind == "goal":
            entries[f"goal_{item.item_id[-6:]}"] = f"The user is working towards: {item.subject}."
        elif item.kind == "goal_update" and item.cause_item_id:
            entries.pop(f"goal_{item.cause_item_id[-6:]}", None)
    return dict(list(entries.items())[-5:])


def update_profile(profile: dict[str, Any], told: list[PlanItem], last_time: str, gap_minutes: int) -> dict[str, Any]:
    prefs = list(profile["preferences"])
    for item in told:
        if item.kind == "preference_shift":
            prefs = [p for p in prefs if p != item.previous_value]
        if item.kind in ("preference", "preference_shift") and item.value not in prefs:
            prefs.append(item.value)
    updated = dict(profile)
    updated["preferences"] = prefs[-7:]
    updated["update time"] = fmt_time(parse_time(last_time) + timedelta(minutes=gap_minutes))
    return updated


def replay_user_data(persona: Persona, dialogue: Dialogue, semantic: list[SemanticMemoryTarget],
                     sessions: list[SessionMemoryTarget], personality: list[PersonalityStep]) -> dict[str, Any]:
    """The memory database an agent would have built turn by turn (spec §1.3 `user_data.json`)."""
    sem = {s.turn_index: s for s in semantic}
    pers = {p.turn_index: p for p in personality}
    imgs: list[str] = []
    out_sessions = []
    profile = persona.profile.to_spec()  # the core memory valid during a session is the one from before it
    for session, target in zip(dialogue.sessions, sessions):
        interactions, semantic_memory, big_five = [], [], []
        for turn in session.turns:
            images = []
            if turn.image_id:
                imgs.append(turn.image_id)
                images.append(turn.image_id)
            interactions.append([{"time": turn.time, "query": turn.user.replace("<img>", "<img_fill>\n")},
                                 {"response": turn.assistant}, [], images])
            s = sem[turn.turn_index]
            semantic_memory.append({"reason": s.reason, "decision": s.decision, "content": s.content,
                                    "keywords": s.keywords})
            if turn.turn_index in pers:
                p = pers[turn.turn_index]
                big_five.append([{t: {"score": v} for t, v in p.inferred.items()}, p.ema])
        out_sessions.append({
            "profile": profile, "ProceduralMemory": target.procedural, "interactions": interactions,
            "semantic_memory": semantic_memory,
            "EpisodicMemory": [e.model_dump() for e in target.episodic], "big_five_personality": big_five,
        })
        profile = target.profile
    last = personality[-1].ema if personality else persona.big_five.model_dump()
    return {"init_profile": persona.profile.to_spec(), "imgs": imgs, "big_five_personality": last,
            "current_interactions": len(dialogue.turns), "sessions": out_sessions}
