"""Memory targets, the replay into the per-user memory database (`user_data.json`), and that database's
view at any moment (what an agent could retrieve then).

Decisions come from the plan: a turn that realizes a plan fact must be remembered, small talk must not. Sessions
are segmented into topics by what their turns tell (a person, interests, goals, skills, habits, events, photos,
small talk). Procedural memory and the core profile follow the facts told, in order. The teacher writes the wording
(reasons, memory sentences, keywords, topic summaries); wording that fails its checks (drops the fact's phrases,
runs over one sentence, keywords unrelated to the fact) falls back to text built from the plan, and is counted.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints, create_model

from prompts import TEMPLATE_DIR, TEMPLATES

from ..config import PipelineConfig
from ..schema import (
    Dialogue, EpisodicTopic, ImageRecord, Persona, PersonalityStep, PlanItem, QuarantineRow, SemanticMemoryTarget,
    Session, SessionMemoryTarget, TimelinePlan, Turn, fmt_time,
)
from ..teacher.types import TeacherRequest, TeacherResult
from .common import (
    PHRASE_MODEL_CONFIG, chat, contains_phrase, normalize, parse_time, phrase_pattern, sampling,
)
from .plans import realization

SENTENCE_MAX = 240  # a memory sentence or an answer
SUMMARY_MAX = 320  # a topic summary
KEYWORDS_MAX = 80
REASON_MAX = 200
Sentence = Annotated[str, StringConstraints(min_length=3, max_length=REASON_MAX)]
Keywords = Annotated[str, StringConstraints(min_length=2, max_length=KEYWORDS_MAX)]
PROCEDURAL_MAX = 5
PREFERENCES_MAX = 7  # the core-memory prompt keeps 5-7 condensed preferences, weighted by recency
RECENT_MATTERS_MAX = 3
SMALL_TALK = "small talk"
STOPWORDS = frozenset("the a an and or of to in on at for with about my me i you your is are was be it this that "
                      "what who how why when which do did does have has had they their them user".split())


class SmallTalkDraft(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Sentence


def phrase_text(phrases: tuple[str, ...], constrain: bool, max_chars: int) -> Any:
    """A text field the teacher fills, of about `max_chars` at most; with `constrain`, its JSON schema makes it
    contain every phrase (the pattern then carries the length bound: the grammar backend refuses both)."""
    pattern = phrase_pattern(phrases, max_chars) if constrain and phrases else None
    return Annotated[str, StringConstraints(pattern=pattern) if pattern else
                     StringConstraints(min_length=3, max_length=max_chars)]


@lru_cache(maxsize=1024)
def draft_model(kind: str, phrases: tuple[str, ...], constrain: bool) -> type[BaseModel]:
    """The teacher's wording of a semantic memory (`reason`, `content`) or an episodic topic (`topic_summary`),
    with keywords; the text field must contain the phrases."""
    fields = {"semantic": {"reason": (Sentence, ...), "content": (phrase_text(phrases, constrain, SENTENCE_MAX), ...)},
              "topic": {"topic_summary": (phrase_text(phrases, constrain, SUMMARY_MAX), ...)}}[kind]
    return create_model(f"{kind.title()}Draft", __config__=PHRASE_MODEL_CONFIG, **fields,
                        keywords=(Keywords, ...))


# ---------------------------------------------------------------------------------------------- wording checks


def content_words(text: str) -> set[str]:
    return {w for w in normalize(text).split() if w not in STOPWORDS}


def one_sentence(text: str) -> bool:
    return not re.search(r"[.!?]\s+\S", text.strip())


def keywords_fit(keywords: str, anchors: tuple[str, ...]) -> bool:
    """One to six short comma-separated keywords; with anchors, at least one shares a word with them (so a
    search for the fact finds its memory)."""
    parts = [k.strip() for k in keywords.split(",") if k.strip()]
    return (1 <= len(parts) <= 6 and all(len(k.split()) <= 4 for k in parts)
            and (not anchors or any(content_words(k) & content_words(" ".join(anchors)) for k in parts)))


def wording_problem(text: str, keywords: str, phrases: tuple[str, ...], anchors: tuple[str, ...],
                    single_sentence: bool) -> str | None:
    """Why a memory text cannot stand (None when it can): it must contain the phrases, speak of the user in the
    third person, be one sentence where asked, and carry keywords related to the anchors."""
    if any(not contains_phrase(text, p) for p in phrases):
        return "missing_phrase"
    if single_sentence and not one_sentence(text):
        return "several_sentences"
    if re.match(r"(?i)(i|my|i'm|i've)\b", text.strip()):
        return "first_person"
    if not keywords_fit(keywords, anchors):
        return "unrelated_keywords"
    return None


ECHO_WORDS = 5  # this many consecutive words of a prompt's own instructions in an answer: it parroted the prompt


@lru_cache(maxsize=None)
def instruction_ngrams(template: str) -> frozenset[tuple[str, ...]]:
    """Word n-grams of a template's fixed text (its placeholders split it, so no n-gram spans one)."""
    raw = (TEMPLATE_DIR / TEMPLATES[template]).read_text()
    grams = set()
    for segment in re.split(r"{{.*?}}|{%.*?%}", raw):
        words = normalize(segment).split()
        grams |= {tuple(words[i:i + ECHO_WORDS]) for i in range(len(words) - ECHO_WORDS + 1)}
    return frozenset(grams)


def echoes_prompt(template: str, *texts: str) -> bool:
    """Any of the texts repeats the template's instructions (small teachers copy them instead of answering)."""
    grams = instruction_ngrams(template)
    return any(tuple(words[i:i + ECHO_WORDS]) in grams for text in texts for words in [normalize(text).split()]
               for i in range(len(words) - ECHO_WORDS + 1))


def in_third_person(statement: str, name: str) -> str:
    """A plan statement ("The user ...") about the persona by name."""
    return re.sub(r"\b[Tt]he user\b", name, re.sub(r"\b[Tt]he user's\b", f"{name}'s", statement))


# ---------------------------------------------------------------------------------------------- semantic memory


def facts_told(turn: Turn, items: dict[str, PlanItem]) -> list[PlanItem]:
    return [items[i] for i in turn.realizes if i in items]


def turn_problems(dialogue: Dialogue, items: dict[str, PlanItem]) -> list[QuarantineRow]:
    """Turns whose plan references cannot be labelled: an unknown item, or more than one fact in a turn."""
    rows = []
    for turn in dialogue.turns:
        key = f"{turn.persona_id}:{turn.turn_index}"
        for item_id in (i for i in turn.realizes if i not in items):
            rows.append(QuarantineRow(table_name="semantic_memory_targets", row_key=key, rule="unknown_plan_item",
                                      value=f"{item_id} | labelled as small talk"))
        if len(facts_told(turn, items)) > 1:
            rows.append(QuarantineRow(table_name="semantic_memory_targets", row_key=key, rule="several_plan_items",
                                      value=f"{turn.realizes} | the memory stores the first"))
    return rows


def semantic_requests(cfg: PipelineConfig, dialogue: Dialogue, plan: TimelinePlan,
                      sessions_from: int = 0) -> list[TeacherRequest]:
    """One request per turn: the wording of the fact it tells, or why small talk is not stored. A turn's request
    depends on that turn alone: `sessions_from` skips the sessions before it (asked already)."""
    items = {i.item_id: i for i in plan.items}
    constrain = cfg.supervision.constrain_phrases
    requests = []
    for turn in (t for session in dialogue.sessions[sessions_from:] for t in session.turns):
        facts = facts_told(turn, items)
        tag = f"semantic:{dialogue.persona_id}:{turn.turn_index}"
        told = realization(facts[0]) if facts else None
        model = draft_model("semantic", told.phrases, constrain) if told else SmallTalkDraft
        requests.append(TeacherRequest(
            chat("semantic_memory", user=turn.user, fact=told.statement if told else None,
                 phrases=told.phrases if told else ()),
            sampling(cfg, "semantic", dialogue.persona_id, turn.turn_index, schema=model), model, tag=tag))
    return requests


def image_object(content: str, naming: str, image: ImageRecord) -> str:
    """PersonaVLM's visual-concept form: the user's naming of the object followed by " (Image Object: <class>)"."""
    cls = next((label for label in image.labels if normalize(label) == normalize(naming)), image.labels[0])
    tag = f" (Image Object: {cls})"
    match = re.search(re.escape(naming), content, flags=re.IGNORECASE)
    if match is None:
        return f"{content.rstrip('.')}: {naming}{tag}."
    return content[:match.end()] + tag + content[match.end():]


def semantic_targets(dialogue: Dialogue, plan: TimelinePlan, images: Mapping[str, ImageRecord],
                     results: list[TeacherResult]) -> tuple[list[SemanticMemoryTarget], Counter[str]]:
    """One decision per turn (index-aligned with the interactions); returns (targets, why wording fell back to
    the plan: teacher_failure or the failed check, with counts)."""
    items = {i.item_id: i for i in plan.items}
    targets, fallbacks = [], Counter[str]()
    for turn, res in zip(dialogue.turns, results, strict=True):
        facts = facts_told(turn, items)
        base = {"persona_id": dialogue.persona_id, "turn_index": turn.turn_index}
        if not facts:
            problem = ("teacher_failure" if not res.ok else
                       "echoes_prompt" if echoes_prompt("semantic_memory", res.value.reason) else None)  # type: ignore[union-attr]
            ok = problem is None
            fallbacks.update([problem] if problem else [])
            reason = res.value.reason.strip() if ok else "Small talk: nothing lasting about the user to store."
            targets.append(SemanticMemoryTarget(**base, reason=reason, decision=False, content="", keywords="",
                                                wording="teacher" if ok else "plan"))
            continue
        item, told = facts[0], realization(facts[0])
        draft = res.value if res.ok else None
        problem = ("teacher_failure" if draft is None else
                   "echoes_prompt" if echoes_prompt("semantic_memory", *draft.model_dump().values()) else
                   wording_problem(draft.content, draft.keywords, told.phrases, told.phrases,  # type: ignore[union-attr]
                                   single_sentence=True))
        if problem:
            fallbacks[problem] += 1
            reason = f"It tells a lasting fact about the user ({item.kind.replace('_', ' ')})."
            content, keywords, wording = told.statement, ", ".join(told.phrases), "plan"
        else:
            reason, content, keywords, wording = (draft.reason.strip(), draft.content.strip(),  # type: ignore[union-attr]
                                                  draft.keywords.strip(), "teacher")  # type: ignore[union-attr]
        if item.kind == "photo_share" and turn.image_id in images:
            content = image_object(content, item.subject, images[turn.image_id])
        targets.append(SemanticMemoryTarget(**base, reason=reason, decision=True, content=content, keywords=keywords,
                                            item_id=item.item_id, wording=wording))
    return targets, fallbacks


def missing_images(dialogue: Dialogue, images: dict[str, ImageRecord]) -> list[QuarantineRow]:
    return [QuarantineRow(table_name="semantic_memory_targets", row_key=f"{t.persona_id}:{t.turn_index}",
                          rule="unknown_image", value=f"{t.image_id} | stored without its image object")
            for t in dialogue.turns if t.image_id is not None and t.image_id not in images]


# ---------------------------------------------------------------------------------------------- episodic memory


def theme(item: PlanItem | None, shift_causes: set[str]) -> str:
    """What a turn is about, for topic segmentation: turns on one theme form one topic of their session."""
    if item is None:
        return SMALL_TALK
    if item.kind == "relationship":
        return f"person:{item.subject}"
    if item.kind == "event" and item.person:
        return f"person:{item.person}"
    if item.kind in ("preference", "preference_shift", "dislike") or item.item_id in shift_causes:
        return "interests"
    return {"goal": "goals", "goal_update": "goals", "skill": "skills", "skill_update": "skills",
            "routine": "habits", "style": "habits", "event": "events", "photo_share": "photos"}[item.kind]


@dataclass(frozen=True)
class TopicSlice:
    """One topic of a session: its rounds (indices within the session) and the facts they tell."""

    topic_index: int
    rounds: tuple[int, ...]
    facts: tuple[PlanItem, ...]

    def phrases(self, name: str) -> tuple[str, ...]:
        """What a summary must name: the user, then the main phrase of up to three facts."""
        out = [name]
        for item in self.facts:
            phrase = realization(item).phrases[0]
            if phrase not in out and len(out) < 4:
                out.append(phrase)
        return tuple(out)


def segment(session: Session, items: dict[str, PlanItem]) -> list[TopicSlice]:
    """Topics in order of their first round; every round belongs to exactly one topic."""
    shift_causes = {i.cause_item_id for i in items.values() if i.kind == "preference_shift" and i.cause_item_id}
    rounds: dict[str, list[int]] = {}
    facts: dict[str, list[PlanItem]] = {}
    for k, turn in enumerate(session.turns):
        told = facts_told(turn, items)
        key = theme(told[0] if told else None, shift_causes)
        rounds.setdefault(key, []).append(k)
        facts.setdefault(key, []).extend(told[:1])
    return [TopicSlice(n, tuple(rounds[key]), tuple(facts[key]))
            for n, key in enumerate(rounds)]


def topic_requests(cfg: PipelineConfig, persona: Persona, dialogue: Dialogue, plan: TimelinePlan,
                   sessions_from: int = 0) -> list[TeacherRequest]:
    """One request per topic of each session, from the session `sessions_from` on (a session's requests depend on
    that session alone)."""
    items = {i.item_id: i for i in plan.items}
    name = persona.profile.name
    requests = []
    for session in dialogue.sessions[sessions_from:]:
        for topic in segment(session, items):
            phrases = topic.phrases(name)
            requests.append(TeacherRequest(
                chat("episodic_topic", name=name, turns=[session.turns[k] for k in topic.rounds],
                     facts=[in_third_person(realization(i).statement, name) for i in topic.facts], phrases=phrases),
                sampling(cfg, "topic", dialogue.persona_id, session.session_index, topic.topic_index,
                         schema=(model := draft_model("topic", phrases, cfg.supervision.constrain_phrases))),
                model,
                tag=f"topic:{dialogue.persona_id}:{session.session_index}:{topic.topic_index}"))
    return requests


def plan_topic(topic: TopicSlice, name: str) -> EpisodicTopic:
    if not topic.facts:
        return EpisodicTopic(topic_summary=f"{name} made small talk with the assistant.", keywords=SMALL_TALK,
                             source_dialog_indices=list(topic.rounds))
    statements = " ".join(in_third_person(realization(i).statement, name) for i in topic.facts)
    return EpisodicTopic(topic_summary=f"{name} told the assistant: {statements}",
                         keywords=", ".join(topic.phrases(name)[1:]), source_dialog_indices=list(topic.rounds))


# ---------------------------------------------------------------------------------------------- procedural and core


def slug(text: str) -> str:
    return "_".join(normalize(text).split()[:5])


def procedural_key(item: PlanItem) -> str | None:
    """The unique key a habit or goal keeps across its updates (None for facts that are not procedural)."""
    match item.kind:
        case "routine":
            return f"routine_{slug(item.value)}"
        case "goal" | "goal_update":
            return f"goal_{slug(item.subject)}"
        case "skill" | "skill_update":
            return f"skill_{slug(item.subject)}"
    return None


def update_procedural(current: dict[str, str], told: list[tuple[PlanItem, str]]) -> dict[str, str]:
    """CRUD at session end over (fact, its memory sentence): routines, open goals and skills, the latest version
    of each; finished or abandoned goals are removed; at most five, the most recently updated kept."""
    entries = dict(current)
    for item, sentence in told:
        key = procedural_key(item)
        if key is None:
            continue
        entries.pop(key, None)  # re-inserted last: recency decides what the cap keeps
        if not (item.kind == "goal_update" and item.value in ("finished", "gave up")):
            entries[key] = sentence
    return dict(list(entries.items())[-PROCEDURAL_MAX:])


def update_profile(profile: dict[str, Any], told: list[PlanItem], last_time: str, gap_minutes: int) -> dict[str, Any]:
    """Core memory after a session: preferences after shifts, dislikes, people, recent matters and ways of doing
    things; identity fields stay; `update time` = last turn + the session gap.

    Unlike `timeline.plan_state` (the likes the plan gives at a time), the preferences here are the memory's own
    list, as PersonaVLM's core-memory update keeps it: recency-ordered (a like told again moves to the end) and cut
    to the last `PREFERENCES_MAX`, so an old like can drop out without any shift."""
    updated = {k: v for k, v in profile.items() if k != "update time"}  # re-added last, as the prompt writes it
    prefs = list(profile["preferences"])
    dislikes = list(profile.get("dislikes", []))
    people = dict(profile.get("people", {}))
    matters = list(profile["recent matters"])
    style = dict(profile.get("style", {}))
    for item in told:
        match item.kind:
            case "preference" | "preference_shift":
                prefs = [p for p in prefs if normalize(p) not in {normalize(item.value), normalize(item.previous_value or "")}]
                prefs.append(item.value)
            case "dislike":
                dislikes = [d for d in dislikes if normalize(d) != normalize(item.value)] + [item.value]
            case "relationship":
                people[item.subject] = item.value
            case "event":
                matters.append(f"{item.value} with {item.person}" if item.person else item.value)
            case "style":
                style[item.subject] = item.value
    updated.update({"preferences": prefs[-PREFERENCES_MAX:], "dislikes": dislikes, "people": people,
                    "recent matters": matters[-RECENT_MATTERS_MAX:], "style": style,
                    "update time": fmt_time(parse_time(last_time) + timedelta(minutes=gap_minutes))})
    return updated


def session_targets(cfg: PipelineConfig, persona: Persona, dialogue: Dialogue, plan: TimelinePlan,
                    semantic: list[SemanticMemoryTarget],
                    results: list[TeacherResult]) -> tuple[list[SessionMemoryTarget], Counter[str]]:
    """Episodic topics, procedural memory and core profile after each session; returns (targets, why topic
    wording fell back to the plan, with counts)."""
    items = {i.item_id: i for i in plan.items}
    memory = {s.turn_index: s for s in semantic}
    name = persona.profile.name
    answers = iter(results)
    procedural: dict[str, str] = {}
    profile = persona.profile.to_spec()
    targets, fallbacks = [], Counter[str]()
    for session in dialogue.sessions:
        topics, wording = [], []
        for topic in segment(session, items):
            res = next(answers)
            draft = res.value if res.ok else None
            phrases = topic.phrases(name)
            problem = ("teacher_failure" if draft is None else
                       "echoes_prompt" if echoes_prompt("episodic_topic", *draft.model_dump().values()) else
                       wording_problem(draft.topic_summary, draft.keywords, phrases, phrases[1:],  # type: ignore[union-attr]
                                       single_sentence=False))
            if problem:
                fallbacks[problem] += 1
                topics.append(plan_topic(topic, name))
                wording.append("plan")
            else:
                topics.append(EpisodicTopic(topic_summary=draft.topic_summary.strip(),  # type: ignore[union-attr]
                                            keywords=draft.keywords.strip(),  # type: ignore[union-attr]
                                            source_dialog_indices=list(topic.rounds)))
                wording.append("teacher")
        told = [(items[m.item_id], m.content) for t in session.turns
                if (m := memory[t.turn_index]).item_id is not None]
        procedural = update_procedural(procedural, told)
        profile = update_profile(profile, [i for i, _ in told], session.turns[-1].time, cfg.dialogue.session_gap_minutes)
        targets.append(SessionMemoryTarget(persona_id=persona.persona_id, session_index=session.session_index,
                                           episodic=topics, topic_wording=wording, procedural=procedural,
                                           profile=profile))
    return targets, fallbacks


# ---------------------------------------------------------------------------------------------- the replay


def replay_user_data(persona: Persona, dialogue: Dialogue, semantic: list[SemanticMemoryTarget],
                     sessions: list[SessionMemoryTarget], personality: list[PersonalityStep]) -> dict[str, Any]:
    """The memory database an agent would have built turn by turn (the `user_data.json` PersonaVLM's agent writes).

    A session entry holds the core profile and procedural memory valid *during* it (written when it opened), its
    interactions with their semantic decisions and personality steps, and the episodic topics written when it
    closed; the top level holds the latest state: profile and procedural memory after the last session, and
    the latest EMA personality.
    """
    sem = {s.turn_index: s for s in semantic}
    pers = {p.turn_index: p for p in personality}
    if len(sessions) != len(dialogue.sessions) or set(sem) != {t.turn_index for t in dialogue.turns}:
        raise ValueError(f"{dialogue.persona_id}: memory targets do not match the dialogue "
                         f"({len(sessions)} session targets for {len(dialogue.sessions)} sessions, "
                         f"{len(sem)} semantic targets for {len(dialogue.turns)} turns)")
    imgs: list[str] = []
    out_sessions = []
    profile, procedural = persona.profile.to_spec(), {}
    for session, target in zip(dialogue.sessions, sessions):
        interactions, semantic_memory, big_five = [], [], []
        for turn in session.turns:
            images = [turn.image_id] if turn.image_id else []
            imgs += images
            interactions.append([{"time": turn.time, "query": turn.user.replace("<img>", "<img_fill>\n")},
                                 {"response": turn.assistant}, [], images])
            s = sem[turn.turn_index]
            semantic_memory.append({"reason": s.reason, "decision": s.decision, "content": s.content,
                                    "keywords": s.keywords})
            if turn.turn_index in pers:
                p = pers[turn.turn_index]
                big_five.append([{t: {"score": v} for t, v in p.inferred.items()}, p.ema])
        out_sessions.append({
            "profile": profile, "ProceduralMemory": procedural, "interactions": interactions,
            "semantic_memory": semantic_memory,
            "EpisodicMemory": [e.model_dump() for e in target.episodic], "big_five_personality": big_five,
        })
        profile, procedural = target.profile, target.procedural
    last = personality[-1].ema if personality else {t: 3.0 for t in persona.big_five.model_dump()}
    return {"init_profile": persona.profile.to_spec(), "imgs": imgs, "big_five_personality": last,
            "current_interactions": len(dialogue.turns), "profile": profile, "ProceduralMemory": procedural,
            "sessions": out_sessions}


# ---------------------------------------------------------------------------------------------- the view at a time


@dataclass(frozen=True)
class MemoryEntry:
    """One retrievable memory: what a search matches (`index_text`, or `keywords` and `shown` apart), what the agent
    is shown, when it was made."""

    key: str  # semantic:<session>:<round> | episodic:<session>:<topic> | procedural:<key>
    kind: str  # semantic | episodic | procedural
    time: str  # semantic: the turn's time; episodic: its last round's time; procedural: its session's end
    index_text: str
    shown: str
    turns: tuple[int, ...]  # global turn indices it stems from (an episodic topic expands to all of them)
    times: tuple[str, ...]  # their times
    keywords: str = ""  # the keywords stored with a semantic memory or an episodic topic


def held_memories(user_data: dict[str, Any], at: str, gap_minutes: int,
                  last_turn: int | None = None) -> list[MemoryEntry]:
    """What the database holds when a query arrives at time `at`, oldest first within each kind: semantic memories of
    the turns up to `last_turn` (of every turn before `at` when None), short-term window included; episodic topics
    and procedural memory of the sessions closed by then (their last turn older than the window)."""
    cutoff = fmt_time(parse_time(at) - timedelta(minutes=gap_minutes))
    entries: list[MemoryEntry] = []
    procedural: dict[str, str] = {}
    closed_at, first = "", 0
    sessions = user_data["sessions"]
    for s, session in enumerate(sessions):
        times = [interaction[0]["time"] for interaction in session["interactions"]]
        for r, mem in enumerate(session["semantic_memory"]):
            said = first + r <= last_turn if last_turn is not None else times[r] <= at
            if mem["decision"] and said:
                entries.append(MemoryEntry(f"semantic:{s}:{r}", "semantic", times[r],
                                           f"{mem['content']} {mem['keywords']}", mem["content"], (first + r,),
                                           (times[r],), mem["keywords"]))
        if times and times[-1] < cutoff:  # closed: its session-end update has run
            for k, topic in enumerate(session["EpisodicMemory"]):
                rounds = topic["source_dialog_indices"]
                entries.append(MemoryEntry(f"episodic:{s}:{k}", "episodic", times[max(rounds)],
                                           f"{topic['topic_summary']} {topic['keywords']}", topic["topic_summary"],
                                           tuple(first + r for r in rounds), tuple(times[r] for r in rounds),
                                           topic["keywords"]))
            procedural = sessions[s + 1]["ProceduralMemory"] if s + 1 < len(sessions) else user_data["ProceduralMemory"]
            closed_at = times[-1]
        first += len(times)
    entries += [MemoryEntry(f"procedural:{k}", "procedural", closed_at, f"{k.replace('_', ' ')} {v}", v, (), ())
                for k, v in procedural.items()]
    return entries


def outside_window(entry: MemoryEntry, at: str, gap_minutes: int) -> bool:
    """Older than the short-term window at `at` (what lies inside it is in the recent context, not retrieved)."""
    return entry.time < fmt_time(parse_time(at) - timedelta(minutes=gap_minutes))


def visible_memories(user_data: dict[str, Any], at: str, gap_minutes: int) -> list[MemoryEntry]:
    """What the database holds at time `at` that lies outside the short-term window (older than `gap_minutes`):
    semantic memories of older turns, episodic topics and procedural memory of sessions closed by then."""
    return [e for e in held_memories(user_data, at, gap_minutes) if outside_window(e, at, gap_minutes)]


def short_term(earlier: list[Turn], at: str, gap_minutes: int) -> list[Turn]:
    """The short-term context at time `at`: those of the earlier turns no older than the session gap (PersonaVLM's
    60 minutes); what lies outside it is reachable only through memory."""
    now, window = parse_time(at), timedelta(minutes=gap_minutes)
    recent = []
    for t in reversed(earlier):  # turns are in time order: stop at the first one outside the window
        if now - parse_time(t.time) > window:
            break
        recent.append(t)
    return recent[::-1]


# ---------------------------------------------------------------------------------------------- invariants


def target_problems(dialogue: Dialogue, plan: TimelinePlan, semantic: list[SemanticMemoryTarget],
                    sessions: list[SessionMemoryTarget]) -> list[str]:
    """Broken invariants of one persona's memory targets: one semantic decision per turn, remembered exactly when
    the turn tells a plan fact; episodic topics covering every round of their session exactly once; at most five
    procedural entries."""
    items = {i.item_id for i in plan.items}
    pid, problems = dialogue.persona_id, []
    decisions = {s.turn_index: s.decision for s in semantic}
    if sorted(decisions) != [t.turn_index for t in dialogue.turns]:
        problems.append(f"{pid}: semantic decisions are not one per turn")
    for turn in dialogue.turns:
        if turn.turn_index in decisions and decisions[turn.turn_index] != any(i in items for i in turn.realizes):
            problems.append(f"{pid}:{turn.turn_index}: decision {decisions[turn.turn_index]} contradicts the plan")
    targets = {s.session_index: s for s in sessions}
    for session in dialogue.sessions:
        target = targets.get(session.session_index)
        if target is None:
            problems.append(f"{pid}: session {session.session_index} has no memory target")
            continue
        rounds = sorted(i for topic in target.episodic for i in topic.source_dialog_indices)
        if rounds != list(range(len(session.turns))):
            problems.append(f"{pid}: session {session.session_index} topics cover rounds {rounds}, "
                            f"not each of 0..{len(session.turns) - 1} once")
        if len(target.procedural) > PROCEDURAL_MAX:
            problems.append(f"{pid}: session {session.session_index} keeps {len(target.procedural)} procedural entries")
    return problems
