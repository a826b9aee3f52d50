"""Training exports: SFT records in the Qwen2.5-VL `conversations` format and RL records in the ms-swift `messages`
format, built from the supervision targets and the replayed memory database, with task shares and provenance per
row.

Every prompt is one of PersonaVLM's task prompts, as its release writes them, filled with what the agent holds at
that moment: the core profile valid in the session, the EMA personality after the last turn, the short-term
context, and for reasoning the memories each `<retrieve>` call returned from the database as it was at probe time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

from prompts import render

from ..schema import (
    BIG_FIVE_TRAITS, AlignmentPair, Dialogue, Persona, PersonalityStep, Provenance, QuarantineRow,
    ReasoningTrajectory, RLRecord, SemanticMemoryTarget, SessionMemoryTarget, SFTRecord, Turn,
)
from .benchmark import LETTERS
from .common import parse_time, personality_text, rng_for, stable_id
from .memory import MemoryEntry, short_term, visible_memories
from .reasoning import render_step

SHARE_GROUP = {"reasoning": "reasoning", "semantic_memory": "memory", "episodic_memory": "memory",
               "procedural_memory": "memory", "core_memory": "memory", "personality": "personality"}
IMAGE = "<image>"
_SLOT = "\x00image\x00"  # a real image's place while rendering; literal "<image>" in free text is neutralized
MC_SUFFIX = "Please give your final answer (a), (b), (c) or (d)."
BINARY_OPTIONS = "Options:\n(a). Yes, it aligns\n(b). No, it misaligns\nPlease give your final answer (a) or (b)."


def with_weekday(t: str) -> str:
    return f"{t} ({parse_time(t).strftime('%A')})"


def finalize(text: str) -> str:
    """Only the images the record lists become <image> tokens."""
    return text.replace(IMAGE, "image").replace(_SLOT, IMAGE)


def image_token_mismatch(conversations: Sequence[dict[str, str]], images: Sequence[str]) -> bool:
    return sum(c.get("value", c.get("content", "")).count(IMAGE) for c in conversations) != len(images)


@dataclass
class Agent:
    """What the agent holds for one persona: the dialogue, its replayed memory database and personality steps."""

    persona: Persona
    dialogue: Dialogue
    user_data: dict[str, Any]
    steps: dict[int, PersonalityStep]
    gap_minutes: int
    turns: list[Turn] = field(init=False)

    def __post_init__(self) -> None:
        self.turns = self.dialogue.turns

    def view(self, turn: Turn) -> dict[str, str]:
        return {"time": with_weekday(turn.time), "user": turn.user.replace("<img>", _SLOT),
                "assistant": turn.assistant}

    def recent(self, upto: int, at: str) -> list[Turn]:
        """The short-term context at `at` among turns before index `upto`."""
        return short_term(self.turns[:upto], at, self.gap_minutes)

    def profile(self, turn_index: int) -> str:
        """The core profile valid during the turn's session, as the prompts show it."""
        return json.dumps(self.user_data["sessions"][self.turns[turn_index].session_index]["profile"],
                          ensure_ascii=False)

    def procedural(self, turn_index: int) -> dict[str, str]:
        return self.user_data["sessions"][self.turns[turn_index].session_index]["ProceduralMemory"]

    def user_input(self, at: str, query: str) -> str:
        """PersonaVLM's input line, a Python dict string; a turn's image placeholder becomes its image slot."""
        return str({"time": with_weekday(at), "query": query}).replace("<img>", _SLOT)

    def turn_prompt(self, template: str, turn: Turn) -> tuple[str, list[str]]:
        """A per-turn memory task (semantic decision, personality state): profile, recent context, input."""
        recent = self.recent(turn.turn_index, turn.time)
        text = render(template, profile=self.profile(turn.turn_index), recent=[self.view(t) for t in recent],
                      user_input=self.user_input(turn.time, turn.user))
        return text, images_of(recent + [turn])

    def start(self, after: int, at: str, query: str) -> tuple[str, list[str]]:
        """PersonaVLM's first reasoning prompt for a query posed at `at`, right after turn `after`."""
        recent = self.recent(after + 1, at)
        ema = self.steps[after].ema if after in self.steps else dict.fromkeys(BIG_FIVE_TRAITS, 3.0)
        text = render("sft_reasoning_start", profile=self.profile(after), personality=personality_text(ema),
                      recent=[self.view(t) for t in recent], user_input=self.user_input(at, query))
        return text, images_of(recent)

    def middle(self, entries: list[MemoryEntry]) -> tuple[str, list[str]]:
        """The prompt returning what a <retrieve> call found: procedural entries, then semantic memories and the raw
        turns of episodic topics (images included) in time order, as PersonaVLM's retriever returns them."""
        turns = [self.turns[i] for i in sorted({i for e in entries if e.kind == "episodic" for i in e.turns})]
        semantic = sorted((e for e in entries if e.kind == "semantic"), key=lambda e: e.turns)
        text = render("sft_reasoning_mid",
                      procedural={e.key.split(":", 1)[1]: e.shown for e in entries if e.kind == "procedural"},
                      memories=[{"time": with_weekday(e.time), "content": e.shown} for e in semantic],
                      dialogue=[self.view(t) for t in turns])
        return text, images_of(turns)


def images_of(turns: list[Turn]) -> list[str]:
    return [t.image_id for t in turns if t.image_id]


def lines(fields: dict[str, Any]) -> str:
    """PersonaVLM's key-value target lines: `"key": value`, values as JSON."""
    return "\n".join(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in fields.items())


def sft_record(persona_id: str, task: str, pairs: list[tuple[str, str]], images: list[str], prov: Provenance,
               *key: object) -> SFTRecord:
    conv = []
    for human, gpt in pairs:
        conv += [{"from": "human", "value": finalize(human)}, {"from": "gpt", "value": finalize(gpt)}]
    return SFTRecord(record_id=stable_id("sft_", persona_id, task, *key), persona_id=persona_id, task=task,
                     conversations=conv, image=images, provenance=prov)


def memory_records(agent: Agent, semantic: list[SemanticMemoryTarget], sessions: list[SessionMemoryTarget],
                   personality: list[PersonalityStep], prov: dict[str, Provenance]) -> list[SFTRecord]:
    """The five memory-and-personality task types: per turn a semantic decision and a personality state, per
    session episodic topics, a procedural update and a core-profile update."""
    pid, turns = agent.persona.persona_id, agent.turns
    out: list[SFTRecord] = []
    for s in semantic:
        text, images = agent.turn_prompt("sft_semantic_memory", turns[s.turn_index])
        target = lines({"reason": s.reason, "decision": s.decision, "content": s.content, "keywords": s.keywords})
        out.append(sft_record(pid, "semantic_memory", [(text, target)], images, prov["semantic_memory"], s.turn_index))
    for p in personality:
        text, images = agent.turn_prompt("sft_personality", turns[p.turn_index])
        out.append(sft_record(pid, "personality", [(text, lines(p.inferred))], images, prov["personality"],
                              p.turn_index))
    for session, target in zip(agent.dialogue.sessions, sessions, strict=True):
        first = session.turns[0].turn_index
        views, images = [agent.view(t) for t in session.turns], images_of(session.turns)
        episodic = "\n".join(lines(e.model_dump()) for e in target.episodic)
        out.append(sft_record(pid, "episodic_memory", [(render(
            "sft_episodic_memory", profile=agent.profile(first), turns=views), episodic)], images,
            prov["episodic_memory"], session.session_index))
        out.append(sft_record(pid, "procedural_memory", [(render(
            "sft_procedural_memory", profile=agent.profile(first),
            procedural=json.dumps(agent.procedural(first), ensure_ascii=False), turns=views),
            lines(target.procedural) or "{}")], images, prov["procedural_memory"], session.session_index))
        out.append(sft_record(pid, "core_memory", [(render(
            "sft_core_memory", profile=agent.profile(first), turns=views), lines(target.profile))], images,
            prov["core_memory"], session.session_index))
    return out


def retrieved_entries(agent: Agent, traj: ReasoningTrajectory) -> dict[str, MemoryEntry]:
    """The database's memories at probe time; every key a trajectory cites must be among them."""
    visible = {e.key: e for e in visible_memories(agent.user_data, traj.probe_time, agent.gap_minutes)}
    cited = [k for step in traj.steps for k in step.retrieved]
    if missing := [k for k in cited if k not in visible]:
        raise ValueError(f"trajectory {traj.probe_id} cites memories {missing} that the database of "
                         f"{traj.persona_id} did not hold outside the short-term window at {traj.probe_time}")
    return visible


def reasoning_record(agent: Agent, traj: ReasoningTrajectory, prov: Provenance) -> SFTRecord:
    """START prompt, then per step the model's turn and, after a <retrieve>, the memories it returned."""
    visible = retrieved_entries(agent, traj)
    human, images = agent.start(traj.probe_turn_index, traj.probe_time, traj.query)
    pairs = []
    for step in traj.steps:
        pairs.append((human, render_step(step)))
        if step.action == "retrieve":
            human, found = agent.middle([visible[k] for k in step.retrieved])
            images = images + found
    return sft_record(agent.persona.persona_id, "reasoning", pairs, images, prov, traj.probe_id)


def sft_records(agent: Agent, semantic: list[SemanticMemoryTarget], sessions: list[SessionMemoryTarget],
                personality: list[PersonalityStep], trajectories: list[ReasoningTrajectory],
                prov: dict[str, Provenance]) -> tuple[list[SFTRecord], list[QuarantineRow]]:
    """Every candidate record; one whose <image> tokens do not match its image list is quarantined."""
    records = memory_records(agent, semantic, sessions, personality, prov)
    records += [reasoning_record(agent, t, prov["reasoning"]) for t in trajectories if t.verdict == "verified"]
    bad = {r.record_id for r in records if image_token_mismatch(r.conversations, r.image)}
    quarantined = [QuarantineRow(table_name="sft_records", row_key=f"{r.persona_id}:{r.record_id}",
                                 rule="image_token_mismatch", value=f"{r.task} | {len(r.image)} images")
                   for r in records if r.record_id in bad]
    return [r for r in records if r.record_id not in bad], quarantined


# ---------------------------------------------------------------------------------------------- RL


def rl_record(agent: Agent, kind: str, key: str, prompt: tuple[str, list[str]], appendix: str, gold: str,
              solution: str, prov: Provenance) -> RLRecord:
    """The START prompt with the item's options (or alignment question) appended, as the RL environment expects."""
    text, images = prompt
    return RLRecord(record_id=stable_id("rl_", key, kind), persona_id=agent.persona.persona_id, kind=kind,
                    messages=[{"role": "user", "content": finalize(text + appendix)},
                              {"role": "assistant", "content": finalize(gold)}],
                    images=images, solution=solution, provenance=prov)


def rl_records(agent: Agent, trajectories: list[ReasoningTrajectory], pairs: list[AlignmentPair], prov: Provenance,
               seed: int) -> list[RLRecord]:
    """Multiple choice (gold letters rotate evenly from a random start) and verifiable open QA from verified
    probes; binary alignment judgements from the pairs (chosen: (a), rejected: (b))."""
    rng = rng_for(seed, "rl", agent.persona.persona_id)
    offset = rng.randrange(len(LETTERS))
    out: list[RLRecord] = []
    verified = [t for t in trajectories if t.verdict == "verified"]
    for n, traj in enumerate(verified):
        after, at = traj.probe_turn_index, traj.probe_time
        if traj.distractors:
            slot = (offset + n) % len(LETTERS)
            options = rng.sample(traj.distractors, k=len(traj.distractors))
            options.insert(slot, traj.gold_value)
            appendix = "\nOptions:\n" + "\n".join(f"{l}. {o}" for l, o in zip(LETTERS, options)) + "\n" + MC_SUFFIX
            out.append(rl_record(agent, "multiple_choice", traj.probe_id, agent.start(after, at, traj.query), appendix,
                                 LETTERS[slot], LETTERS[slot], prov))
        answer = traj.steps[-1].answer or ""
        out.append(rl_record(agent, "open_qa", traj.probe_id, agent.start(after, at, traj.query), "", answer,
                             traj.gold_value, prov))
    for pair in pairs:
        for reply, gold in ((pair.chosen, "(a)"), (pair.rejected, "(b)")):
            appendix = (f"\nEvaluate the following response: {reply}\nDoes the provided response align with and adapt "
                        f"to the user's personality?\n{BINARY_OPTIONS}")
            out.append(rl_record(agent, "binary", f"{pair.pair_id}:{gold}",
                                 agent.start(pair.after_turn_index, pair.query_time, pair.query), appendix, gold, gold,
                                 prov))
    return out


# ---------------------------------------------------------------------------------------------- shares

R = TypeVar("R", SFTRecord, RLRecord)


def apply_shares(records: list[R], group_of: Callable[[R], str], stratum_of: Callable[[R], str],
                 shares: dict[str, float], seed: int, purpose: str) -> list[R]:
    """Subsample to the configured group shares, keeping the scarcest group whole. Within a group, records are
    taken round robin over strata (persona and task), so every persona keeps every task type the quota allows."""
    groups: dict[str, list[R]] = {g: [] for g in shares}
    for r in sorted(records, key=lambda r: r.record_id):
        groups[group_of(r)].append(r)
    feasible = [len(groups[g]) / shares[g] for g in shares if shares[g] > 0 and groups[g]]
    if not feasible:
        return []
    total = min(feasible)
    rng = rng_for(seed, "shares", purpose)
    out: list[R] = []
    for g, rows in groups.items():
        out += _round_robin(rows, min(len(rows), round(total * shares[g])), stratum_of, rng)
    return sorted(out, key=lambda r: r.record_id)


def _round_robin(rows: list[R], k: int, stratum_of: Callable[[R], str], rng) -> list[R]:
    strata: dict[str, list[R]] = {}
    for r in rows:
        strata.setdefault(stratum_of(r), []).append(r)
    queues = [rng.sample(v, k=len(v)) for _, v in sorted(strata.items())]
    rng.shuffle(queues)
    out: list[R] = []
    while len(out) < k:
        for q in queues:
            if q and len(out) < k:
                out.append(q.pop())
    return out


def rl_stratum(record: RLRecord) -> str:
    """Persona and kind, and for choice items the gold letter, so subsampling keeps letters and yes/no balanced."""
    letter = f":{record.solution}" if record.kind != "open_qa" else ""
    return f"{record.persona_id}:{record.kind}{letter}"


def achieved_shares(records: Sequence[R], group_of: Callable[[R], str]) -> dict[str, float]:
    counts: dict[str, int] = {}
    for r in records:
        counts[group_of(r)] = counts.get(group_of(r), 0) + 1
    return {g: round(n / len(records), 4) for g, n in sorted(counts.items())} if records else {}


# ---------------------------------------------------------------------------------------------- invariants


def export_problems(sft: Sequence[SFTRecord], rl: Sequence[RLRecord]) -> list[str]:
    """Broken invariants of the exports: <image> tokens matching each record's image list, and the PEM skip rule
    in every row's provenance."""
    problems = [f"{r.record_id}: {len(r.image)} images for its <image> tokens" for r in sft
                if image_token_mismatch(r.conversations, r.image)]
    problems += [f"{r.record_id}: {len(r.images)} images for its <image> tokens" for r in rl
                 if image_token_mismatch(r.messages, r.images)]
    problems += [f"{r.record_id}: provenance lacks the personality skip rule" for r in [*sft, *rl]
                 if r.provenance.personality_skip_rule is None]
    return problems


def missing_tasks(sft: Sequence[SFTRecord], training_personas: Sequence[str]) -> dict[str, list[str]]:
    """Per training persona, the SFT task types it yields no record of."""
    have: dict[str, set[str]] = {}
    for r in sft:
        have.setdefault(r.persona_id, set()).add(r.task)
    return {pid: sorted(set(SHARE_GROUP) - have.get(pid, set())) for pid in training_personas
            if set(SHARE_GROUP) - have.get(pid, set())}
