"""The Persona-MME-style benchmark: the tiny preset end to end on a schema-following teacher (all 13 tasks, evidence
that resolves, every gate counted, an export that loads back and scores at chance for "always (a)" and 100% for
an oracle), and each gate on handmade good and bad items."""

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
    BenchmarkCandidate, BenchmarkItem, BigFive, Dialogue, ImageRecord, OptionFact, Persona,
    PersonaSeed, PlanItem, Profile, Provenance, Session, TimelinePlan, Turn, fmt_time,
)
from persona_factory.stages import benchmark as B
from persona_factory.stages import benchmark_gates as G
from persona_factory.stages import dialogues as D
from persona_factory.stages import plans as PL
from persona_factory.stages.benchmark_build import build_benchmark, tiered_tips
from persona_factory.stages.common import parse_time, personality_text
from persona_factory.stages.images import load_image_pool
from persona_factory.teacher.types import TeacherResult, TeacherStats

try:
    from tests.fake_openai import FakeOpenAI
    from tests.fake_teacher import SchemaTeacher, openai_responder
    from tests.test_histories import histories
except ImportError:
    from fake_openai import FakeOpenAI
    from fake_teacher import SchemaTeacher, openai_responder
    from test_histories import histories


# ---------------------------------------------------------------------------------------------- tiny preset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny-preset histories on the schema teacher, the benchmark built over them, and its native export."""
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


def test_tiny_covers_all_13_tasks_with_gold_letters(tiny):
    items = tiny.build.items
    assert {i.question_type for i in items} == set(B.TASKS)
    for i in items:
        assert i.type == B.TASKS[i.question_type]
        assert list(i.choices) == list(B.LETTERS) and i.answer in B.LETTERS
        assert len({v.lower() for v in i.choices.values()}) == 4
        assert tiny.personas[i.persona_id].split != "train"
    assert len({i.time for i in items if i.persona_id == items[0].persona_id}) == 1  # one probe time per persona
    assert any(i.alignment for i in items)
    assert 0.2 <= sum(bool(i.evidence_images) for i in items) / len(items) <= 0.5


def test_tiny_evidence_ids_resolve(tiny):
    for i in tiny.build.items:
        turns = {t.turn_index: t for t in tiny.dialogues[i.persona_id].turns}
        assert i.evidence_turns and all(k in turns and turns[k].time < i.time for k in i.evidence_turns)
        told = {r for k in i.evidence_turns for r in turns[k].realizes}
        assert set(i.source_item_ids) <= told
        assert set(i.evidence_images) <= {turns[k].image_id for k in i.evidence_turns}
        if i.question_type in (B.VDR, B.EII):
            assert i.evidence_images


def test_tiny_records_every_gate_per_task(tiny):
    build = tiny.build
    rows = {(r.gate, r.question_type): r for r in build.gate_counts}
    assert set(rows) == {(g, t) for g in G.GATES for t in B.TASKS}
    for gate in ("form", "time", "consistency", "near_duplicate", "blind"):
        assert all(rows[gate, t].checked > 0 for t in B.TASKS), gate
    assert all(0 <= r.rejected <= r.checked for r in rows.values())
    judges = {(a.judge, a.context) for a in build.blind_accuracy if a.answered}
    assert judges == {(j, c) for j in ("teacher", "second") for c in G.BLIND_CONTEXTS}
    assert tiny.second_judge.requests  # the extra judge was asked
    rejected = [c for c in build.candidates if c.rejected_by]
    assert {q.row_key.split(":")[1] for q in build.quarantined if q.rule != "teacher_failure"} \
        == {c.item.item_id for c in rejected}


def test_tiny_letters_balanced_per_task_and_overall(tiny):
    build = tiny.build
    overall = Counter(i.answer for i in build.items)
    assert max(overall.values()) - min(overall[k] for k in B.LETTERS) <= 1
    for task in B.TASKS:
        letters = Counter(i.answer for i in build.items if i.question_type == task)
        assert max(letters.values()) - min(letters[k] for k in B.LETTERS) <= 1


def test_export_loads_back_and_scores(tiny):
    build = tiny.build
    records = scorer.load_release(tiny.release)
    assert len(records) == len(build.items)
    assert {r["id"] for r in records} == {i.item_id for i in build.items}
    always_a = scorer.score(records, scorer.baseline_predictions(records, "always-a"))
    n = always_a.multiple_choice.total
    assert abs(always_a.multiple_choice.accuracy - 0.25) <= 1 / n
    assert always_a.alignment.total == 2 * sum("alignment" in r for r in records) > 0
    assert always_a.alignment.accuracy == 0.5
    oracle = scorer.score(records, scorer.baseline_predictions(records, "oracle"))
    assert oracle.overall.accuracy == 1.0 and oracle.overall.total == n + always_a.alignment.total
    assert set(oracle.per_task) == set(B.TASKS) | {scorer.ALIGNMENT}
    assert set(oracle.per_config) == {"32k", "128k"}


def test_rebuild_is_identical(tiny):
    teacher = SchemaTeacher()
    again = build_benchmark(tiny.cfg, teacher, {"teacher": teacher, "second": SchemaTeacher()}, tiny.personas,
                            tiny.plans, tiny.dialogues, tiny.images, TeacherStats())
    assert again.items == tiny.build.items
    assert again.gate_counts == tiny.build.gate_counts


def test_tiered_tips_stand_on_their_templates_when_the_teacher_fails_every_tips_request(tiny):
    failing = SchemaTeacher(override=lambda r: "no tips today" if r.tag.startswith("tips:") else None)
    build = build_benchmark(tiny.cfg, failing, {"teacher": failing}, tiny.personas, tiny.plans, tiny.dialogues,
                            tiny.images, TeacherStats())
    published = {i.item_id for i in build.items}
    ted = [c for c in build.candidates if c.item.question_type == B.TED and c.item.item_id in published]
    assert ted and not any(r.tag.startswith("tip-tier:") for r in failing.requests)  # nothing reworded to check
    assert set(build.tip_wording) == {"teacher_failure"}
    for c in ted:
        skill = c.option_facts[B.gold_text(c)].args[0]
        templates = B.tip_templates(tiny.cfg, [skill])[skill]
        assert {text: fact.args[1] for text, fact in c.option_facts.items()} \
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
    _plan_item("try", "event", "2024-05-05 08:00", "event", "tried bouldering for the first time"),
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


def history(user_turns=USER_TURNS) -> tuple[Dialogue, TimelinePlan, dict[str, ImageRecord]]:
    turns = [Turn(persona_id=PID, session_index=0, turn_index=k, time=t, user=u, assistant="Noted.", realizes=r,
                  image_id=img) for k, (t, u, r, img) in enumerate(user_turns)]
    dialogue = Dialogue(persona_id=PID, split="bench_32k", sessions=[Session(persona_id=PID, session_index=0,
                                                                             turns=turns)])
    plan = TimelinePlan(persona_id=PID, span_days=30, sessions=[], items=ITEMS)
    image = ImageRecord(image_id="img1", source="test", name="coffee", caption="a cup of coffee on a red saucer",
                        labels=["coffee", "cup", "saucer"], details={"What colour is the saucer?": "red"},
                        path="/dev/null", width=1, height=1, phash=0)
    return dialogue, plan, {"img1": image}


def candidate(task: str, query: str, options: list[tuple[str, str, list[str]]], evidence: list[int],
              sources: list[str], answer_type: str, gold: int = 0, images: tuple[str, ...] = (),
              time_phrase: str | None = None, item_id: str | None = None, persona_id: str = PID) -> BenchmarkCandidate:
    """options: (text, claim, claim args); the option at `gold` is the answer."""
    item = BenchmarkItem(item_id=item_id or f"q_{abs(hash((task, query, options[gold][0])))}", persona_id=persona_id,
                         bucket="50", type=B.TASKS[task], question_type=task, time=PROBE, query=query,
                         choices={B.LETTERS[k]: o[0] for k, o in enumerate(options)}, answer=B.LETTERS[gold],
                         evidence_turns=evidence, evidence_images=list(images), source_item_ids=sources)
    return BenchmarkCandidate(item=item, answer_type=answer_type, time_phrase=time_phrase,
                              option_facts={text: OptionFact(fact=f, args=a) for text, f, a in options})


def suggest(*texts: str, evidence=(1,), sources=("chess",), **kw) -> BenchmarkCandidate:
    return candidate(B.IPR, "I've got a free afternoon. Which of these would you suggest I spend it on?",
                     [(t, "likes_now", [t.lower()]) for t in texts], list(evidence), list(sources), "activity", **kw)


GOOD = suggest("Chess", "Pottery", "Knitting", "Archery")


def consistency(c: BenchmarkCandidate, user_turns=USER_TURNS) -> str | None:
    dialogue, plan, images = history(user_turns)
    return G.consistency_problem(c, dialogue, plan,
                                 G.HistoryState.replay(dialogue, plan, PROBE, _persona(("birdwatching",))), images)


def test_a_good_item_passes_every_item_gate():
    dialogue, _, _ = history()
    assert G.form_problem(GOOD, 1.5) is None
    assert G.time_problem(GOOD, dialogue) is None
    assert consistency(GOOD) is None


# ---------------------------------------------------------------------------------------------- form


def test_form_gate_catches_a_length_leaking_item():
    leaking = suggest("Chess with my club every Thursday night", "Pottery", "Knitting", "Archery")
    assert G.form_problem(leaking, 1.5).startswith("option_length_ratio")


def test_form_gate_catches_duplicate_and_nested_options():
    assert G.form_problem(suggest("Chess", "Pottery", "chess.", "Archery"), 1.5) == "duplicate_options"
    assert G.form_problem(suggest("Chess", "Pottery", "Pottery class", "Archery"), 1.5).startswith("nested_options")


def test_form_gate_catches_mixed_types_casing_and_gold_only_names():
    assert G.form_problem(suggest("Chess", "Pottery", "Maya", "Archery"), 1.5).startswith("mixed_answer_types")
    assert G.form_problem(suggest("Chess", "pottery", "Knitting", "Archery"), 1.5) == "inconsistent_casing"
    assert G.form_problem(suggest("Chess", "Pottery.", "Knitting", "Archery"), 1.5) == "inconsistent_punctuation"
    assert G.form_problem(suggest("Chess at Ravi's", "Pottery at home", "Knitting at home", "Archery at home"),
                          1.5).startswith("gold_only_specifics")


def test_form_gate_checks_closed_answer_types():
    tones = [("Warm and teasing", "tone_for", ["Maya", "warm and teasing"]),
             ("Polite and brief", "tone_for", ["Maya", "polite and brief"]),
             ("Casual and playful", "tone_for", ["Maya", "casual and playful"]),
             ("Formal and respectful", "tone_for", ["Maya", "formal and respectful"])]
    good = candidate(B.RDC, "I'm writing a message to Maya. What tone should I go for?", tones, [2], ["maya"], "tone")
    assert G.form_problem(good, 1.5) is None
    off = candidate(B.RDC, good.item.query, tones[:3] + [("Quick and to the point", "tone_for", ["Maya", "quick"])],
                    [2], ["maya"], "tone")
    assert G.form_problem(off, 1.5).startswith("mixed_answer_types")


# ---------------------------------------------------------------------------------------------- time


def photo_question(when: str, phrase: str | None) -> BenchmarkCandidate:
    return candidate(B.SIR, f"What did I send you a photo of {when}?",
                     [(t, "photo_of_on", ["2024-05-06", t.lower()]) for t in ("Coffee", "Horse", "Rocket", "Bicycle")],
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


def test_time_gate_judges_only_the_phrases_the_item_adds():
    """A weekday inside the routine asked about ("on Thursday nights") is the plan's wording, not a date."""
    q = questions([_plan_item("games", "routine", "2024-05-01 08:00", "on Thursday nights",
                              "play board games with friends")],
                  [("2024-05-12 09:06", "On Thursday nights I play board games with friends.", ["games"], None)])
    routine = q.candidate(next(d for d in q.drafts() if d.task == B.BPR))
    assert routine.item.query == "What do I usually do on Thursday nights?" and routine.time_phrase is None
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
        return suggest("Chess", "Pottery", "Knitting", "Archery", evidence=turns)
    assert consistency(with_evidence(42)) == "evidence_turn_missing: 42"
    assert consistency(with_evidence(6)) == "evidence_not_user_stated: 6"
    assert consistency(with_evidence(0)).startswith("source_not_in_evidence")
    unsaid = [(t, "Noted." if k == 1 else u, r, i) for k, (t, u, r, i) in enumerate(USER_TURNS)]
    assert consistency(GOOD, unsaid) == "evidence_not_user_stated: 1"  # only the assistant side would say it
    late = USER_TURNS[:1] + [("2024-05-12 11:00", "I also enjoy chess on weekends.", ["chess"], None)]
    assert consistency(GOOD, late) == "evidence_after_probe: 1"


def test_consistency_gate_catches_a_distractor_the_user_mentioned_or_the_profile_likes():
    mentioned = USER_TURNS + [("2024-05-12 09:08", "Archery looked fun on TV.", [], None)]
    assert consistency(GOOD, mentioned) == "distractor_mentioned_in_history: 'archery'"
    assert consistency(suggest("Chess", "Pottery", "Knitting", "Birdwatching")) \
        == "distractor_true_in_history: 'Birdwatching'"  # the profile the model sees lists it


def test_consistency_gate_verifies_image_details_and_causes():
    detail = candidate(B.VDR, "In the photo of the coffee I sent you on Monday, what colour is the saucer?",
                       [(t, "image_detail", ["img1", "What colour is the saucer?", t.lower()])
                        for t in ("Red", "Blue", "Green", "White")], [4], ["photo"], "visual colour",
                       images=("img1",), time_phrase="on Monday")
    assert consistency(detail) is None
    wrong = detail.model_copy(update={"item": detail.item.model_copy(update={"answer": "(b)"})})
    assert consistency(wrong) == "distractor_true_in_history: 'Red'"  # the real colour offered as wrong
    cause = candidate(B.IEA, "I used to be really into pottery, but something changed that. What set it off?",
                      [(f"My first go at {h}", "shift_cause", ["pottery", h])
                       for h in ("bouldering", "archery", "sailing", "knitting")], [3, 5], ["try", "shift"],
                      "first try")
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
    dialogue, _, _ = history()
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
    assert rows["judge1", "query_only", B.IPR] == (2, 2) and rows["judge2", "profile_only", B.IPR] == (1, 0)
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


# ---------------------------------------------------------------------------------------------- balance, letters


def lgt(k: int, state: str, gold: int = 0) -> BenchmarkCandidate:
    states = B.bench_vocabulary()["goal_states"]
    order = [state] + [s for s in states if s != state]
    options = [(states[s], "goal_status", ["goal", s]) for s in order]
    return candidate(B.LGT, f"Did I ever finish my goal number {k}?", options, [0], ["pot"], "goal state",
                     gold=0, item_id=f"q_{k:02d}")


def test_balance_gate_evens_out_goal_states_and_unknown_answers():
    skewed = [lgt(k, "unknown") for k in range(7)] + [lgt(7, "finished"), lgt(8, "gave up")]
    problems = G.balance_problems(skewed, 0.05)
    assert problems and all(v.startswith(("goal_state_skewed: unknown", "unknown_answer_gold")) for v in problems.values())
    kept = [c for c in skewed if c.item.item_id not in problems]
    assert G.binomial_tail(sum(B.goal_state_group(c) == "unknown" for c in kept), len(kept), 1 / 3) >= 0.05
    unknown_gold = sum(G.is_unknown_answer(B.gold_text(c)) for c in kept)
    assert unknown_gold <= len(kept) - unknown_gold  # "You didn't tell me" is a distractor at least as often
    balanced = [lgt(k, s) for k, s in enumerate(["finished", "gave up", "unknown", "making progress", "unknown",
                                                 "finished"])]
    assert G.balance_problems(balanced, 0.05) == {}


def test_balance_gate_catches_gold_that_is_longest_too_often():
    leak = [suggest("Woodworking", "Chess", "Golf", "Yoga", item_id=f"q_{k:02d}") for k in range(10)]
    problems = G.balance_problems(leak, 0.05)
    assert problems and set(problems.values()) == {"gold_uniquely_longest_too_often"}
    assert G.balance_problems(leak[:2], 0.05) == {}  # two in a row happen by chance


def test_letters_are_balanced_by_construction_and_verified():
    cfg = load_config("tiny")
    items = [suggest("Chess", "Pottery", "Knitting", "Archery", item_id=f"q_{k:02d}") for k in range(9)]
    assert set(G.letter_problems(items).values()) == {"gold_letter_imbalance: (a)"}  # all gold (a)
    lettered = B.assign_letters(cfg, items)
    assert G.letter_problems(lettered) == {}
    assert all(c.item.choices[c.item.answer] == "Chess" for c in lettered)
    assert sorted(Counter(c.item.answer for c in lettered).values()) == [2, 2, 2, 3]


# ---------------------------------------------------------------------------------------------- alignment


def _persona(likes: tuple[str, ...] = ("birds",)) -> Persona:
    return Persona(
        persona_id=PID, seed=PersonaSeed(seed_id="s", text="A birdwatcher.", source="test"), split="bench_32k",
        shard="shard-000", role_description="Watches birds.",
        profile=Profile.model_validate({"name": "Ana", "gender": "female", "age": 30, "preferences": list(likes),
                                        "recent matters": [], "requirements or expectations": "brief",
                                        "update time": "2024-05-01 09:00"}),
        big_five=BigFive(openness=4, conscientiousness=3, extraversion=2, agreeableness=3, neuroticism=2),
        start_time="2024-05-01 09:00")


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
        assert len(prompts) == 2, item.query  # chosen and rejected, both for this item's query
        assert item.alignment["chosen"] != item.alignment["rejected"]
    chosen_prompt = next(r.messages[1].content for r in asked if r.tag.endswith(":chosen"))
    pid = next(r.tag.split(":")[1] for r in asked if r.tag.endswith(":chosen"))
    probe = fmt_time(B.probe_time(tiny.cfg, tiny.dialogues[pid]))
    now = D.current_personality(tiny.personas[pid], tiny.plans[pid], probe)
    assert personality_text(now) in chosen_prompt
    kinds = Counter("generic" if "generic" in r.messages[1].content else "other_profile"
                    for r in asked if r.tag.endswith(":rejected"))
    assert abs(kinds["generic"] - kinds["other_profile"]) <= len(per_persona)


def test_vocabulary_matches_the_plan_vocabulary():
    bench = B.bench_vocabulary()
    assert set(bench["photo_purposes"]) == set(PL.vocabulary()["photo_purposes"])
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


def questions(extra_items: list[PlanItem], extra_turns: list) -> B.PersonaQuestions:
    dialogue, plan, images = history(USER_TURNS + extra_turns)
    plan = plan.model_copy(update={"items": [*plan.items, *extra_items]})
    return B.PersonaQuestions(load_config("tiny"), _persona(), dialogue, plan, images,
                              B.answer_type_pools([plan], list(images.values())), TIPS)


def test_goals_and_skills_told_only_by_a_later_report_are_still_asked():
    q = questions([
        _plan_item("goal", "goal", "2024-05-01 08:00", "run a marathon", "started"),
        _plan_item("gave", "goal_update", "2024-05-11 08:00", "run a marathon", "gave up", previous_value="started",
                   cause_item_id="goal"),
        _plan_item("skill", "skill", "2024-05-01 08:00", "guitar", "beginner"),
        _plan_item("level", "skill_update", "2024-05-11 08:00", "guitar", "intermediate", previous_value="beginner",
                   cause_item_id="skill"),
    ], [("2024-05-12 09:06", "About my goal to run a marathon: I gave up on it.", ["gave"], None),
        ("2024-05-12 09:08", "I have now reached intermediate level at guitar.", ["level"], None)])
    drafts = {d.task: d for d in q.drafts()}
    assert drafts[B.LGT].options[0] == ("No, you gave it up", ["run a marathon", "gave up"])
    assert [t.turn_index for t in drafts[B.LGT].evidence] == [7]
    assert drafts[B.TED].options[0] == ("Practise barre chord changes", ["guitar", "intermediate"])
    state = G.HistoryState.replay(q.dialogue, q.plan, PROBE, _persona(()))
    for c in (q.candidate(drafts[B.LGT]), q.candidate(drafts[B.TED])):
        assert G.form_problem(c, 1.5) is None and G.time_problem(c, q.dialogue) is None
        assert G.consistency_problem(c, q.dialogue, q.plan, state, q.images) is None


def test_the_most_present_person_counts_events_without_a_relationship_turn():
    q = questions([
        _plan_item("omar1", "event", "2024-05-11 08:00", "event", "went to a jazz concert", person="Omar"),
        _plan_item("omar2", "event", "2024-05-11 09:00", "event", "helped a friend move flats", person="Omar"),
        _plan_item("maya1", "event", "2024-05-11 10:00", "event", "baked bread for the first time", person="Maya"),
    ], [("2024-05-12 09:06", "I went to a jazz concert with Omar.", ["omar1"], None),
        ("2024-05-12 09:08", "I helped a friend move flats with Omar.", ["omar2"], None),
        ("2024-05-12 09:10", "I baked bread for the first time with Maya.", ["maya1"], None)])
    most = next(d for d in q.drafts() if d.fact == "most_present")
    assert most.options[0] == ("Omar", ["Omar"]) and "Maya" in [o[0] for o in most.options]
    state = G.HistoryState.replay(q.dialogue, q.plan, PROBE, _persona(()))
    assert G.consistency_problem(q.candidate(most), q.dialogue, q.plan, state, q.images) is None


def test_distractors_are_never_nested_in_each_other():
    q = questions([], [])
    pool = ["the science museum", "visited the science museum", "saw a play", "saw a play at the theatre",
            "went to a wedding", "went ice skating", "went to a flea market"]
    for _ in range(20):
        picked = q.choose("went to a jazz concert", [], pool)
        keys = [f" {v} " for v in ["went to a jazz concert", *picked]]
        assert not any(a != b and a in b for a in keys for b in keys)


def test_likes_at_applies_the_shifts_dated_by_then_and_with_told_only_the_told_ones():
    """One answer to "what does the user like at this time" for the dialogue checks, alignment replies and the
    benchmark's questions and gates."""
    dialogue, plan, _ = history()
    persona = _persona()
    assert PL.likes_at(persona, plan, "2024-05-09 00:00") == ("birds", "pottery", "chess")
    assert PL.likes_at(persona, plan, PROBE) == ("birds", "chess", "bouldering")
    assert PL.likes_at(persona, plan, PROBE, told={"pot", "chess"}) == ("birds", "pottery", "chess")
    likes_then = lambda time: {i.item_id for i in D.standing_facts(persona, plan, time)  # noqa: E731
                               if i.kind.startswith("preference")}
    assert likes_then("2024-05-09 00:00") == {"pot", "chess"} and likes_then(PROBE) == {"chess", "shift"}
    told = {i for t in dialogue.turns for i in t.realizes}
    assert G.HistoryState.replay(dialogue, plan, PROBE, persona).likes == set(PL.likes_at(persona, plan, PROBE, told))
    liked, replaced = questions([], []).likes_now()
    assert [i.item_id for i in liked] == ["chess", "shift"] and replaced == ["pottery"]


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
