"""The Persona-MME-style benchmark: the tiny preset end to end on a schema-following teacher (all 13 tasks, evidence
that resolves, every gate counted, ids that carry no answer, an export that loads back and scores near chance for
"always (a)" and 100% for an oracle), the generator's told-but-wrong distractors and balanced assignment, and each
gate on handmade good and bad items."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from datetime import timedelta
from types import SimpleNamespace

import pytest

from persona_factory import scorer
from persona_factory.config import load_config
from persona_factory.publish import PublishBundle, export_native
from persona_factory.schema import (
    SKILL_LEVELS, BenchmarkCandidate, BenchmarkItem, BigFive, Dialogue, GoalStatus, ImageDetail, ImageRecord,
    LikesNow, Option, Persona, PersonaSeed, PhotoOn, PlanItem, Profile, Provenance, Session, ShiftCause,
    TimelinePlan, ToneFor, Turn, fmt_time,
)
from persona_factory.stages import benchmark as B
from persona_factory.stages import benchmark_gates as G
from persona_factory.stages import benchmark_select as S
from persona_factory.stages import benchmark_tasks as T
from persona_factory.stages import plans as PL
from persona_factory.stages.benchmark_build import build_benchmark, tiered_tips
from persona_factory.stages.common import parse_time, personality_text, stable_id
from persona_factory.stages.distractors import Pools, assign_distractors
from persona_factory.stages.images import load_image_pool
from persona_factory.stages.plan_values import value_problem
from persona_factory.stages.timeline import history_state, plan_state
from persona_factory.teacher.types import TeacherResult, TeacherStats

try:
    from tests.fake_openai import FakeOpenAI
    from tests.fake_teacher import SchemaTeacher, openai_responder
    from tests.test_histories import histories
except ImportError:
    from fake_openai import FakeOpenAI
    from fake_teacher import SchemaTeacher, openai_responder
    from test_histories import histories

TASK_NAMES = list(T.TASKS)


# ---------------------------------------------------------------------------------------------- tiny preset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny-preset histories on the schema teacher, the benchmark built over them, and its native export."""
    from persona_factory.stages import dialogues as D

    cfg = load_config("tiny")
    images, _ = load_image_pool(cfg.image_source, tmp_path_factory.mktemp("images"))
    teacher = SchemaTeacher()
    personas, plans = histories(cfg, images, teacher)
    dialogues, _ = D.generate_dialogues(cfg, teacher, personas, plans, images, TeacherStats())
    by_id = {p.persona_id: p for p in personas}
    plans_by_id = {p.persona_id: p for p in plans}
    second_judge = SchemaTeacher()
    dialogues_by_id = {d.persona_id: d for d in dialogues}
    build = build_benchmark(cfg, teacher, {"teacher": teacher, "second": second_judge}, by_id, plans_by_id,
                            dialogues_by_id, images, TeacherStats())
    bundle = PublishBundle(
        personas=personas, dialogues=dialogues, images={i.image_id: i for i in images}, memory_dbs={}, sft=[], rl=[],
        benchmark=build.items, provenance=Provenance(teacher_model="schema-teacher", seed=0, code_version="test",
                                                     preset="tiny", config_hash="x"))
    out = tmp_path_factory.mktemp("release") / "native"
    export_native(bundle, out)
    return SimpleNamespace(cfg=cfg, personas=by_id, plans=plans_by_id, dialogues=dialogues_by_id, images=images,
                           build=build, release=out, second_judge=second_judge, teacher=teacher)


def published(build) -> list[BenchmarkCandidate]:
    ids = {i.item_id for i in build.items}
    return [c for c in build.candidates if c.item.item_id in ids]


def test_tiny_covers_all_13_tasks_with_gold_letters(tiny):
    items = tiny.build.items
    assert {i.question_type for i in items} == set(T.TASKS)
    for i in items:
        assert i.type == T.TASKS[i.question_type].aspect
        assert list(i.choices) == list(B.LETTERS) and i.answer in B.LETTERS
        assert len({v.lower() for v in i.choices.values()}) == 4
        assert tiny.personas[i.persona_id].split != "train"
    assert len({i.time for i in items if i.persona_id == items[0].persona_id}) == 1  # one probe time per persona
    assert any(i.alignment for i in items)
    assert 0.2 <= sum(bool(i.evidence_images) for i in items) / len(items) <= 0.5


def test_tiny_evidence_ids_resolve_and_list_every_turn_naming_the_gold(tiny):
    for c in published(tiny.build):
        i = c.item
        turns = {t.turn_index: t for t in tiny.dialogues[i.persona_id].turns}
        assert i.evidence_turns and all(k in turns and turns[k].time < i.time for k in i.evidence_turns)
        told = {r for k in i.evidence_turns for r in turns[k].realizes}
        assert set(i.source_item_ids) <= told
        assert set(i.evidence_images) <= {turns[k].image_id for k in i.evidence_turns}
        if i.question_type in (T.VDR, T.EII):
            assert i.evidence_images
        entity = c.gold.claim.entity
        if entity:  # no turn stating a fact that names the gold is left out of the evidence
            plan = {p.item_id: p for p in tiny.plans[i.persona_id].items}
            naming = {t.turn_index for t in turns.values() if any(
                r in plan and PL.realizable(plan[r]) and T.contains_phrase(PL.realization(plan[r]).statement, entity)
                for r in t.realizes)}
            assert naming <= set(i.evidence_turns), (i.query, entity)


def test_tiny_records_every_gate_per_task(tiny):
    build = tiny.build
    rows = {(r.gate, r.question_type): r for r in build.gate_counts}
    assert set(rows) == {(g, t) for g in G.GATES for t in T.TASKS}
    for gate in ("lint", "time", "consistency", "near_duplicate", "form", "blind"):
        assert all(rows[gate, t].checked > 0 for t in T.TASKS), gate
    assert all(0 <= r.rejected <= r.checked for r in rows.values())
    judges = {(a.judge, a.context) for a in build.blind_accuracy if a.answered}
    assert judges == {(j, c) for j in ("teacher", "second") for c in G.BLIND_CONTEXTS}
    assert tiny.second_judge.requests  # the extra judge was asked
    rejected = [c for c in build.candidates if c.rejected_by]
    assert {q.row_key.split(":")[1] for q in build.quarantined if q.rule != "teacher_failure"} \
        == {c.item.item_id for c in rejected}


def test_ids_carry_no_answer(tiny):
    """An id hashes the persona, the task, the query and a seeded rank: no option text can be hashed into it, and
    the same question with other options keeps its id."""
    for c in published(tiny.build):
        i = c.item
        assert not any(stable_id("q_", i.persona_id, i.question_type, i.query, text) == i.item_id
                       for text in i.choices.values())
        assert i.item_id in {stable_id("q_", i.persona_id, i.question_type, i.query, rank) for rank in range(8)}
    plan_ids = [item.item_id for plan in tiny.plans.values() for item in plan.items if item.kind != "personality_drift"]
    values = [v for plan in tiny.plans.values() for item in plan.items for v in (item.value, item.subject)]
    assert not any(v in pid for pid in plan_ids for v in values)


def test_told_but_wrong_distractors_where_the_history_has_them(tiny):
    """Most offered items carry a distractor the user's own history tells of, so spotting a mention is not enough;
    the gold is the only told option in few items."""
    cands = published(tiny.build)
    told = [c for c in cands if any(o.told for o in c.distractors)]
    only = [c for c in cands if not any(o.told for o in c.distractors)
            and c.item.question_type not in (T.LGT, T.TED, T.RDC, T.EII, T.VDR)]  # closed sets: nothing to tell
    assert len(told) >= len(cands) / 2
    assert len(only) <= 0.15 * len(cands)


def test_letters_are_drawn_per_item_with_no_quota(tiny):
    """Each gold letter is drawn on its own: dropping items changes no other item's letter, and the overall counts
    pass the chi-square test."""
    cands = [c.model_copy(update={"distractors": c.distractors}) for c in published(tiny.build)]
    whole = S.letter_draw(tiny.cfg.seed, cands)
    part = S.letter_draw(tiny.cfg.seed, cands[: len(cands) // 2])
    assert all(whole[k] == v for k, v in part.items()) or len(cands) < 8
    counts = Counter(i.answer for i in tiny.build.items)
    expected = len(tiny.build.items) / 4
    assert sum((counts[k] - expected) ** 2 / expected for k in B.LETTERS) <= S.CHI2_3DF_5PCT


def test_export_loads_back_and_scores(tiny):
    build = tiny.build
    records = scorer.load_release(tiny.release)
    assert len(records) == len(build.items)
    assert {r["id"] for r in records} == {i.item_id for i in build.items}
    always_a = scorer.score(records, scorer.baseline_predictions(records, "always-a"))
    n = always_a.multiple_choice.total
    assert always_a.multiple_choice.accuracy == sum(r["answer"] == "(a)" for r in records) / n < 0.5
    assert always_a.alignment.total == 2 * sum("alignment" in r for r in records) > 0
    assert always_a.alignment.accuracy == 0.5
    oracle = scorer.score(records, scorer.baseline_predictions(records, "oracle"))
    assert oracle.overall.accuracy == 1.0 and oracle.overall.total == n + always_a.alignment.total
    assert set(oracle.per_task) == set(T.TASKS) | {scorer.ALIGNMENT}
    assert set(oracle.per_config) == {"32k", "128k"}


def test_rebuild_is_identical(tiny):
    teacher = SchemaTeacher()
    again = build_benchmark(tiny.cfg, teacher, {"teacher": teacher, "second": SchemaTeacher()}, tiny.personas,
                            tiny.plans, tiny.dialogues, tiny.images, TeacherStats())
    assert again.items == tiny.build.items
    assert again.gate_counts == tiny.build.gate_counts


def test_items_rejected_after_selection_are_replaced_from_the_other_candidates(tiny, monkeypatch):
    """A gate after selection (here: form, told to refuse what a single selection published of one task) leaves a
    gap; the selection is made again without the refused items, and the task stays present from its spare
    candidates. With no refill rounds the gap stays."""
    def build(refill_rounds: int):
        cfg = tiny.cfg.model_copy(update={"benchmark": tiny.cfg.benchmark.model_copy(
            update={"refill_rounds": refill_rounds})})
        teacher = SchemaTeacher()
        return build_benchmark(cfg, teacher, {"teacher": teacher}, tiny.personas, tiny.plans, tiny.dialogues,
                               tiny.images, TeacherStats())

    once = build(0)
    ids = {i.item_id for i in once.items}
    spare = Counter(c.item.question_type for c in once.candidates
                    if c.rejected_by is None and c.item.item_id not in ids)
    task, _ = spare.most_common(1)[0]
    doomed = {i.item_id for i in once.items if i.question_type == task}
    form = G.form_problem
    monkeypatch.setattr(G, "form_problem", lambda c, r: "planted" if c.item.item_id in doomed else form(c, r))

    refilled = build(3)
    assert not doomed & {i.item_id for i in refilled.items}
    assert task in {i.question_type for i in refilled.items}
    assert {c.item.item_id for c in refilled.candidates if c.rejected_by == "form: planted"} == doomed
    rows = {(r.gate, r.question_type): r for r in refilled.gate_counts}
    form_refused = [c for c in refilled.candidates
                    if c.item.question_type == task and (c.rejected_by or "").startswith("form")]
    assert rows["form", task].rejected == len(form_refused)  # each refused item counted once, in the round it fell
    assert task not in {i.question_type for i in build(0).items}


def test_tiered_tips_stand_on_their_templates_when_the_teacher_fails_every_tips_request(tiny):
    failing = SchemaTeacher(override=lambda r: "no tips today" if r.tag.startswith("tips:") else None)
    build = build_benchmark(tiny.cfg, failing, {"teacher": failing}, tiny.personas, tiny.plans, tiny.dialogues,
                            tiny.images, TeacherStats())
    published = {i.item_id for i in build.items}
    ted = [c for c in build.candidates if c.item.question_type == T.TED and c.item.item_id in published]
    assert ted and not any(r.tag.startswith("tip-tier:") for r in failing.requests)  # nothing reworded to check
    assert set(build.tip_wording) == {"teacher_failure"}
    for c in ted:
        skill = c.gold.claim.skill
        templates = B.tip_templates(tiny.cfg, [skill])[skill]
        assert {o.text: o.claim.tier for o in c.options} \
            == {B.shown(tip): tier for tier, tip in templates.items()}



# ---------------------------------------------------------------------------------------------- a handmade history

PID = "p1"
PROBE = "2024-05-12 10:34"


def _plan_item(item_id: str, kind: str, time: str, subject: str, value: str, **kw) -> PlanItem:
    return PlanItem(item_id=item_id, persona_id=PID, kind=kind, time=time, subject=subject, value=value, **kw)


ITEMS = [
    _plan_item("pot", "preference", "2024-05-01 08:00", "hobby", "pottery"),
    _plan_item("chess", "preference", "2024-05-01 08:00", "hobby", "chess"),
    _plan_item("maya", "relationship", "2024-05-01 08:00", "Maya", "sister"),
    _plan_item("try", "event", "2024-05-05 08:00", "bouldering", "tried bouldering for the first time"),
    _plan_item("photo", "photo_share", "2024-05-05 09:00", "coffee", "to show my sister later", image_id="img1"),
    _plan_item("shift", "preference_shift", "2024-05-10 08:00", "hobby", "bouldering", previous_value="pottery",
               cause_item_id="try"),
]
USER_TURNS = [  # (time, user text, realizes, image)
    ("2024-05-01 10:00", "I really enjoy pottery.", ["pot"], None),
    ("2024-05-01 10:04", "I also enjoy chess on weekends.", ["chess"], None),
    ("2024-05-01 10:08", "Maya is my sister, we talk daily.", ["maya"], None),
    ("2024-05-06 18:00", "I tried bouldering for the first time!", ["try"], None),
    ("2024-05-06 18:05", "<img>The coffee here, sending it to show my sister later.", ["photo"], "img1"),
    ("2024-05-12 09:00", "These days I am more into bouldering than pottery.", ["shift"], None),
    ("2024-05-12 09:04", "Lovely weather today.", [], None),
]


def history(user_turns=USER_TURNS, extra_items=()) -> tuple[Dialogue, TimelinePlan, dict[str, ImageRecord]]:
    turns = [Turn(persona_id=PID, session_index=0, turn_index=k, time=t, user=u, assistant="Noted.", realizes=r,
                  image_id=img) for k, (t, u, r, img) in enumerate(user_turns)]
    dialogue = Dialogue(persona_id=PID, split="bench_32k", sessions=[Session(persona_id=PID, session_index=0,
                                                                             turns=turns)])
    plan = TimelinePlan(persona_id=PID, span_days=30, sessions=[], items=[*ITEMS, *extra_items])
    image = ImageRecord(image_id="img1", source="test", name="coffee", caption="a cup of coffee on a red saucer",
                        labels=["coffee", "cup", "saucer"], details={"What colour is the saucer?": "red"},
                        path="/dev/null", width=1, height=1, phash=0)
    return dialogue, plan, {"img1": image}


def _persona(likes: tuple[str, ...] = ("birds",)) -> Persona:
    return Persona(
        persona_id=PID, seed=PersonaSeed(seed_id="s", text="A birdwatcher.", source="test"), split="bench_32k",
        shard="shard-000", role_description="Watches birds.",
        profile=Profile.model_validate({"name": "Ana", "gender": "female", "age": 30, "preferences": list(likes),
                                        "recent matters": [], "requirements or expectations": "brief",
                                        "update time": "2024-05-01 09:00"}),
        big_five=BigFive(openness=4, conscientiousness=3, extraversion=2, agreeableness=3, neuroticism=2),
        start_time="2024-05-01 09:00")


def candidate(task: str, query: str, options: list[tuple[str, object]], evidence: list[int], sources: list[str],
              answer_type: str, gold: int = 0, images: tuple[str, ...] = (), time_phrase: str | None = None,
              item_id: str | None = None, persona_id: str = PID, told: tuple[int, ...] = ()) -> BenchmarkCandidate:
    """options: (text, claim); the option at `gold` is the answer, the others its distractors (`told` marks the
    ones the history tells of)."""
    opts = [Option(text=t, claim=c, told=k in told or k == gold) for k, (t, c) in enumerate(options)]
    item = BenchmarkItem(item_id=item_id or f"q_{abs(hash((task, query, options[gold][0])))}", persona_id=persona_id,
                         bucket="50", type=T.TASKS[task].aspect, question_type=task, time=PROBE, query=query,
                         choices={B.LETTERS[k]: o[0] for k, o in enumerate(options[:4])}, answer=B.LETTERS[gold],
                         evidence_turns=evidence, evidence_images=list(images), source_item_ids=sources)
    wrong = [o for k, o in enumerate(opts) if k != gold]
    return BenchmarkCandidate(item=item, answer_type=answer_type, time_phrase=time_phrase, gold=opts[gold],
                              pool=wrong, distractors=wrong)


def suggest(*texts: str, evidence=(1,), sources=("chess",), **kw) -> BenchmarkCandidate:
    return candidate(T.IPR, "I've got a free afternoon. Which of these would you suggest I spend it on?",
                     [(t, LikesNow(thing=t.lower())) for t in texts], list(evidence), list(sources), "hobby", **kw)


GOOD = suggest("Chess", "Pottery", "Knitting", "Archery", told=(1,))


def state_of(user_turns=USER_TURNS, likes=("birdwatching",)):
    dialogue, plan, images = history(user_turns)
    return dialogue, plan, images, history_state(_persona(likes), plan, dialogue, PROBE)


def consistency(c: BenchmarkCandidate, user_turns=USER_TURNS) -> str | None:
    """Why the item cannot stand: the consistency gate, then the offered options' re-check."""
    dialogue, plan, images, state = state_of(user_turns)
    checked = G.consistency(c.model_copy(update={"pool": c.distractors}), dialogue, plan, state, images)
    if isinstance(checked, str):
        return checked
    return G.offered_problem(c, dialogue, state, images)


def test_a_good_item_passes_every_item_gate():
    dialogue, _, _ = history()
    assert G.lint(GOOD) == GOOD
    assert G.form_problem(GOOD, 1.5) is None
    assert G.time_problem(GOOD, dialogue) is None
    assert consistency(GOOD) is None


# ---------------------------------------------------------------------------------------------- lint


def test_lint_catches_dangling_slots_and_sentences_in_slots():
    """What a weak teacher's plan values did to published items ("What do I usually do when?", an option
    "My first go at I have a love for mushrooms"): the query or the gold goes, a bad wrong option leaves the pool."""
    assert G.query_problem("What do I usually do when?") == "dangling_slot"
    assert G.query_problem("Who was with me when I  went out?") == "broken_template"
    assert G.query_problem("What tone should I go for?") is None
    sentence = suggest("I have a love for mushrooms", "Pottery", "Knitting", "Archery")
    assert G.lint(sentence).startswith("gold first_or_second_person")
    pruned = G.lint(suggest("Chess", "Pottery", "Mike,Carolina,Davey", "Archery", "Sailing"))
    assert [o.text for o in pruned.pool] == ["Pottery", "Archery", "Sailing"]


@pytest.mark.parametrize("kind, value, problem", [
    ("hobby", "I have a love for mushrooms", "first_or_second_person"),
    ("event", "Mike,Carolina,Davey", "list_or_sentence"),
    ("skill", "tip for I am a woodworker", "first_or_second_person"),
    ("routine_when", "when", "length 1 words, want 2-6"),
    ("routine_when", "with my friends", "first_or_second_person"),
    ("event", "a jazz concert", "event_not_past_tense"),
    ("goal", "going to the gym", "not_base_form"),
    ("hobby", "knitting and", "dangling_end"),
    ("hobby", "Chess", "looks_like_a_name"),
    ("hobby", "The science museum", "sentence_case"),
    ("hobby", "The Beatles", None),
    ("hobby", "jazz_music_jazz_music_jazz", "odd_characters"),
    ("hobby", "jazz jazz jazz", "repetition"),
    ("event", "ran a 5k race", None),
    ("event", "tried pottery for the first time", None),
    ("routine_when", "every Saturday morning", None),
    ("routine_action", "go to the farmers market", None),
    ("goal", "learn conversational Spanish", None),
])
def test_plan_values_are_checked_as_phrases_of_their_kind(kind, value, problem):
    found = value_problem(kind, value)
    assert (found or None) == problem or (problem and found.startswith(problem))


def test_refused_teacher_proposals_are_quarantined_and_filled_from_the_vocabulary():
    persona = _persona(("pottery", "I am a woodworker"))
    draft = PL.PlanDraft(people=["Maya"], goals=["learn to swim", "my big dream."], routines=[
        PL.RoutineDraft(when="when", action="go running")], events=["Mike,Carolina,Davey", "visited an aquarium"],
        new_interests=["I have a love for mushrooms"], dislikes=["loud bars"], skills=["tip for"])
    checked, refused = PL.checked_draft(persona, draft)
    assert checked.goals == ["learn to swim"] and checked.events == ["visited an aquarium"]
    assert checked.routines == [] and checked.new_interests == [] and checked.skills == []
    assert {r.rule for r in refused} == {"plan_value_refused"}
    assert len(refused) == 6  # goal, routine, event, interest, skill, and the profile's first-person "like"
    plan = PL.build_plan(load_config("tiny"), persona, checked, [])
    assert all(value_problem("hobby", i.value) is None for i in plan.items if i.kind.startswith("preference"))


# ---------------------------------------------------------------------------------------------- form


def test_form_gate_catches_a_length_leaking_item():
    leaking = suggest("Chess with my club every Thursday night", "Pottery", "Knitting", "Archery")
    assert G.form_problem(leaking, 1.5).startswith("option_length_ratio")


def test_form_gate_catches_duplicate_and_nested_options():
    assert G.form_problem(suggest("Chess", "Pottery", "chess.", "Archery"), 1.5) == "duplicate_options"
    assert G.form_problem(suggest("Chess", "Pottery", "Pottery class", "Archery"), 1.5).startswith("nested_options")


def test_form_gate_catches_mixed_claims_casing_and_gold_only_names():
    mixed = suggest("Chess", "Pottery", "Knitting", "Archery")
    mixed.distractors[0] = Option(text="Pottery", claim=PhotoOn(day="2024-05-06", label="pottery"))
    assert G.form_problem(mixed, 1.5).startswith("mixed_answer_types")
    assert G.form_problem(suggest("Chess", "pottery", "Knitting", "Archery"), 1.5) == "inconsistent_casing"
    assert G.form_problem(suggest("Chess", "Pottery.", "Knitting", "Archery"), 1.5) == "inconsistent_punctuation"
    assert G.form_problem(suggest("Chess at Ravi's", "Pottery at home", "Knitting at home", "Archery at home"),
                          1.5).startswith("gold_only_specifics")


def test_form_gate_accepts_a_closed_answer_type():
    tones = [(t, ToneFor(person="Maya", tone=t.lower())) for t in
             ("Warm and teasing", "Polite and brief", "Casual and playful", "Formal and respectful")]
    good = candidate(T.RDC, "I'm writing a message to Maya. What tone should I go for?", tones, [2], ["maya"], "tone")
    assert G.form_problem(good, 1.5) is None


# ---------------------------------------------------------------------------------------------- time


def photo_question(when: str, phrase: str | None) -> BenchmarkCandidate:
    return candidate(T.SIR, f"What did I send you a photo of {when}?",
                     [(t, PhotoOn(day="2024-05-06", label=t.lower())) for t in ("Coffee", "Horse", "Rocket", "Bicycle")],
                     [4], ["photo"], "label", images=("img1",), time_phrase=phrase)


def test_time_gate_accepts_the_computed_relative_date():
    dialogue, _, _ = history()
    assert B.relative_phrase(parse_time(PROBE), parse_time("2024-05-06 18:05")) == "on Monday"
    assert G.time_problem(photo_question("on Monday", "on Monday"), dialogue) is None


def test_time_gate_catches_a_wrong_relative_date():
    dialogue, _, _ = history()
    assert G.time_problem(photo_question("yesterday", "yesterday"), dialogue).startswith("wrong_relative_time")
    assert G.time_problem(photo_question("last week", None), dialogue).startswith("unverified_time_reference")
    early = photo_question("on Monday", "on Monday")
    early = early.model_copy(update={"item": early.item.model_copy(update={"time": "2024-05-12 09:00"})})
    assert G.time_problem(early, dialogue) == "probe_not_after_last_turn"


def questions(extra_items: list[PlanItem], extra_turns: list, likes=("birds",)) -> T.PersonaQuestions:
    dialogue, plan, images = history(USER_TURNS + extra_turns, extra_items)
    return T.PersonaQuestions(load_config("tiny"), _persona(likes), dialogue, plan, images,
                              Pools.of([plan], list(images.values())), TIPS)


def drafts(q: T.PersonaQuestions) -> list[T.Draft]:
    return [d for t in T.TASKS.values() for d in t.generate(q)]


def as_candidate(q: T.PersonaQuestions, d: T.Draft) -> BenchmarkCandidate:
    """A draft offered with the first three options of its pool, gold (a)."""
    wrong = d.pool[:3]
    item = BenchmarkItem(item_id="q_x", persona_id=PID, bucket="50", type=T.TASKS[d.task].aspect,
                         question_type=d.task, time=fmt_time(q.probe), query=d.query,
                         choices=dict(zip(B.LETTERS, [d.gold.text, *(o.text for o in wrong)])), answer="(a)",
                         evidence_turns=[t.turn_index for t in d.evidence], evidence_images=d.images,
                         source_item_ids=d.sources)
    return BenchmarkCandidate(item=item, answer_type=d.answer_type, time_phrase=d.time_phrase, gold=d.gold,
                              pool=d.pool, distractors=wrong)


def passes(q: T.PersonaQuestions, c: BenchmarkCandidate) -> None:
    state = history_state(q.persona, q.plan, q.dialogue, c.item.time)
    assert G.form_problem(c, 1.5) is None and G.time_problem(c, q.dialogue) is None
    assert not isinstance(G.consistency(c, q.dialogue, q.plan, state, q.images), str)
    assert G.offered_problem(c, q.dialogue, state, q.images) is None


def test_time_gate_judges_only_the_phrases_the_item_adds():
    """A weekday inside the routine asked about ("on Thursday nights") is the plan's wording, not a date."""
    q = questions([_plan_item("games", "routine", "2024-05-01 08:00", "on Thursday nights", "play board games"),
                   _plan_item("run", "routine", "2024-05-01 08:00", "every morning", "go for a run")],
                  [("2024-05-12 09:06", "On Thursday nights I play board games.", ["games"], None),
                   ("2024-05-12 09:07", "Every morning I go for a run.", ["run"], None)])
    routine = as_candidate(q, next(d for d in drafts(q) if d.task == T.BPR and "Thursday" in d.query))
    assert routine.item.query == "What do I usually do on Thursday nights?" and routine.time_phrase is None
    assert routine.distractors[0].text == "Go for a run" and routine.distractors[0].told  # my other routine
    assert G.time_problem(routine, q.dialogue) is None
    added = routine.item.model_copy(update={"query": "What do I usually do on Thursday nights since last week?"})
    assert G.time_problem(routine.model_copy(update={"item": added}), q.dialogue) \
        == "unverified_time_reference: ['last week']"


@pytest.mark.parametrize("event, phrase", [
    ("2024-05-12 08:00", "earlier today"), ("2024-05-11 20:00", "yesterday"), ("2024-05-08 09:00", "on Wednesday"),
    ("2024-05-03 09:00", "about a week ago"), ("2024-04-20 09:00", "about 3 weeks ago"),
    ("2024-04-05 09:00", "about a month ago"), ("2024-02-20 09:00", "about 3 months ago"),
])
def test_relative_phrases_are_computed(event, phrase):
    assert B.relative_phrase(parse_time(PROBE), parse_time(event)) == phrase


# ---------------------------------------------------------------------------------------------- consistency


def test_consistency_gate_catches_an_answer_a_later_turn_contradicts():
    # pottery was liked when turn 0 said so, but turn 5 replaced it with bouldering
    stale = suggest("Pottery", "Archery", "Knitting", "Sailing", evidence=(0,), sources=("pot",))
    assert consistency(stale).startswith("gold_not_true_in_history")
    negated = USER_TURNS + [("2024-05-12 09:08", "Honestly I don't play chess anymore.", [], None)]
    assert consistency(GOOD, negated).startswith("gold_negated_later")


def test_consistency_gate_checks_evidence():
    def with_evidence(*turns: int) -> BenchmarkCandidate:
        return suggest("Chess", "Pottery", "Knitting", "Archery", evidence=turns, told=(1,))
    assert consistency(with_evidence(42)) == "evidence_turn_missing: 42"
    assert consistency(with_evidence(6)) == "evidence_not_user_stated: 6"
    assert consistency(with_evidence(0)).startswith("source_not_in_evidence")
    unsaid = [(t, "Noted." if k == 1 else u, r, i) for k, (t, u, r, i) in enumerate(USER_TURNS)]
    assert consistency(GOOD, unsaid) == "evidence_not_user_stated: 1"  # only the assistant side would say it
    late = USER_TURNS[:1] + [("2024-05-12 11:00", "I also enjoy chess on weekends.", ["chess"], None)]
    assert consistency(GOOD, late) == "evidence_after_probe: 1"


def test_consistency_gate_catches_a_never_told_distractor_the_user_mentioned_or_the_profile_likes():
    mentioned = USER_TURNS + [("2024-05-12 09:08", "Archery looked fun on TV.", [], None)]
    assert consistency(GOOD, mentioned).startswith("too_few_wrong_options: 2 left (mentioned_in_history 1)")
    dialogue, _, images, state = state_of(mentioned)
    assert G.offered_problem(GOOD, dialogue, state, images) == "mentioned_in_history: 'archery'"
    liked = suggest("Chess", "Pottery", "Knitting", "Birdwatching")  # the profile the model sees lists it
    dialogue, _, images, state = state_of()
    assert G.offered_problem(liked, dialogue, state, images) == "true_in_history: 'Birdwatching'"


def test_consistency_gate_verifies_image_details_and_causes():
    detail = candidate(T.VDR, "In the photo of the coffee I sent you on Monday, what colour is the saucer?",
                       [(t, ImageDetail(image_id="img1", question="What colour is the saucer?", answer=t.lower()))
                        for t in ("Red", "Blue", "Green", "White")], [4], ["photo"], "visual colour",
                       images=("img1",), time_phrase="on Monday")
    assert consistency(detail) is None
    wrong = detail.model_copy(update={"gold": detail.distractors[0], "distractors": [detail.gold,
                                                                                   *detail.distractors[1:]]})
    assert consistency(wrong).startswith("gold_not_true_in_history")  # the real colour offered as wrong
    tries = ("bouldering", "archery", "sailing", "knitting")
    cause = candidate(T.IEA, "I used to be really into pottery, but something changed that. What set it off?",
                      [(f"Tried {h} for the first time", ShiftCause(old="pottery", event=f"tried {h} for the first time"))
                       for h in tries], [3, 5], ["try", "shift"], "event")
    assert consistency(cause) is None and G.form_problem(cause, 1.5) is None
    untold_cause = [row for row in USER_TURNS if row[2] != ["try"]]  # the shift turn is now turn 4
    moved = cause.item.model_copy(update={"evidence_turns": [4], "source_item_ids": ["shift"]})
    assert consistency(cause.model_copy(update={"item": moved}), untold_cause).startswith("gold_not_true_in_history")


# ---------------------------------------------------------------------------------------------- duplicates, blind


def test_near_duplicates_are_removed_per_persona():
    again = suggest("Chess", "Pottery", "Knitting", "Sailing", item_id="q_z")
    other = suggest("Chess", "Pottery", "Knitting", "Archery", item_id="q_y", persona_id="p2")
    first = GOOD.model_copy(update={"item": GOOD.item.model_copy(update={"item_id": "q_a"})})
    assert G.near_duplicates([first, again, other], 0.9) == {"q_z": "near_duplicate_of q_a (1.00)"}


def _blind(answer: str) -> TeacherResult:
    return TeacherResult(key="k", tag="blind", value=G.BlindAnswer(answer=answer))


def test_blind_gate_drops_items_most_blind_runs_solve():
    cfg = load_config("tiny")
    persona = _persona()
    solvable = suggest("Chess", "Pottery", "Knitting", "Archery", item_id="q_1")  # gold (a)
    fine = suggest("Chess", "Pottery", "Knitting", "Sailing", item_id="q_2")
    asks = G.blind_asks(cfg, [solvable, fine], {PID: persona})
    assert [(a.item_id, a.context) for a in asks] == [(i, c) for i in ("q_1", "q_2") for c in G.BLIND_CONTEXTS]
    assert "birds" in asks[1].request.messages[-1].content and "birds" not in asks[0].request.messages[-1].content
    assert [a.gold for a in asks] == ["(a)", "(d)", "(a)", "(d)"]  # reversed options in the second context
    answers = {"judge1": [_blind("(a)"), _blind("(d)"), _blind("(a)"), _blind("(c)")],
               "judge2": [_blind("(a)"), TeacherResult(key="k", tag="blind", failure="schema"), _blind("(b)"),
                          _blind("(a)")]}
    problems, accuracy = G.blind_verdicts(asks, answers, 0.5)
    assert problems == {"q_1": "solved_blind: 3/3 runs"}  # q_2: 1 of 4 runs right, not most
    rows = {(a.judge, a.context, a.question_type): (a.answered, a.correct) for a in accuracy}
    assert rows["judge1", "query_only", T.IPR] == (2, 2) and rows["judge2", "profile_only", T.IPR] == (1, 0)
    always_a = {"judge": [_blind("(a)")] * len(asks)}  # a judge stuck on one letter solves no item on both runs
    assert G.blind_verdicts(asks, always_a, 0.5)[0] == {}


def test_extra_judges_are_asked_over_http(tmp_path):
    from assets.benchmark import extra_judges

    with FakeOpenAI("judge-model", responder=openai_responder()) as fake:
        cfg = load_config("tiny", overrides={"output_dir": str(tmp_path), "benchmark": {
            "blind_judges": [{"model": "judge-model", "base_urls": [fake.base_url]}]}})
        judge = extra_judges(cfg)["judge-model"]
        try:
            results = judge.generate([a.request for a in G.blind_asks(cfg, [GOOD], {PID: _persona()})])
        finally:
            judge.close()
        assert [r.value.answer in B.LETTERS for r in results] == [True, True]
        assert [body["model"] for body in fake.requests] == ["judge-model"] * 2


# ---------------------------------------------------------------------------------------------- balance, assignment


def lgt(k: int, state: str) -> BenchmarkCandidate:
    states = B.bench_vocabulary()["goal_states"]
    order = [state] + [s for s in states if s != state]
    options = [(states[s], GoalStatus(goal="goal", state=s)) for s in order]
    return candidate(T.LGT, f"Did I ever finish my goal number {k}?", options, [0], ["pot"], "goal state",
                     item_id=f"q_{k:02d}")


def test_balance_gate_evens_out_goal_states():
    skewed = [lgt(k, "unknown") for k in range(7)] + [lgt(7, "finished"), lgt(8, "gave up")]
    problems = G.balance_problems(skewed)
    assert problems and set(problems.values()) <= {"gold_value_skewed: unknown",
                                                   "unknown_answer_gold_more_often_than_distractor"}
    kept = [c for c in skewed if c.item.item_id not in problems]
    assert sum(c.gold.claim.state == "unknown" for c in kept) <= G.allowed(len(kept))
    balanced = [lgt(k, s) for k, s in enumerate(["finished", "gave up", "unknown", "making progress", "unknown",
                                                 "finished", "gave up", "making progress"])]
    assert G.balance_problems(balanced) == {}


def test_balance_gate_catches_gold_that_is_longest_too_often():
    others = ["Chess", "Golf", "Yoga", "Judo", "Darts", "Polo", "Sumo", "Surf"]
    leak = [suggest(f"Woodworking {k}", *others[k % 6:k % 6 + 3], item_id=f"q_{k:02d}") for k in range(10)]
    problems = G.balance_problems(leak)
    assert problems and set(problems.values()) == {"gold_uniquely_longest_too_often"}
    assert len(leak) - len(problems) == 2  # two of two is still within one over a quarter
    assert G.balance_problems(leak[:2]) == {}


def pooled(k: int, gold: str, pool: list[tuple[str, bool]]) -> BenchmarkCandidate:
    c = suggest(gold.title(), "Chess", "Golf", "Yoga", item_id=f"q_{k:02d}")
    return c.model_copy(update={"pool": [Option(text=t.title(), claim=LikesNow(thing=t), told=told)
                                         for t, told in pool], "distractors": []})


def test_assignment_takes_told_distractors_first_and_offers_common_golds_as_wrong_answers():
    """'chess' is gold in three items: across the others it is offered as wrong about three times as often, so how
    often a value was gold elsewhere says nothing; a told-but-wrong option always comes first."""
    never = [("chess", False), ("golf", False), ("yoga", False), ("judo", False), ("rowing", False), ("darts", False)]
    cands = [pooled(k, "chess", [("rugby", True), *never[1:]]) for k in range(3)]
    cands += [pooled(k, g, [("sumo", True), *never]) for k, g in enumerate(
        ["tennis", "hockey", "squash", "karate", "boxing", "cricket", "curling", "skiing", "bowling"], start=3)]
    assigned, problems = assign_distractors(cands, seed=0, max_ratio=1.5)
    assert problems == {}
    assert all(c.distractors[0].told for c in assigned)
    chess_offered = sum(o.text == "Chess" for c in assigned for o in c.distractors)
    assert chess_offered >= 6
    for c in assigned:
        texts = [c.gold.text, *(o.text for o in c.distractors)]
        assert len({t.lower() for t in texts}) == 4 and B.length_ratio(texts) <= 1.5


def test_assignment_draws_the_golds_length_rank():
    """Where the gold sits among the four lengths is drawn per item, so over many items it is shortest or longest
    about a quarter of the time each."""
    lengths = ["ab", "abcdef", "abcdefghij", "abcdefghijklmn", "abcdefghijklmnopqr", "abcdefghijklmnopqrstuv"]
    cands = []
    for k in range(200):
        c = pooled(k, "mmmmmmmmmmmmmmmm", [(f"{s} {chr(97 + k % 26)}{chr(97 + k // 26)}", False) for s in lengths])
        cands.append(c)
    assigned, _ = assign_distractors(cands, seed=0, max_ratio=10)
    ranks = Counter(sum(len(o.text) < len(c.gold.text) for o in c.distractors) for c in assigned)
    assert set(ranks) == {0, 1, 2, 3} and min(ranks.values()) >= 30


# ---------------------------------------------------------------------------------------------- alignment


def test_alignment_pairs_answer_their_item_query_at_the_probe(tiny):
    """Each pair is written for its item: replies to the item's own query, chosen for the planned personality at the
    probe (drifts included), rejected alternating generic and another profile."""
    share = tiny.cfg.benchmark.alignment_share
    asked = [r for r in tiny.teacher.requests if r.tag.startswith("alignment:")]
    items = {i.item_id: i for i in tiny.build.items}
    aligned = [i for i in items.values() if i.alignment]
    assert aligned and len(asked) == 2 * tiny.build.alignment_asked
    per_persona = Counter(i.persona_id for i in items.values())
    for pid, n in per_persona.items():
        assert sum(1 for i in aligned if i.persona_id == pid) <= round(share * n)
    for item in aligned:
        prompts = [r.messages[1].content for r in asked if item.query in r.messages[1].content]
        assert len(prompts) >= 2, item.query  # chosen and rejected, both for this item's query
        assert item.alignment["chosen"] != item.alignment["rejected"]
    chosen_prompt = next(r.messages[1].content for r in asked if r.tag.endswith(":chosen"))
    pid = next(r.tag.split(":")[1] for r in asked if r.tag.endswith(":chosen"))
    probe = fmt_time(B.probe_time(tiny.cfg, tiny.dialogues[pid]))
    now = plan_state(tiny.personas[pid], tiny.plans[pid], probe).personality
    assert personality_text(now) in chosen_prompt
    kinds = Counter("generic" if "does not adapt" in r.messages[1].content else "other_profile"
                    for r in asked if r.tag.endswith(":rejected"))
    assert abs(kinds["generic"] - kinds["other_profile"]) <= len(per_persona)


def test_vocabulary_matches_the_plan_vocabulary():
    bench = B.bench_vocabulary()
    assert set(bench["photo_purposes"]) == set(PL.vocabulary()["photo_purposes"])
    assert bench["tip_tiers"] == list(SKILL_LEVELS)
    for question, answer in ((q, a) for img in _skimage_details() for q, a in img.items()):
        assert B.visual_answer_type(answer), (question, answer)


def _skimage_details() -> list[dict[str, str]]:
    import yaml

    from persona_factory.stages.images import SKIMAGE_CAPTIONS

    return [meta.get("details", {}) for meta in yaml.safe_load(SKIMAGE_CAPTIONS.read_text()).values()]


def test_probe_follows_the_last_turn_past_the_session_gap():
    cfg = load_config("tiny")
    dialogue, _, _ = history()
    gap = B.probe_time(cfg, dialogue) - parse_time(dialogue.turns[-1].time)
    assert gap > timedelta(minutes=cfg.dialogue.session_gap_minutes)


# ---------------------------------------------------------------------------------------------- generation


TIPS = {"guitar": {"beginner": "Learn three open chords", "intermediate": "Practise barre chord changes",
                   "advanced": "Improvise over jazz standards", "expert": "Refine your vibrato control"}}


def test_goals_and_skills_told_only_by_a_later_report_are_still_asked():
    q = questions([
        _plan_item("goal", "goal", "2024-05-01 08:00", "run a marathon", "started"),
        _plan_item("gave", "goal_update", "2024-05-11 08:00", "run a marathon", "gave up", previous_value="started",
                   cause_item_id="goal"),
        _plan_item("skill", "skill", "2024-05-01 08:00", "guitar", "advanced"),
        _plan_item("level", "skill_update", "2024-05-11 08:00", "guitar", "expert", previous_value="advanced",
                   cause_item_id="skill"),
    ], [("2024-05-12 09:06", "About my goal to run a marathon: I gave up on it.", ["gave"], None),
        ("2024-05-12 09:08", "I have now reached expert level at guitar.", ["level"], None)])
    found = {d.task: d for d in drafts(q)}
    assert found[T.LGT].gold.text == "No, you gave it up" and found[T.LGT].gold.claim.state == "gave up"
    assert [t.turn_index for t in found[T.LGT].evidence] == [7]
    assert found[T.TED].gold.text == "Refine your vibrato control" and found[T.TED].gold.claim.tier == "expert"
    for task in (T.LGT, T.TED):
        passes(q, as_candidate(q, found[task]))


def test_the_most_present_person_counts_events_without_a_relationship_turn():
    q = questions([
        _plan_item("omar1", "event", "2024-05-11 08:00", "event", "went to a jazz concert", person="Omar"),
        _plan_item("omar2", "event", "2024-05-11 09:00", "event", "helped a friend move flats", person="Omar"),
        _plan_item("maya1", "event", "2024-05-11 10:00", "event", "baked bread", person="Maya"),
    ], [("2024-05-12 09:06", "I went to a jazz concert with Omar.", ["omar1"], None),
        ("2024-05-12 09:08", "I helped a friend move flats with Omar.", ["omar2"], None),
        ("2024-05-12 09:10", "I baked bread with Maya.", ["maya1"], None)])
    most = next(d for d in drafts(q) if d.gold.claim.kind == "most_present")
    assert most.gold.text == "Omar" and "Maya" in [o.text for o in most.pool if o.told]
    assert {7, 8} <= {t.turn_index for t in most.evidence}
    passes(q, as_candidate(q, most))


def test_interest_evolution_offers_first_tries_the_history_tells():
    """What set a shift off is one of the first tries the user told of: the one the shift followed."""
    q = questions([_plan_item("decoy", "event", "2024-05-02 08:00", "archery", "tried archery for the first time")],
                  [("2024-05-12 09:06", "I tried archery for the first time.", ["decoy"], None)])
    iea = next(d for d in drafts(q) if d.task == T.IEA)
    assert iea.gold.text == "Tried bouldering for the first time"
    assert [o.text for o in iea.pool if o.told] == ["Tried archery for the first time"]
    assert all(o.text.endswith("for the first time") for o in iea.pool)
    passes(q, as_candidate(q, iea))


def test_a_like_the_profile_lists_is_asked_only_against_another_profile_like():
    lonely = questions([], [], likes=("chess",))
    assert not [d for d in drafts(lonely) if d.task == T.IPR and d.gold.text == "Chess"]
    paired = questions([], [], likes=("chess", "pottery"))
    ipr = next(d for d in drafts(paired) if d.task == T.IPR and d.gold.text == "Chess")
    assert [o.text for o in ipr.pool if o.told] == ["Pottery"]


def test_timeline_state_applies_the_shifts_dated_by_then_and_a_history_only_what_it_told():
    """One answer to "what does the user like at this time" for the dialogue checks, alignment replies and the
    benchmark's questions and gates."""
    from persona_factory.stages import dialogues as D

    dialogue, plan, _ = history()
    persona = _persona()
    assert plan_state(persona, plan, "2024-05-09 00:00").likes == ["birds", "chess", "pottery"]
    assert plan_state(persona, plan, PROBE).likes == ["birds", "chess", "bouldering"]
    assert plan_state(persona, plan, PROBE, told={"pot", "chess"}).likes == ["birds", "chess", "pottery"]
    likes_then = lambda time: {i.item_id for i in D.standing_facts(persona, plan, time)  # noqa: E731
                               if i.kind.startswith("preference")}
    assert likes_then("2024-05-09 00:00") == {"pot", "chess"} and likes_then(PROBE) == {"chess", "shift"}
    told = {i for t in dialogue.turns for i in t.realizes}
    state = history_state(persona, plan, dialogue, PROBE)
    assert state.likes == plan_state(persona, plan, PROBE, told).likes
    assert state.replaced == ["pottery"] and state.shifts[0].cause == "tried bouldering for the first time"


REWORDED = {
    "guitar": {"beginner": "Learn three open chords slowly", "intermediate": "Practise smooth barre chord changes",
               "advanced": "Improvise over jazz chord changes", "expert": "Shape your vibrato purely by ear"},
    "chess": {"beginner": "Learn how every chess piece moves", "intermediate": "Study common chess opening traps",
              "advanced": "Analyse your lost games move by move", "expert": "Prepare deep novelties for rivals"},
    "piano": {"beginner": "Start as a beginner with scales", "intermediate": "Practise hands apart, then together",
              "advanced": "Voice chords to bring out the melody", "expert": "Colour tone with half-pedalling"},
}


def rewording_teacher(agrees: set[str]) -> SchemaTeacher:
    """Rewords every skill's tips as REWORDED; asked blind, names each tip's own tier for the skills in `agrees`
    and the next tier up for the others."""
    tiers = B.bench_vocabulary()["tip_tiers"]

    def answer(request) -> str:
        kind, skill = request.tag.split(":")
        if kind == "tips":
            return json.dumps(REWORDED[skill])
        shown = dict(line.split(": ", 1) for line in request.messages[-1].content.splitlines()
                     if line[:3] in {f"{k}: " for k in B.TIP_KEYS})
        tier_of = {tip: tier for tier, tip in REWORDED[skill].items()}
        return json.dumps({k: tiers[(tiers.index(tier_of[tip]) + (skill not in agrees)) % len(tiers)]
                           for k, tip in shown.items()})
    return SchemaTeacher(override=answer)


def test_reworded_tips_are_kept_only_where_the_blind_tier_check_agrees_with_every_label():
    cfg = load_config("tiny")
    teacher = rewording_teacher(agrees={"guitar"})
    tips, ways, results = tiered_tips(cfg, teacher, ["chess", "guitar", "piano"], TeacherStats())
    templates = B.tip_templates(cfg, ["chess", "guitar", "piano"])
    assert tips == {"guitar": REWORDED["guitar"], "chess": templates["chess"], "piano": templates["piano"]}
    assert ways == Counter({"teacher": 1, "tier_disagreement": 1, "names_a_tier": 1})
    checks = [r for r in teacher.requests if r.tag.startswith("tip-tier:")]
    assert [r.tag for r in checks] == ["tip-tier:chess", "tip-tier:guitar"]  # the piano tips named a tier: unasked
    for r in checks:
        assert r.sampling.temperature == 0.0
        listed = [line for line in r.messages[-1].content.splitlines() if line[:3] in {"a: ", "b: ", "c: ", "d: "}]
        assert len(listed) == 4 and not any(B.names_a_tier(line, list(REWORDED["chess"])) for line in listed)
    assert len(results) == 5


def test_tip_templates_give_every_tier_a_label_free_tip_within_the_length_ratio():
    cfg, vocab = load_config("tiny"), B.bench_vocabulary()
    tiers = vocab["tip_tiers"]
    for skill in PL.vocabulary()["skills"]:
        for combo in itertools.product(*(vocab["tip_templates"][t] for t in tiers)):
            texts = [B.shown(v.format(skill=skill)) for v in combo]
            assert B.rewording_problem(dict(zip(tiers, texts)), cfg.benchmark.max_option_length_ratio) is None
