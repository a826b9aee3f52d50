"""Training exports: SFT records in Qwen2.5-VL `conversations` format and RL records in ms-swift `messages`
format, built from the supervision targets, with task shares and provenance per row."""

from __future__ import annotations

from prompts import render

from ..config import PipelineConfig
from ..schema import (
    AlignmentPair, Dialogue, Persona, PersonalityStep, Provenance, ReasoningTrajectory, RLRecord, SFTRecord,
    SemanticMemoryTarget, SessionMemoryTarget, Turn,
)
from .benchmark import LETTERS
from .common import normalize, personality_text, rng_for, stable_id
from .reasoning import render_step

SHARE_GROUP = {"reasoning": "reasoning", "semantic_memory": "memory", "episodic_memory": "memory",
               "procedural_memory": "memory", "core_memory": "memory", "personality": "personality"}


def _turn_view(turn: Turn) -> dict[str, str]:
    return {"time": turn.time, "user": turn.user.replace("<img>", "<image>"), "assistant": turn.assistant}


def _recent(dialogue: Dialogue, turn_index: int) -> list[Turn]:
    """The short-term context: earlier turns of the same session."""
    turns = dialogue.turns
    here = turns[turn_index]
    return [t for t in turns[:turn_index] if t.session_index == here.session_index]


def _images(turns: list[Turn]) -> list[str]:
    return [t.image_id for t in turns if t.image_id]


def _record(persona: Persona, task: str, pairs: list[tuple[str, str]], images: list[str], prov: Provenance,
            *key: object) -> SFTRecord:
    conv = []
    for human, gpt in pairs:
        conv += [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
    return SFTRecord(record_id=stable_id("sft_", persona.persona_id, task, *key), persona_id=persona.persona_id,
                     task=task, conversations=conv, image=images, provenance=prov)


def sft_records(cfg: PipelineConfig, persona: Persona, dialogue: Dialogue, semantic: list[SemanticMemoryTarget],
                sessions: list[SessionMemoryTarget], personality: list[PersonalityStep],
                trajectories: list[ReasoningTrajectory], prov: Provenance) -> list[SFTRecord]:
    turns = dialogue.turns
    profile = persona.profile.to_spec()
    out: list[SFTRecord] = []
    for s in semantic:
        recent, turn = _recent(dialogue, s.turn_index), turns[s.turn_index]
        user_input = str({"time": turn.time, "query": turn.user.replace("<img>", "<image>")})
        target = (f'"reason": "{s.reason}"\n"decision": {str(s.decision).lower()}\n"content": "{s.content}"\n'
                  f'"keywords": "{s.keywords}"')
        out.append(_record(persona, "semantic_memory", [(render(
            "sft_semantic_memory", profile=profile, recent=[_turn_view(t) for t in recent], user_input=user_input),
            target)], _images(recent + [turn]), prov, s.turn_index))
    for p in personality:
        recent, turn = _recent(dialogue, p.turn_index), turns[p.turn_index]
        user_input = str({"time": turn.time, "query": turn.user.replace("<img>", "<image>")})
        target = "\n".join(f'"{t}": {v}' for t, v in p.inferred.items())
        out.append(_record(persona, "personality", [(render(
            "sft_personality", profile=profile, recent=[_turn_view(t) for t in recent], user_input=user_input),
            target)], _images(recent + [turn]), prov, p.turn_index))
    procedural: dict[str, str] = {}
    for session, target in zip(dialogue.sessions, sessions):
        views = [_turn_view(t) for t in session.turns]
        imgs = _images(session.turns)
        episodic = "\n".join(f'"topic_summary": "{e.topic_summary}"\n"keywords": "{e.keywords}"\n'
                             f'"source_dialog_indices": {e.source_dialog_indices}' for e in target.episodic)
        out.append(_record(persona, "episodic_memory", [(render("sft_episodic_memory", profile=profile, turns=views),
                                                          episodic)], imgs, prov, session.session_index))
        out.append(_record(persona, "procedural_memory", [(render(
            "sft_procedural_memory", profile=profile, procedural=procedural, turns=views),
            "\n".join(f'"{k}": "{v}"' for k, v in target.procedural.items()))], imgs, prov, session.session_index))
        out.append(_record(persona, "core_memory", [(render("sft_core_memory", profile=profile, turns=views),
                                                      "\n".join(f'"{k}": {v!r}' for k, v in target.profile.items()))],
                           imgs, prov, session.session_index))
        procedural, profile = target.procedural, target.profile
    ema = {p.turn_index: p.ema for p in personality}
    for traj in (t for t in trajectories if t.answer_verified):
        recent = [t for t in turns if t.session_index == turns[traj.probe_turn_index].session_index
                  and t.turn_index <= traj.probe_turn_index]
        start = render("sft_reasoning_start", profile=persona.profile.to_spec(),
                       personality=personality_text(ema.get(traj.probe_turn_index, persona.big_five.model_dump())),
                       recent=[_turn_view(t) for t in recent],
                       user_input=str({"time": traj.probe_time, "query": traj.query}))
        pairs, human, images = [], start, _images(recent)
        for step in traj.steps:
            pairs.append((human, render_step(step)))
            if step.action == "retrieve":
                found = [turns[i] for i in step.retrieved_turns]
                human = render("sft_reasoning_mid", procedural={}, memories=[
                    {"time": t.time, "content": next(s.content for s in semantic if s.turn_index == t.turn_index)}
                    for t in found], dialogue=[_turn_view(t) for t in found])
                images += _images(found)
        out.append(_record(persona, "reasoning", pairs, images, prov, traj.probe_id))
    return out


def apply_shares(cfg: PipelineConfig, records: list[SFTRecord]) -> list[SFTRecord]:
    """Subsample to the configured shares (reasoning / memory / personality), keeping the scarcest group whole."""
    shares = cfg.supervision.sft_shares
    groups: dict[str, list[SFTRecord]] = {g: [] for g in shares}
    for r in sorted(records, key=lambda r: r.record_id):
        groups[SHARE_GROUP[r.task]].append(r)
    feasible = [len(groups[g]) / shares[g] for g in shares if shares[g] > 0 and groups[g]]
    if not feasible:
        return []
    total = min(feasible)
    rng = rng_for(cfg.seed, "sft_shares")
    out = []
    for g, rows in groups.items():
        keep = min(len(rows), round(total * shares[g]))
        out += sorted(rng.sample(rows, k=keep), key=lambda r: r.record_id)
    return out


def rl_records(persona: Persona, trajectories: list[ReasoningTrajectory], pairs: list[AlignmentPair],
               distractors: dict[str, list[str]], prov: Provenance, seed: int) -> list[RLRecord]:
    """Multiple choice and open QA from verified probes, binary choice from alignment pairs."""
    rng = rng_for(seed, "rl", persona.persona_id)
    out = []
    for traj in (t for t in trajectories if t.answer_verified):
        pool = sorted({d for d in distractors.get(traj.gold_item_id, []) if normalize(d) != normalize(traj.gold_value)})
        prompt = str({"time": traj.probe_time, "query": traj.query})
        if len(pool) >= 3:
            options = rng.sample(pool, k=3)
            slot = rng.randrange(4)
            options.insert(slot, traj.gold_value)
            text = prompt + "\nOptions:\n" + "\n".join(f"{l}. {o}" for l, o in zip(LETTERS, options))
            out.append(RLRecord(record_id=stable_id("rl_", traj.probe_id, "mc"), persona_id=persona.persona_id,
                                kind="multiple_choice", messages=[{"role": "user", "content": text},
                                                                  {"role": "assistant", "content": LETTERS[slot]}],
                                solution=LETTERS[slot], provenance=prov))
        out.append(RLRecord(record_id=stable_id("rl_", traj.probe_id, "open"), persona_id=persona.persona_id,
                            kind="open_qa", messages=[{"role": "user", "content": prompt},
                                                      {"role": "assistant", "content": traj.gold_value}],
                            solution=traj.gold_value, provenance=prov))
    for pair in pairs:
        for reply, gold in ((pair.chosen, "(a)"), (pair.rejected, "(b)")):
            text = (f"{pair.query}\nEvaluate the following response: {reply}\nDoes the provided response align with "
                    "and adapt to the user's personality?\nOptions:\n(a). Yes, it aligns\n(b). No, it misaligns")
            out.append(RLRecord(record_id=stable_id("rl_", pair.pair_id, gold), persona_id=persona.persona_id,
                                kind="binary", messages=[{"role": "user", "content": text},
                                                         {"role": "assistant", "content": gold}],
                                solution=gold, provenance=prov))
    return out
