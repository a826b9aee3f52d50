"""Supervision targets on the tiny preset with a schema-following fake teacher, and on hand-built records: memory
decisions from the plan, topic coverage, procedural and core updates, a byte-identical replay, PEM's EMA and skip
rules, reasoning trajectories without future leakage, alignment pairs, the SFT/RL exports, and the asset checks."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
from dataclasses import dataclass, field
from datetime import timedelta

import dagster as dg
import pytest

from assets.training import TASK_TEMPLATES
from persona_factory.config import load_config
from persona_factory.embeddings import TextEmbedder
from persona_factory.schema import (
    BIG_FIVE_TRAITS, GOAL_OUTCOMES, SKILL_LEVELS, AlignmentPair, Dialogue, PersonalityStep, PlanItem, ReasoningStep, ReasoningTrajectory,
    RetrieveCall, SemanticMemoryTarget, Session, SessionMemoryTarget, Turn,
)
from persona_factory.stages import alignment as A
from persona_factory.stages import dialogues as D
from persona_factory.stages import exports as E
from persona_factory.stages import followups as F
from persona_factory.stages import memory as M
from persona_factory.stages import personality as PE
from persona_factory.stages import plans as PL
from persona_factory.stages import reasoning as R
from persona_factory.stages import retrieval as RT
from persona_factory.stages.distractors import Pools
from persona_factory.stages.timeline import plan_state, replay
from persona_factory.stages.common import contains_phrase, parse_time, provenance
from persona_factory import catalog as CAT
from persona_factory.store import Batch, DuckDBStore, dumps
from persona_factory.teacher.cache import request_key
from persona_factory.teacher.types import TeacherResult, TeacherStats
from pipelines.partitions import persona_shards
from pipelines.resources import FactoryConfig, StoreResource
from pipelines.supervision_checks import supervision_checks

try:
    from tests.fake_teacher import SchemaTeacher
    from tests.test_histories import histories as personas_and_plans
    from tests.test_histories import images  # noqa: F401 (a module fixture: the image pool)
except ImportError:
    from fake_teacher import SchemaTeacher
    from test_histories import histories as personas_and_plans
    from test_histories import images  # noqa: F401

FORMAT = re.compile(r"^<think>.*?</think>(<answer>|<retrieve>)", re.DOTALL)


@dataclass
class Labelled:
    """One persona's history and every supervision target made from it."""

    persona: object
    plan: object
    dialogue: Dialogue
    semantic: list[SemanticMemoryTarget]
    sessions: list[SessionMemoryTarget]
    steps: list[PersonalityStep]
    user_data: dict
    trajectories: list[ReasoningTrajectory] = field(default_factory=list)
    jobs: list = field(default_factory=list)
    pairs: list[AlignmentPair] = field(default_factory=list)
    sft: list = field(default_factory=list)
    rl: list = field(default_factory=list)
    fallbacks: int = 0  # plan-worded memories and topics


def histories(cfg, images):
    personas, plans = personas_and_plans(cfg, images)
    dialogues, _ = D.generate_dialogues(cfg, SchemaTeacher(), personas, plans, images, TeacherStats())
    return personas, plans, dialogues


def label_memory(cfg, by_image, persona, plan, dialogue, teacher) -> Labelled:
    """What the memory and personality assets do for one persona, and the replay."""
    semantic, n = M.semantic_targets(dialogue, plan, by_image, teacher.generate(M.semantic_requests(cfg, dialogue, plan)))
    sessions, m = M.session_targets(cfg, persona, dialogue, plan, semantic,
                                    teacher.generate(M.topic_requests(cfg, persona, dialogue, plan)))
    steps, _ = PE.trajectory(cfg, persona, plan, dialogue, teacher.generate(PE.inference_requests(cfg, persona, dialogue)))
    user_data = M.replay_user_data(persona, dialogue, semantic, sessions, steps)
    return Labelled(persona, plan, dialogue, semantic, sessions, steps, user_data, fallbacks=sum((n + m).values()))


def supervise(cfg, images, personas, plans, dialogues, embedder) -> dict[str, Labelled]:
    """What the supervision assets do, persona by persona."""
    teacher = SchemaTeacher()
    retrievers = RT.retrievers(embedder)
    by_image = {i.image_id: i for i in images}
    pools = Pools.of(plans, images)
    prov = {task: provenance(cfg, teacher.model_id, *templates) for task, templates in TASK_TEMPLATES.items()}
    plan_of = {p.persona_id: p for p in plans}
    out = {}
    for persona in personas:
        pid = persona.persona_id
        plan, dialogue = plan_of[pid], next(d for d in dialogues if d.persona_id == pid)
        lab = label_memory(cfg, by_image, persona, plan, dialogue, teacher)
        semantic, sessions, steps, user_data = lab.semantic, lab.sessions, lab.steps, lab.user_data
        specs = A.pair_specs(cfg, persona, plan, dialogue)
        lab.pairs, _ = A.build_pairs(cfg, specs, teacher.generate(A.reply_requests(cfg, specs)))
        if persona.split == "train":
            embedder.embed(R.search_texts(cfg, persona, dialogue, plan, semantic, user_data))
            lab.jobs = R.prepare_jobs(cfg, persona, dialogue, plan, semantic, user_data, pools, by_image, retrievers)
            lab.trajectories = R.build_trajectories(persona, lab.jobs,
                                                    teacher.generate(R.answer_requests(cfg, persona, lab.jobs)))
            agent = E.Agent(persona, dialogue, user_data, {s.turn_index: s for s in steps},
                            cfg.dialogue.session_gap_minutes)
            lab.sft, bad = E.sft_records(agent, semantic, sessions, steps, lab.trajectories, prov)
            assert not bad
            lab.rl = E.rl_records(agent, lab.trajectories, lab.pairs, prov["rl"], cfg.seed)
        out[pid] = lab
    return out


@pytest.fixture(scope="module")
def world(images, text_embedder):
    cfg = load_config("tiny")
    personas, plans, dialogues = histories(cfg, images)
    return cfg, images, (personas, plans, dialogues), supervise(cfg, images, personas, plans, dialogues, text_embedder)


def training(world) -> list[Labelled]:
    return [lab for lab in world[3].values() if lab.persona.split == "train"]


def kept_sft(world):
    cfg = world[0]
    return E.apply_shares([r for lab in training(world) for r in lab.sft], lambda r: E.SHARE_GROUP[r.task],
                          lambda r: f"{r.persona_id}:{r.task}", cfg.supervision.sft_shares, cfg.seed, "sft")


def kept_rl(world):
    cfg = world[0]
    return E.apply_shares([r for lab in training(world) for r in lab.rl], lambda r: r.kind, E.rl_stratum,
                          cfg.supervision.rl_shares, cfg.seed, "rl")


def result(value=None, failure=None) -> TeacherResult:
    return TeacherResult(key="k", tag="t", value=value, failure=failure, attempts=1)


# ---------------------------------------------------------------------------------------------- personality (PEM)


def test_ema_lambda_is_the_papers_cosine_schedule():
    assert PE.ema_lambda(0) == pytest.approx(0.5)
    assert PE.ema_lambda(10) == pytest.approx(0.7 - 0.2 * 0.8090169943749475)
    assert PE.ema_lambda(25) == pytest.approx(0.7)
    assert PE.ema_lambda(50) == pytest.approx(0.9)
    assert PE.ema_lambda(120) == pytest.approx(0.9)


CURRENT = {"openness": 4.0, "conscientiousness": 2.0, "extraversion": 3.0, "agreeableness": 5.0, "neuroticism": 1.0}
INFERRED = {"openness": 5, "conscientiousness": 3, "extraversion": 1, "agreeableness": 3, "neuroticism": 4}


def test_ema_step_with_no_skip_updates_every_trait():
    # m = 25: lambda = 0.7, so p = 0.7 p + 0.3 p'
    updated, skipped = PE.ema_step(CURRENT, INFERRED, 25, "none")
    assert updated == pytest.approx({"openness": 4.3, "conscientiousness": 2.3, "extraversion": 2.4,
                                     "agreeableness": 4.4, "neuroticism": 1.9})
    assert skipped == []


def test_ema_step_per_trait_keeps_the_traits_scored_neutral():
    updated, skipped = PE.ema_step(CURRENT, INFERRED, 25, "per_trait")
    assert updated == pytest.approx({"openness": 4.3, "conscientiousness": 2.0, "extraversion": 2.4,
                                     "agreeableness": 5.0, "neuroticism": 1.9})
    assert skipped == ["conscientiousness", "agreeableness"]


def test_ema_step_all_neutral_skips_only_a_wholly_neutral_turn():
    updated, skipped = PE.ema_step(CURRENT, INFERRED, 25, "all_neutral")
    assert updated == pytest.approx({"openness": 4.3, "conscientiousness": 2.3, "extraversion": 2.4,
                                     "agreeableness": 4.4, "neuroticism": 1.9})
    assert skipped == []
    neutral = dict.fromkeys(BIG_FIVE_TRAITS, 3)
    assert PE.ema_step(CURRENT, neutral, 25, "all_neutral") == (CURRENT, list(BIG_FIVE_TRAITS))
    # the other rules do move towards 3 on a neutral turn (per_trait: not at all)
    assert PE.ema_step(CURRENT, neutral, 25, "per_trait") == (CURRENT, list(BIG_FIVE_TRAITS))
    assert PE.ema_step(CURRENT, neutral, 25, "none")[0]["agreeableness"] == pytest.approx(4.4)


def test_trajectory_starts_neutral_and_counts_unparsed_states_as_neutral(world):
    cfg, _, _, labs = world
    lab = training(world)[0]
    three = Dialogue(persona_id=lab.dialogue.persona_id, split="train", sessions=[Session(
        persona_id=lab.dialogue.persona_id, session_index=0, turns=lab.dialogue.turns[:3])])
    states = [PE.PersonalityDraft(**INFERRED), None, PE.PersonalityDraft(**dict.fromkeys(BIG_FIVE_TRAITS, 1))]
    results = [result(s) if s else result(failure="invalid_json") for s in states]
    steps, fallbacks = PE.trajectory(cfg.model_copy(update={"supervision": cfg.supervision.model_copy(
        update={"personality_skip_rule": "all_neutral"})}), lab.persona, lab.plan, three, results)
    assert fallbacks == 1
    assert [s.inferred_by for s in steps] == ["teacher", "neutral_fallback", "teacher"]
    # m=0: lambda 0.5 from 3.0 -> (3 + 5) / 2 = 4.0 on openness; m=1 neutral, skipped; m=2: lambda(2)
    assert steps[0].ema["openness"] == 4.0 and steps[0].ema["extraversion"] == 2.0
    assert steps[1].ema == steps[0].ema and steps[1].skipped == list(BIG_FIVE_TRAITS)
    lam = 0.7 - 0.2 * math.cos(math.pi * 2 / 50)
    assert steps[2].ema["openness"] == round(lam * 4.0 + (1 - lam) * 1, 4)
    assert steps[2].planned == plan_state(lab.persona, lab.plan, three.turns[2].time).personality


def test_pearson_and_the_per_persona_correlation():
    assert PE.pearson([1, 2, 3], [2, 4, 6]) == 1.0
    assert PE.pearson([1, 2, 3], [3, 2, 1]) == -1.0
    assert PE.pearson([1, 1, 1], [1, 2, 3]) is None
    planned = [dict(zip(BIG_FIVE_TRAITS, (4.5, 2.0, 3.0, 1.5, 3.5))), dict(zip(BIG_FIVE_TRAITS, (4.5, 2.0, 3.0, 2.5, 3.5)))]
    inferred = [dict(zip(BIG_FIVE_TRAITS, (5, 2, 3, 1, 4))), dict(zip(BIG_FIVE_TRAITS, (4, 2, 3, 3, 4)))]
    steps = [PersonalityStep(persona_id="p", turn_index=k, inferred=i, inferred_by="teacher", ema=p, skipped=[],
                             planned=p) for k, (i, p) in enumerate(zip(inferred, planned))]
    c = PE.correlation("p", steps)
    assert c.drift_trait == "agreeableness" and c.drift_r == 1.0
    assert c.ema_r == 1.0 and c.final_ema_mae == 0.0
    xs = [v for i in inferred for v in i.values()]
    ys = [v for p in planned for v in p.values()]
    assert c.inferred_r == PE.pearson(xs, ys) and c.inferred_r > 0.9


# ---------------------------------------------------------------------------------------------- memory targets


def test_every_turn_gets_the_plans_decision_and_remembered_facts_keep_their_phrases(world):
    _, images, _, labs = world
    labels = {i.image_id: i.labels for i in images}
    for lab in labs.values():
        items = {i.item_id: i for i in lab.plan.items}
        assert [s.turn_index for s in lab.semantic] == [t.turn_index for t in lab.dialogue.turns]
        for turn, mem in zip(lab.dialogue.turns, lab.semantic):
            told = [items[i] for i in turn.realizes if i in items]
            assert mem.decision == bool(told)
            assert bool(mem.content) == mem.decision and bool(mem.keywords) == mem.decision
            if not told:
                continue
            assert mem.item_id == told[0].item_id
            assert all(contains_phrase(mem.content, p) for p in PL.realization(told[0]).phrases)
            if turn.image_id:
                cls = re.search(r"\(Image Object: ([^)]+)\)", mem.content)
                assert cls and cls.group(1) in labels[turn.image_id], mem.content
        assert M.target_problems(lab.dialogue, lab.plan, lab.semantic, lab.sessions) == []


def test_wording_that_drops_the_fact_falls_back_to_the_plan_and_is_counted(world):
    cfg, images, (personas, plans, dialogues), _ = world
    loose = cfg.model_copy(update={"supervision": cfg.supervision.model_copy(update={"constrain_phrases": False})})
    lab = training(world)[0]
    unfaithful = SchemaTeacher(override=lambda req: json.dumps(
        {"reason": "It matters.", "content": "The user said something.", "keywords": "something"})
        if req.tag.startswith("semantic:") and "content" in req.schema.model_fields else None)
    semantic, fallbacks = M.semantic_targets(lab.dialogue, lab.plan, {i.image_id: i for i in images},
                                             unfaithful.generate(M.semantic_requests(loose, lab.dialogue, lab.plan)))
    facts = [s for s in semantic if s.decision]
    assert facts and fallbacks == {"missing_phrase": len(facts)}
    items = {i.item_id: i for i in lab.plan.items}
    for s in facts:
        told = PL.realization(items[s.item_id])
        assert s.wording == "plan" and s.keywords == ", ".join(told.phrases)
        if items[s.item_id].kind == "photo_share":
            assert "(Image Object: " in s.content
        else:
            assert s.content == told.statement


def test_wording_that_parrots_the_prompt_falls_back_and_is_counted(world):
    cfg, images, _, _ = world
    lab = training(world)[0]
    assert M.echoes_prompt("semantic_memory", "one sentence on why this is worth keeping in long-term memory;")
    assert M.echoes_prompt("episodic_topic", "x", "Write a topic summary of this part in the third person")
    assert not M.echoes_prompt("semantic_memory", "The user keeps a journal every morning before breakfast.")
    echo = "Two to four comma-separated keywords someone would search for."
    parrot = SchemaTeacher(override=lambda req: json.dumps({"reason": echo}) if req.tag.startswith("semantic:")
                           and "content" not in req.schema.model_fields else None)
    semantic, fallbacks = M.semantic_targets(lab.dialogue, lab.plan, {i.image_id: i for i in images},
                                             parrot.generate(M.semantic_requests(cfg, lab.dialogue, lab.plan)))
    small_talk = [s for s in semantic if not s.decision]
    assert small_talk and fallbacks["echoes_prompt"] == len(small_talk)
    assert all(s.wording == "plan" and s.reason != echo for s in small_talk)
    assert R.malformed("I should look at the memory about Maya.", "She is your sister}")
    assert R.malformed("Maya", "She is your sister.")
    assert R.malformed("Think in one sentence about which part answers the question.", "She is your sister.")
    assert not R.malformed("The memory says Maya is the user's sister.", "Maya is your sister.")


def test_image_objects_are_named_with_the_users_naming_and_the_images_class(images):
    image = next(i for i in images if len(i.labels) > 1)
    naming = image.labels[1].upper()
    content = M.image_object(f"The user shared a photo of the {naming} for later.", naming, image)
    assert content == f"The user shared a photo of the {naming} (Image Object: {image.labels[1]}) for later."
    assert M.image_object("The user shared a photo.", "kite", image).endswith(f"kite (Image Object: {image.labels[0]}).")


def test_episodic_topics_cover_every_round_once_and_split_facts_from_small_talk(world):
    topics_per_session = []
    for lab in world[3].values():
        items = {i.item_id: i for i in lab.plan.items}
        for session, target in zip(lab.dialogue.sessions, lab.sessions, strict=True):
            rounds = sorted(r for t in target.episodic for r in t.source_dialog_indices)
            assert rounds == list(range(len(session.turns)))
            assert len(target.topic_wording) == len(target.episodic)
            topics_per_session.append(len(target.episodic))
            for topic in target.episodic:
                kinds = {bool(session.turns[r].realizes) for r in topic.source_dialog_indices}
                assert len(kinds) == 1  # small talk never shares a topic with told facts
                themes = {M.theme(items.get(session.turns[r].realizes[0]) if session.turns[r].realizes else None,
                                  set()) for r in topic.source_dialog_indices}
                assert len({t.split(":")[0] for t in themes} - {"interests"}) <= 1
    assert max(topics_per_session) > 1


def item(kind, subject, value, n, **kw) -> PlanItem:
    return PlanItem(item_id=f"i_{n}", persona_id="p", kind=kind, time=f"2024-05-0{n} 10:00", subject=subject,
                    value=value, **kw)


def test_procedural_memory_keeps_the_latest_five_habits_goals_and_skills():
    run = item("routine", "every Monday", "go running", 1)
    spanish = item("goal", "learn Spanish", "started", 2)
    chess = item("skill", "chess", "beginner", 3)
    told = [(run, "The user runs every Monday."), (spanish, "The user wants to learn Spanish."),
            (chess, "The user plays chess at beginner level."), (item("dislike", "dislike", "horror films", 4), "x")]
    state = M.update_procedural({}, told)
    assert state == {"routine_go_running": "The user runs every Monday.",
                     "goal_learn_spanish": "The user wants to learn Spanish.",
                     "skill_chess": "The user plays chess at beginner level."}
    progress = item("goal_update", "learn Spanish", "making progress", 5, cause_item_id=spanish.item_id)
    better = item("skill_update", "chess", "intermediate", 6, cause_item_id=chess.item_id)
    state = M.update_procedural(state, [(progress, "The user is making progress in Spanish."),
                                        (better, "The user reached intermediate chess.")])
    assert list(state) == ["routine_go_running", "goal_learn_spanish", "skill_chess"]
    assert state["goal_learn_spanish"] == "The user is making progress in Spanish."
    assert state["skill_chess"] == "The user reached intermediate chess."
    done = item("goal_update", "learn Spanish", "finished", 7, cause_item_id=spanish.item_id)
    state = M.update_procedural(state, [(done, "The user finished Spanish.")])
    assert "goal_learn_spanish" not in state
    many = [(item("routine", "daily", f"habit number {k}", 8), f"Habit {k}.") for k in range(6)]
    capped = M.update_procedural(state, many)
    assert list(capped.values()) == [f"Habit {k}." for k in range(1, 6)]


def test_core_profile_applies_shifts_dislikes_people_and_recent_matters(world):
    lab = training(world)[0]
    profile = lab.persona.profile.to_spec()
    old = profile["preferences"][0]
    told = [item("preference_shift", "hobby", "pottery", 1, previous_value=old),
            item("dislike", "dislike", "horror films", 2), item("relationship", "Maya", "sister", 3),
            item("event", "event", "went to a jazz concert", 4, person="Maya"),
            item("style", "planning", "by improvising as I go", 5)]
    updated = M.update_profile(profile, told, "2024-05-05 10:30", 60)
    assert old not in updated["preferences"] and updated["preferences"][-1] == "pottery"
    assert updated["dislikes"] == ["horror films"] and updated["people"] == {"Maya": "sister"}
    assert updated["recent matters"][-1] == "went to a jazz concert with Maya"
    assert len(updated["recent matters"]) <= 3
    assert updated["style"] == {"planning": "by improvising as I go"}
    assert updated["update time"] == "2024-05-05 11:30" and list(updated)[-1] == "update time"
    assert {k: updated[k] for k in ("name", "gender", "age")} == {k: profile[k] for k in ("name", "gender", "age")}


def test_replaying_one_history_twice_gives_byte_identical_user_data(world):
    cfg, images, _, labs = world
    by_image = {i.image_id: i for i in images}
    for pid, lab in labs.items():
        again = label_memory(cfg, by_image, lab.persona, lab.plan, lab.dialogue, SchemaTeacher())
        assert dumps(again.user_data) == dumps(lab.user_data)
        assert dumps(M.replay_user_data(lab.persona, lab.dialogue, lab.semantic, lab.sessions, lab.steps)) == \
            dumps(lab.user_data)


def test_the_replayed_database_has_the_spec_shape_turn_by_turn(world):
    for lab in world[3].values():
        data = lab.user_data
        assert data["current_interactions"] == len(lab.dialogue.turns)
        assert data["imgs"] == [t.image_id for t in lab.dialogue.turns if t.image_id]
        assert data["big_five_personality"] == lab.steps[-1].ema
        assert data["sessions"][0]["profile"] == lab.persona.profile.to_spec()
        assert data["sessions"][0]["ProceduralMemory"] == {}
        for k, (session, entry) in enumerate(zip(lab.dialogue.sessions, data["sessions"], strict=True)):
            assert len(entry["interactions"]) == len(entry["semantic_memory"]) == len(entry["big_five_personality"])
            assert [i[0]["time"] for i in entry["interactions"]] == [t.time for t in session.turns]
            if k:  # core and procedural memory during a session are those written when the previous one closed
                assert entry["profile"] == lab.sessions[k - 1].profile
                assert entry["ProceduralMemory"] == lab.sessions[k - 1].procedural
        assert data["profile"] == lab.sessions[-1].profile


def test_the_database_at_a_time_holds_only_memories_older_than_the_window(world):
    for lab in world[3].values():
        turns = lab.dialogue.turns
        assert M.visible_memories(lab.user_data, turns[0].time, 60) == []
        for turn in turns:
            cutoff = parse_time(turn.time) - timedelta(minutes=60)
            for e in M.visible_memories(lab.user_data, turn.time, 60):
                assert all(parse_time(t) < cutoff for t in e.times)
                assert all(turns[i].time < turn.time for i in e.turns)
        end = M.visible_memories(lab.user_data, "2099-01-01 00:00", 60)
        assert {e.turns[0] for e in end if e.kind == "semantic"} == {s.turn_index for s in lab.semantic if s.decision}
        assert sum(e.kind == "episodic" for e in end) == sum(len(s.episodic) for s in lab.sessions)
        assert {e.shown for e in end if e.kind == "procedural"} == set(lab.sessions[-1].procedural.values())


# ---------------------------------------------------------------------------------------------- retrieval


def hand_db() -> dict:
    def turn(t, q):
        return [{"time": t, "query": q}, {"response": "ok"}, [], []]
    mem = lambda c, k: {"reason": "r", "decision": bool(c), "content": c, "keywords": k}  # noqa: E731
    return {"ProceduralMemory": {"routine_swim": "The user swims on Mondays."}, "sessions": [
        {"profile": {}, "ProceduralMemory": {},
         "interactions": [turn("2024-05-01 10:00", "a"), turn("2024-05-01 10:05", "b"), turn("2024-05-01 10:09", "c")],
         "semantic_memory": [mem("Maya is the user's sister.", "Maya, sister"), mem("", ""),
                             mem("The user went to a jazz concert.", "jazz, concert")],
         "EpisodicMemory": [{"topic_summary": "Ann talked about Maya.", "keywords": "Maya", "source_dialog_indices": [0]},
                            {"topic_summary": "Ann chatted.", "keywords": "weather", "source_dialog_indices": [1, 2]}]},
        {"profile": {}, "ProceduralMemory": {"routine_swim": "The user swims on Mondays."},
         "interactions": [turn("2024-05-03 18:00", "d")],
         "semantic_memory": [mem("The user dislikes horror films.", "horror films, dislike")],
         "EpisodicMemory": [{"topic_summary": "Ann said she dislikes horror.", "keywords": "horror",
                             "source_dialog_indices": [0]}]}]}


def test_keyword_retrieval_ranks_by_keywords_keeps_time_ranges_and_never_repeats():
    db = RT.database_at(hand_db(), "2024-05-02 09:00", 60, 2)
    assert db.retrievable == {"semantic:0:0", "semantic:0:2", "episodic:0:0", "episodic:0:1", "procedural:routine_swim"}
    search = RT.KeywordRetriever().search
    hits = search(db, "q", RetrieveCall(keywords="sister Maya"), set())
    assert [e.key for e in hits] == ["semantic:0:0", "episodic:0:0"]
    again = search(db, "q", RetrieveCall(keywords="sister Maya"), {e.key for e in hits})
    assert again == []
    windowed = search(db, "q", RetrieveCall(keywords="anything", start_time="2024-05-01 10:08",
                                            end_time="2024-05-01 23:59"), set())
    assert [e.key for e in windowed] == ["semantic:0:2", "episodic:0:1"]
    assert [e.key for e in search(db, "q", RetrieveCall(keywords="swims"), set())] == ["procedural:routine_swim"]
    later = M.visible_memories(hand_db(), "2024-05-03 18:30", 60)
    assert "semantic:1:0" not in {e.key for e in later}  # inside the short-term window


# ---------------------------------------------------------------------------------------------- reasoning


def test_every_trajectory_parses_and_retrieves_only_what_the_database_held_at_probe_time(world):
    trajectories = [t for lab in training(world) for t in lab.trajectories]
    assert trajectories
    for lab in training(world):
        turns = lab.dialogue.turns
        for traj in lab.trajectories:
            cutoff = parse_time(traj.probe_time) - timedelta(minutes=60)
            held = {e.key: e for e in M.visible_memories(lab.user_data, traj.probe_time, 60)}
            for step in traj.steps:
                assert FORMAT.match(R.render_step(step))
                for key in step.retrieved:
                    assert key in held
                    assert all(turns[i].turn_index <= traj.probe_turn_index for i in held[key].turns)
                    assert all(parse_time(t) < cutoff for t in held[key].times)
            assert R.trajectory_problems(traj, lab.user_data, 60) == []


def test_probes_cover_many_kinds_both_modes_and_answers_state_the_plans_gold(world):
    verified = [(lab, t) for lab in training(world) for t in lab.trajectories if t.verdict == "verified"]
    assert len({t.question_kind for _, t in verified}) >= 6
    assert {t.question_kind for _, t in verified} <= set(R.QUESTION_KINDS)
    assert set(R.ANSWER_TYPES) == set(R.QUESTION_KINDS)
    assert {t.mode for _, t in verified} == {"direct", "retrieve"}
    for lab, t in verified:
        turns = lab.dialogue.turns
        evidence = turns[t.evidence_turns[0]]
        age = parse_time(t.probe_time) - parse_time(evidence.time)
        assert t.gold_item_id in evidence.realizes and evidence.turn_index <= t.probe_turn_index
        assert contains_phrase(t.steps[-1].answer, t.gold_value)
        if t.mode == "direct":
            assert [s.action for s in t.steps] == ["answer"] and age <= timedelta(minutes=60)
        else:
            assert t.steps[0].action == "retrieve" and age > timedelta(minutes=60)
            found = {i for s in t.steps for k in s.retrieved
                     for i in next(e.turns for e in M.visible_memories(lab.user_data, t.probe_time, 60) if e.key == k)}
            assert evidence.turn_index in found
        assert len(t.distractors) in (0, 3) and t.gold_value not in t.distractors


def test_trajectories_retrieve_with_embeddings_by_default_and_both_retrievers_score_the_same_probes(world, tmp_path):
    cfg, images, _, _ = world
    assert cfg.supervision.retriever == "embedding"
    lab = training(world)[0]
    searched = [j for j in lab.jobs if j.probe.mode == "retrieve"]
    assert searched and all(j.retriever == "embedding" and j.found == j.answer_hits["embedding"] for j in searched)
    assert {t.retriever for t in lab.trajectories} == {"embedding"}
    assert all(set(t.answer_hits) == set(RT.RETRIEVERS) for t in lab.trajectories if t.mode == "retrieve")
    args = (lab.persona, lab.dialogue, lab.plan, lab.semantic, lab.user_data, Pools.of(world[2][1], images),
            {i.image_id: i for i in images})
    # a fresh embedder, no batched warm-up (each search encodes what it lacks): the very same trajectories
    fresh = R.prepare_jobs(cfg, *args, RT.retrievers(TextEmbedder(tmp_path / "embeddings.sqlite")))
    assert [(j.steps, j.context, j.answer_hits) for j in fresh] == [(j.steps, j.context, j.answer_hits) for j in lab.jobs]
    keyword = cfg.model_copy(update={"supervision": cfg.supervision.model_copy(update={"retriever": "keyword"})})
    by_keywords = R.prepare_jobs(keyword, *args, RT.retrievers(TextEmbedder(tmp_path / "embeddings.sqlite")))
    assert [j.answer_hits for j in by_keywords] == [j.answer_hits for j in lab.jobs]
    assert all(j.retriever == "keyword" and j.found == j.answer_hits["keyword"] for j in by_keywords
               if j.probe.mode == "retrieve")


def test_the_gold_is_the_latest_state_at_probe_time(world):
    turn = lambda k, item_id: Turn(persona_id="p", session_index=0, turn_index=k, time=f"2024-05-0{k + 1} 10:00",  # noqa: E731
                                     user="u", assistant="a", realizes=[item_id])
    goal = item("goal", "learn Spanish", "started", 1)
    update = item("goal_update", "learn Spanish", "gave up", 2, cause_item_id=goal.item_id)
    pref = item("preference", "hobby", "chess", 3)
    shift = item("preference_shift", "hobby", "pottery", 4, previous_value="chess")
    told = [(turn(0, goal.item_id), goal), (turn(1, update.item_id), update), (turn(2, pref.item_id), pref),
            (turn(3, shift.item_id), shift)]
    persona = world[2][0][0]
    state_after = lambda k: replay(persona, [(i, t.time[:10]) for t, i in told[:k + 1]])  # noqa: E731
    early = {q.kind: q for q in R.questions_at(told, told[0][0], "2024-05-01 10:05", state_after(0))}
    assert early["open_goal"].gold == "learn Spanish" and "goal_status" not in early
    late = {q.kind: q for q in R.questions_at(told, told[3][0], "2024-05-04 10:05", state_after(3))}
    assert late["goal_status"].gold == "gave up" and "open_goal" not in late
    assert late["latest_preference"].gold == "pottery"


def test_multiple_choice_offers_only_options_that_could_be_gold(world):
    """Every option comes from the gold's own answer type; goal outcomes have three values, so their probes get no
    multiple choice rather than a fourth option that is never right; the four skill levels make one."""
    pools = Pools.of(world[2][1], world[1])
    plan = world[2][1][0]
    turn = Turn(persona_id="p", session_index=0, turn_index=0, time="2024-05-01 10:00", user="u", assistant="a")
    rng = random.Random(0)
    q = R.Question("goal_status", "q?", "gave up", item("goal_update", "x", "gave up", 1), turn, "x", "x", "x")
    assert sorted(pools["goal state"]) == sorted(GOAL_OUTCOMES)
    assert R.distractors_for(q, plan, pools, set(), {}, rng) == []
    q = R.Question("skill_level", "q?", "advanced", item("skill_update", "x", "advanced", 1, previous_value="beginner"),
                   turn, "x", "x", "x")
    assert R.distractors_for(q, plan, pools, set(), {}, rng)[0] == "beginner"  # the outdated level first
    assert sorted(["advanced", *R.distractors_for(q, plan, pools, set(), {}, rng)]) == sorted(SKILL_LEVELS)
    q = R.Question("relationship", "q?", "sister", item("relationship", "Ana", "sister", 1), turn, "x", "x", "x")
    options = R.distractors_for(q, plan, pools, set(), {}, rng)
    assert len(options) == 3 and set(options) <= set(pools["relation"]) and "sister" not in options


def test_a_probe_whose_evidence_is_not_in_memory_is_not_answered(world, text_embedder):
    cfg = world[0]
    lab = training(world)[0]
    job = next(j for j in lab.jobs if j.probe.mode == "retrieve")
    evidence = job.probe.question.evidence
    data = json.loads(dumps(lab.user_data))
    first = sum(len(s.turns) for s in lab.dialogue.sessions[:evidence.session_index])
    session = data["sessions"][evidence.session_index]
    session["semantic_memory"][evidence.turn_index - first]["decision"] = False
    session["EpisodicMemory"] = [t for t in session["EpisodicMemory"]
                                 if evidence.turn_index - first not in t["source_dialog_indices"]]
    blind = R.run_probe(cfg, lab.persona, lab.dialogue, job.probe, data, {s.turn_index: s for s in lab.semantic}, [],
                        RT.retrievers(text_embedder))
    assert not blind.found
    assert R.answer_requests(cfg, lab.persona, [blind]) == []
    [traj] = R.build_trajectories(lab.persona, [blind], [])
    assert traj.verdict == "evidence_not_retrieved" and traj.answer_hits == {"embedding": False, "keyword": False}
    assert 1 <= len(traj.steps) <= cfg.supervision.max_retrieval_steps


def test_trajectory_checks_catch_future_leakage_and_unsearched_or_unanswered_steps(world):
    lab = training(world)[0]
    traj = next(t for t in lab.trajectories if t.mode == "retrieve")
    future = M.visible_memories(lab.user_data, "2099-01-01 00:00", 60)
    leaked = next(e.key for e in future if e.kind == "semantic" and e.turns[0] > traj.probe_turn_index)
    step = traj.steps[0].model_copy(update={"retrieved": [*traj.steps[0].retrieved, leaked]})
    bad = traj.model_copy(update={"steps": [step, *traj.steps[1:]]})
    assert any(leaked in p for p in R.trajectory_problems(bad, lab.user_data, 60))
    unsearched = traj.model_copy(update={"steps": [ReasoningStep(think="I know it.", action="answer", answer="y")]})
    assert R.trajectory_problems(unsearched, lab.user_data, 60) == [f"{traj.probe_id}: mode retrieve but no search"]
    unanswered = traj.model_copy(update={"steps": traj.steps[:1]})
    assert R.trajectory_problems(unanswered, lab.user_data, 60) == [f"{traj.probe_id}: verified without an answer"]


def test_a_finished_training_history_has_its_reasoning_asked_while_others_are_written(images, text_embedder):
    """With every asset it depends on in the run, the dialogues step asks a finished training history's reasoning
    answers once its labels are answered: the very requests the reasoning stage builds from those labels and the
    database replayed from them. Without one of those assets none is asked ahead; where preparing it fails, the
    history is named and the dialogues go on."""
    cfg = load_config("tiny")
    personas, plans = personas_and_plans(cfg, images)
    every = ["memory_targets", "personality_trajectories", "alignment_pairs", "memory_db", "reasoning_trajectories"]

    def written(assets: list[str], embedder=text_embedder, teacher_kind=SchemaTeacher
                ) -> tuple[SchemaTeacher, list[Dialogue], F.Prefetch]:
        teacher = teacher_kind()
        prefetch = F.Prefetch(cfg, teacher, assets, TeacherStats(), F.ReasoningAhead(personas, plans, images, embedder))

        async def write():
            try:
                dialogues, _ = await D.write_dialogues(cfg, teacher, personas, plans, images, TeacherStats(),
                                                       session_done=prefetch.session_done)
                await prefetch.wait()
                return dialogues
            finally:
                prefetch.close()

        return teacher, teacher.run(write()), prefetch

    def answers(teacher: SchemaTeacher) -> list:
        return [r for r in teacher.requests if r.tag.startswith("answer:")]

    teacher, dialogues, prefetch = written(every)
    by_image, plan_of = {i.image_id: i for i in images}, {p.persona_id: p for p in plans}
    expected = []
    for persona, dialogue in zip(sorted(personas, key=lambda p: p.persona_id), dialogues):
        if persona.split == "train":
            plan = plan_of[persona.persona_id]
            lab = label_memory(cfg, by_image, persona, plan, dialogue, SchemaTeacher())
            pools = Pools.of([plan_of[p.persona_id] for p in personas if p.shard == persona.shard], images)
            expected += R.answer_requests(cfg, persona, R.prepare_jobs(
                cfg, persona, dialogue, plan, lab.semantic, lab.user_data, pools, by_image, RT.retrievers(text_embedder)))
    assert expected and sorted(request_key("m", r) for r in answers(teacher)) == sorted(
        request_key("m", r) for r in expected)
    assert not prefetch.not_ahead
    for missing in ("personality_trajectories", "memory_db"):
        assert not answers(written([a for a in every if a != missing])[0])

    class Broken(TextEmbedder):
        def embed(self, texts):
            raise RuntimeError("no model")

    teacher, again, prefetch = written(every, Broken())
    assert not answers(teacher) and again == dialogues
    assert prefetch.not_ahead == {p.persona_id: "RuntimeError: no model" for p in personas if p.split == "train"}

    # the embedding model loads as soon as labels come back anew, once; never when the cache answered them all
    class Counting(Broken):
        loads = 0

        def warm(self):
            self.loads += 1

    class Cached(SchemaTeacher):
        async def agenerate(self, requests, stats=None, priority=0):
            return [dataclasses.replace(r, cached=True) for r in await super().agenerate(requests, stats, priority)]

    for teacher_kind, loads in ((SchemaTeacher, 1), (Cached, 0)):
        counting = Counting()
        written(every, counting, teacher_kind)
        assert counting.loads == loads


def test_labels_a_reasoning_history_waits_for_go_first_the_shortest_first(images, text_embedder):
    """Every label goes behind every history's own requests; a training history's labels (its reasoning waits for
    them) before a benchmark history's, and a shorter training history's before a longer one's."""
    cfg = load_config("tiny")
    personas, plans = personas_and_plans(cfg, images)
    prefetch = F.Prefetch(cfg, SchemaTeacher(), ["memory_targets", "personality_trajectories", "memory_db",
                                                  "reasoning_trajectories"], TeacherStats(),
                          F.ReasoningAhead(personas, plans, images, text_embedder))
    plan_of = {p.persona_id: p for p in plans}
    turns = {pid: sum(s.n_turns for s in plan.sessions) for pid, plan in plan_of.items()}
    ranked = sorted(personas, key=lambda p: prefetch.priority(p, plan_of[p.persona_id]))
    trained = sum(p.split == "train" for p in personas)
    assert 0 < trained < len(personas) and all(p.split == "train" for p in ranked[:trained])
    assert [turns[p.persona_id] for p in ranked[:trained]] == sorted(turns[p.persona_id] for p in ranked[:trained])
    assert min(prefetch.priority(p, plan_of[p.persona_id]) for p in personas) > 0  # histories' own: 0 or below


# ---------------------------------------------------------------------------------------------- alignment


def test_alignment_pairs_fit_the_personality_at_query_time_and_reject_half_generic_half_other(world):
    cfg = world[0]
    pairs = [p for lab in world[3].values() for p in lab.pairs]
    kinds = [p.rejected_kind for p in pairs]
    assert kinds.count("generic") == kinds.count("other_profile")
    for lab in world[3].values():
        for p in lab.pairs:
            assert p.chosen_profile == plan_state(lab.persona, lab.plan, p.query_time).personality
            assert p.query_time > lab.dialogue.turns[p.after_turn_index].time
            if p.rejected_kind == "other_profile":
                for t in BIG_FIVE_TRAITS:
                    assert (p.rejected_profile[t] - 3) * (p.chosen_profile[t] - 3) <= 0
                    assert abs(p.rejected_profile[t] - 3) >= 0.5
    lab = training(world)[0]
    specs = A.pair_specs(cfg, lab.persona, lab.plan, lab.dialogue)
    requests = A.reply_requests(cfg, specs)
    texts = [r.messages[-1].content for r in requests]
    for s, chosen, rejected in zip(specs, texts[::2], texts[1::2]):
        interests = ", ".join(s.interests)
        assert interests in chosen and interests in rejected  # naming a listed interest singles out no reply
        assert ("does not adapt" in rejected) == (s.kind == "generic")


def test_a_pair_that_length_names_or_sameness_gives_away_is_quarantined():
    assert A.pair_problem("Sure, here is a plan.", "sure here is a plan", 2.0) == "identical_replies"
    assert A.pair_problem("With your high openness, try this.", "Try this one now.", 2.0) == "names_a_trait"
    assert A.pair_problem("Short one.", "A much, much longer reply that goes on and on.", 2.0) == "length_gives_it_away"
    assert A.pair_problem("Let's plan a calm walk.", "Go to a loud party!", 2.0) is None


# ---------------------------------------------------------------------------------------------- exports


def test_every_training_persona_yields_every_sft_task_type(world):
    kept = kept_sft(world)
    assert E.missing_tasks(kept, [lab.persona.persona_id for lab in training(world)]) == {}
    assert E.missing_tasks(kept, ["nobody"]) == {"nobody": sorted(E.SHARE_GROUP)}


def test_each_sft_records_image_tokens_equal_its_image_list(world):
    records = [r for lab in training(world) for r in lab.sft]
    assert any(r.image for r in records) and any(not r.image for r in records)
    for r in records:
        assert sum(c["value"].count("<image>") for c in r.conversations) == len(r.image)
    for r in [r for lab in training(world) for r in lab.rl]:
        assert sum(m["content"].count("<image>") for m in r.messages) == len(r.images)
    assert E.export_problems(records, [r for lab in training(world) for r in lab.rl]) == []


def test_a_literal_image_tag_in_text_does_not_become_an_image_token(world):
    lab = training(world)[0]
    turns = [t.model_copy(update={"assistant": t.assistant + " <image>"}) for t in lab.dialogue.turns]
    sessions = [Session(persona_id=s.persona_id, session_index=s.session_index,
                        turns=[t for t in turns if t.session_index == s.session_index]) for s in lab.dialogue.sessions]
    agent = E.Agent(lab.persona, Dialogue(persona_id=lab.dialogue.persona_id, split="train", sessions=sessions),
                    lab.user_data, {s.turn_index: s for s in lab.steps}, 60)
    records = E.memory_records(agent, lab.semantic, lab.sessions, lab.steps, {t: lab.sft[0].provenance for t in E.SHARE_GROUP})
    assert not E.export_problems(records, [])


def test_sft_conversations_alternate_and_reasoning_replies_follow_the_format(world):
    for r in kept_sft(world):
        assert [c["from"] for c in r.conversations] == ["human", "gpt"] * (len(r.conversations) // 2)
        if r.task == "reasoning":
            for c in r.conversations[1::2]:
                assert FORMAT.match(c["value"])
            assert r.conversations[-1]["value"].endswith("</answer>")
            for human, gpt in zip(r.conversations[2::2], r.conversations[1::2]):
                assert "<retrieve>" in gpt["value"] and human["value"].startswith("Retrieved Procedural Memory")
    semantic = next(r for r in kept_sft(world) if r.task == "semantic_memory")
    lines = semantic.conversations[1]["value"].splitlines()
    assert [line.split(":")[0] for line in lines] == ['"reason"', '"decision"', '"content"', '"keywords"']


def test_shares_follow_the_configuration(world):
    cfg = world[0]
    for kept, shares, group in ((kept_sft(world), cfg.supervision.sft_shares, lambda r: E.SHARE_GROUP[r.task]),
                                (kept_rl(world), cfg.supervision.rl_shares, lambda r: r.kind)):
        achieved = E.achieved_shares(kept, group)
        for g, share in shares.items():
            assert abs(achieved.get(g, 0) - share) <= 1 / len(kept) + 1e-9, (g, achieved)
    records = [r for lab in training(world) for r in lab.sft]
    only_memory = E.apply_shares(records, lambda r: E.SHARE_GROUP[r.task], lambda r: r.task,
                                 {"reasoning": 0.0, "memory": 1.0, "personality": 0.0}, 0, "sft")
    assert {E.SHARE_GROUP[r.task] for r in only_memory} == {"memory"}
    assert len(only_memory) == sum(E.SHARE_GROUP[r.task] == "memory" for r in records)


def test_rl_records_are_ms_swift_messages_with_verifiable_solutions(world):
    rl = [r for lab in training(world) for r in lab.rl]
    assert {r.kind for r in rl} == {"multiple_choice", "binary", "open_qa"}
    trajectories = {t.probe_id: t for lab in training(world) for t in lab.trajectories}
    letters = []
    for r in rl:
        assert [m["role"] for m in r.messages] == ["user", "assistant"]
        assert r.messages[0]["content"].startswith("You are a personalized assistant")
        if r.kind == "multiple_choice":
            options = dict(re.findall(r"\n(\([a-d]\))\. ([^\n]*)", r.messages[0]["content"]))
            assert len(options) == 4 and r.solution == r.messages[1]["content"]
            gold = options[r.solution]
            assert any(t.gold_value == gold for t in trajectories.values())
            letters.append(r.solution)
        elif r.kind == "binary":
            assert r.solution in ("(a)", "(b)") and "Evaluate the following response" in r.messages[0]["content"]
        else:
            assert contains_phrase(r.messages[1]["content"], r.solution)
    assert len(set(letters)) >= min(4, len(letters))
    assert sum(r.kind == "binary" and r.solution == "(a)" for r in rl) == sum(r.kind == "binary" and r.solution == "(b)"
                                                                            for r in rl)


def test_every_row_carries_provenance_with_the_skip_rule(world):
    cfg = world[0]
    rows = [r for lab in training(world) for r in lab.sft + lab.rl]
    assert {r.provenance.personality_skip_rule for r in rows} == {cfg.supervision.personality_skip_rule}
    reasoning = next(r for r in rows if getattr(r, "task", None) == "reasoning")
    assert "reasoning_answer.v2.j2" in reasoning.provenance.prompt_templates
    assert all(r.provenance.teacher_model == "schema-teacher" and r.provenance.seed == cfg.seed for r in rows)


# ---------------------------------------------------------------------------------------------- asset checks


@pytest.fixture
def database(world, tmp_path):
    """The tables the supervision checks read, written as the assets write them, and the checks' store resource."""
    cfg, images, (personas, plans, dialogues), labs = world
    settings = FactoryConfig(preset="tiny", output_dir=str(tmp_path))
    shard_of = {p.persona_id: p.shard for p in personas}
    batch = Batch("world", tuple(sorted(set(shard_of.values()))))
    batch.add(CAT.PERSONAS, personas, shard_of=shard_of)
    batch.add(CAT.TIMELINE_PLANS, plans, shard_of=shard_of)
    batch.add(CAT.DIALOGUES, dialogues, shard_of=shard_of)
    batch.add(CAT.IMAGE_POOL, images)
    batch.add(CAT.SEMANTIC_MEMORY_TARGETS, [r for lab in labs.values() for r in lab.semantic], shard_of=shard_of)
    batch.add(CAT.SESSION_MEMORY_TARGETS, [r for lab in labs.values() for r in lab.sessions], shard_of=shard_of)
    batch.add(CAT.PERSONALITY_STEPS, [r for lab in labs.values() for r in lab.steps], shard_of=shard_of)
    batch.add(CAT.REASONING_TRAJECTORIES, [r for lab in labs.values() for r in lab.trajectories], shard_of=shard_of)
    batch.add(CAT.PERSONALITY_CORRELATIONS, [PE.correlation(pid, lab.steps) for pid, lab in labs.items()],
              shard_of=shard_of)
    batch.add(CAT.SFT_RECORDS, kept_sft(world), shard_of=shard_of)
    batch.add(CAT.RL_RECORDS, kept_rl(world), shard_of=shard_of)
    batch.add(CAT.MEMORY_DB, [(pid, lab.persona.split, dumps(lab.user_data)) for pid, lab in labs.items()],
              shard_of=shard_of)
    DuckDBStore(tmp_path / "pipeline.duckdb").commit(batch)
    return settings, batch.partitions


def run_check(name: str, settings: FactoryConfig, shards: tuple[str, ...]) -> dg.AssetCheckResult:
    """One supervision check, invoked directly on a run covering these shards."""
    checks = {c.check_specs_by_output_name[o].name: c for c in supervision_checks(persona_shards(settings.load()))
              for o in c.check_specs_by_output_name}
    context = dg.build_op_context(partition_key_range=dg.PartitionKeyRange(shards[0], shards[-1]))
    kwargs = {"settings": settings} if name == "trajectories_parse_without_leakage" else {}
    return checks[name](context, store=StoreResource(settings=settings), **kwargs)


def test_the_supervision_checks_pass_on_good_targets_and_fail_on_broken_ones(database):
    settings, shards = database
    for name in ("memory_targets_follow_the_plan", "memory_db_replays_identically",
                 "trajectories_parse_without_leakage", "training_records_are_well_formed",
                 "every_training_persona_has_every_task"):
        assert run_check(name, settings, shards).passed, name
    report = run_check("personality_follows_the_plan", settings, shards)
    with DuckDBStore(settings.load().duckdb_path).reader() as con:
        assert set(report.metadata["per_persona"].value) == {
            r[0] for r in con.execute("SELECT persona_id FROM personas").fetchall()}
        con.execute("UPDATE session_memory_targets SET record = json_merge_patch(record, "
                    "'{\"episodic\": []}') WHERE rowid = 0")
        con.execute("UPDATE memory_db SET user_data = json_merge_patch(user_data, '{\"current_interactions\": 0}') "
                    "WHERE rowid = 0")
        con.execute("UPDATE sft_records SET record = json_merge_patch(record, '{\"image\": [\"x\", \"y\", \"z\"]}') "
                    "WHERE rowid = 0")
    for name in ("memory_targets_follow_the_plan", "memory_db_replays_identically", "training_records_are_well_formed"):
        assert not run_check(name, settings, shards).passed, name


# ---------------------------------------------------------------------------------------------- grammar backend


@pytest.fixture(scope="module")
def teacher_tokenizer():
    """The embedded teacher's tokenizer (a grammar backend's failures depend on it)."""
    from transformers import AutoTokenizer

    from persona_factory.teacher.embedded import EMBEDDED_SERVED_NAME, cache_dir

    folder = cache_dir() / "models" / EMBEDDED_SERVED_NAME
    if not (folder / "tokenizer.json").exists():
        pytest.skip("the embedded teacher is not prepared (it is on first engine use)")
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def grammar_compiler(teacher_tokenizer):
    """xgrammar as vLLM runs it, compile cache on."""
    xgr = pytest.importorskip("xgrammar")
    return xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(teacher_tokenizer))


def test_the_guidance_backend_admits_a_turn_only_with_its_phrases(teacher_tokenizer):
    """guidance, the backend of engines the pipeline starts, accepts each kind of phrase-constrained schema as vLLM
    checks it before admitting a request, and its matcher lets a turn end only once it wrote its phrases."""
    llguidance = pytest.importorskip("llguidance")
    import llguidance.hf
    from vllm.v1.structured_output.backend_guidance import serialize_guidance_grammar
    from vllm.v1.structured_output.backend_types import StructuredOutputOptions

    from persona_factory.stages.dialogues import turn_model
    from persona_factory.stages.reasoning import answer_model
    from persona_factory.teacher.types import grammar_schema

    cfg = load_config("tiny")
    tokenizer = llguidance.hf.from_tokenizer(teacher_tokenizer)

    def grammar(model) -> str:  # as vLLM builds it for the engines the pipeline starts
        return serialize_guidance_grammar(StructuredOutputOptions.JSON, json.dumps(grammar_schema(model)),
                                          disable_any_whitespace=cfg.teacher.compact_json)

    turn = turn_model(cfg, ("jazz music", "my sister Anna"))
    for model in (turn, M.draft_model("semantic", ("pottery",), True), M.draft_model("topic", ("pottery", "Anna"), True),
                  answer_model("every Saturday morning", True)):
        assert llguidance.LLMatcher.validate_grammar(grammar(model), tokenizer) == "", model.__name__

    def accepts(text: str) -> bool:
        matcher = llguidance.LLMatcher(tokenizer, grammar(turn), log_level=0)
        return all(matcher.consume_token(t) for t in teacher_tokenizer.encode(text)) and matcher.is_accepting()

    assert accepts('{"user":"Honestly, jazz music and my sister Anna matter to me.","assistant":"Nice to hear."}')
    assert not accepts('{"user":"Honestly, jazz music matters to me.","assistant":"Nice to hear."}')


def test_phrase_constrained_schemas_compile_in_the_grammar_backend(grammar_compiler):
    """A memory sentence's room exceeds one run of any character the backend compiles; the pattern splits it.
    (One compile costs seconds, so one schema stands for all: they share stages.common.phrase_pattern.)"""
    from persona_factory.teacher.types import grammar_schema

    schema = grammar_schema(M.draft_model("semantic", ("pottery",), True))
    assert ".{0,128}" in schema["properties"]["content"]["pattern"]
    grammar_compiler.compile_json_schema(json.dumps(schema))
    with pytest.raises(RuntimeError):  # the same room as one run
        grammar_compiler.compile_json_schema(json.dumps(
            {"type": "object", "properties": {"c": {"type": "string", "pattern": "^.{0,10}[Pp]ottery.{0,130}$"}},
             "required": ["c"]}))
