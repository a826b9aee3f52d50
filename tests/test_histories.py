"""Personas, timeline plans and dialogues on a schema-following fake teacher: the plan is the ground truth, and the
dialogue realizes it in order, passes the structural rules, and quarantines what it cannot realize."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections import Counter

import pytest

from persona_factory.config import load_config
from persona_factory.schema import bucket_of
from persona_factory.stages import dialogues as D
from persona_factory.stages import personas as P
from persona_factory.stages import plans as PL
from persona_factory.stages.common import contains_phrase, parse_time, phrase_pattern
from persona_factory.stages.images import load_image_pool
from persona_factory.teacher.types import TeacherRequest, TeacherStats
from quality.validate import structural_violations

try:
    from tests.fake_teacher import SchemaTeacher, answer
except ImportError:
    from fake_teacher import SchemaTeacher, answer


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    cfg = load_config("tiny")
    pool, quarantined = load_image_pool(cfg.image_source, tmp_path_factory.mktemp("images"))
    assert not quarantined
    return pool


def histories(cfg, images, teacher=None):
    teacher = teacher or SchemaTeacher()
    assigned = P.assign_splits(P.load_seeds(cfg.persona_source), cfg)
    personas, _ = P.build_personas(cfg, assigned, teacher.generate(
        [P.enrichment_request(cfg, a.seed, P.sample_big_five(cfg, a.seed)) for a in assigned]))
    plans, _ = PL.build_plans(cfg, personas, teacher.generate([PL.plan_request(cfg, p) for p in personas]), images)
    return personas, plans


@pytest.fixture(scope="module")
def tiny(images):
    cfg = load_config("tiny")
    personas, plans = histories(cfg, images)
    teacher = SchemaTeacher()
    dialogues, quarantined = D.generate_dialogues(cfg, teacher, personas, plans, images, TeacherStats())
    return cfg, personas, plans, dialogues, quarantined, teacher


# ---------------------------------------------------------------------------------------------- personas


def test_personas_are_stable_balanced_over_shards_and_disjoint(images):
    cfg = load_config("tiny")
    a, _ = histories(cfg, images)
    b, _ = histories(cfg, images)
    assert [p.persona_id for p in a] == [p.persona_id for p in b]
    assert Counter(p.split for p in a) == {"train": 2, "bench_32k": 1, "bench_128k": 1}
    assert Counter(p.shard for p in a) == {"shard-000": 2, "shard-001": 2}
    assert len({p.seed.seed_id for p in a}) == len(a)


def test_shards_are_sized_from_the_config():
    assert load_config("paper").personas.shards == 28
    assert P.shard_keys(load_config("tiny", overrides={"personas": {"per_shard": 3}})) == ["shard-000", "shard-001"]


# ---------------------------------------------------------------------------------------------- plans


def test_bench_plans_hold_every_kind_the_benchmark_needs(tiny):
    _, personas, plans, *_ = tiny
    bench = {p.persona_id for p in personas if p.split != "train"}
    for plan in (p for p in plans if p.persona_id in bench):
        kinds = Counter(i.kind for i in plan.items)
        for kind in ("preference", "dislike", "preference_shift", "event", "routine", "goal", "relationship",
                     "skill", "style", "photo_share"):
            assert kinds[kind] >= 1, (kind, kinds)
        assert kinds["relationship"] == 2
        people = Counter(i.person for i in plan.items if i.kind == "event" and i.person)
        assert people and max(people.values()) >= 1


def test_plan_items_are_dated_in_the_session_that_tells_them(tiny):
    _, _, plans, *_ = tiny
    for plan in plans:
        starts = [s.start for s in plan.sessions]
        assert starts == sorted(starts)
        for item in plan.items:
            if not PL.realizable(item):
                continue
            k = PL.told_in(plan.sessions, item)
            assert item.time <= starts[k] and (k == 0 or item.time > starts[k - 1])


def test_planned_changes_follow_their_causes(tiny):
    _, _, plans, *_ = tiny
    for plan in plans:
        items = {i.item_id: i for i in plan.items}
        for item in plan.items:
            if item.cause_item_id:
                cause = items[item.cause_item_id]
                assert cause.time <= item.time
                if item.kind in ("preference_shift", "goal_update", "skill_update"):
                    assert PL.told_in(plan.sessions, cause) < PL.told_in(plan.sessions, item)
            if item.kind == "preference_shift":
                assert item.previous_value in {i.value for i in plan.items if i.kind == "preference"}


def test_relation_tones_come_from_the_vocabulary(tiny):
    _, _, plans, *_ = tiny
    for item in (i for p in plans for i in p.items if i.kind == "relationship"):
        assert PL.relation_tone(item.value)


def test_a_short_history_keeps_the_small_talk_share(images):
    cfg = load_config("tiny", overrides={"dialogue": {"turns_train": {"min": 6, "max": 6}}})
    personas, plans = histories(cfg, images)
    for persona, plan in zip(personas, plans):
        if persona.split == "train":
            told = [i for i in plan.items if PL.realizable(i)]
            assert len(told) <= 6 - round(cfg.plan.small_talk_share * 6)


# ---------------------------------------------------------------------------------------------- dialogues


def test_dialogues_pass_the_structural_rules(tiny):
    cfg, _, plans, dialogues, quarantined, _ = tiny
    plan_items = {p.persona_id: {i.item_id for i in p.items} for p in plans}
    for d in dialogues:
        assert structural_violations(d, plan_items[d.persona_id], cfg.dialogue.session_gap_minutes) == []
        for t in d.turns:
            assert t.user.count("<img>") == (1 if t.image_id else 0) and "<img>" not in t.assistant
    assert [t.turn_index for d in dialogues for t in d.turns] == [i for d in dialogues for i in range(len(d.turns))]


def test_turn_counts_and_image_share_follow_the_preset(tiny):
    cfg, personas, _, dialogues, _, _ = tiny
    split = {p.persona_id: p.split for p in personas}
    for d in dialogues:
        rng = {"train": cfg.dialogue.turns_train, "bench_32k": cfg.dialogue.turns_32k,
               "bench_128k": cfg.dialogue.turns_128k}[split[d.persona_id]]
        assert rng.min <= len(d.turns) <= rng.max
        share = sum(t.image_id is not None for t in d.turns) / len(d.turns)
        assert abs(share - cfg.dialogue.image_turn_share) < 0.05


def test_every_plan_item_is_realized_or_quarantined(tiny):
    _, _, plans, dialogues, quarantined, _ = tiny
    realized = {i for d in dialogues for t in d.turns for i in t.realizes}
    excused = {q.row_key.split(":")[1] for q in quarantined if q.table_name == "timeline_plans"}
    for plan in plans:
        for item in plan.items:
            if PL.realizable(item):
                assert item.item_id in realized | excused


def test_realizing_turns_state_their_phrases(tiny):
    _, _, plans, dialogues, _, _ = tiny
    items = {i.item_id: i for p in plans for i in p.items}
    for t in (t for d in dialogues for t in d.turns if t.realizes):
        for phrase in PL.realization(items[t.realizes[0]]).phrases:
            assert contains_phrase(t.user, phrase)


@pytest.mark.parametrize("text, phrases, fits", [
    ("I have been gardening a lot.", ("gardening",), True),
    ("Gardening", ("gardening",), True),
    ("Anna, 20, 2024-04-30 19:32:0Gardening", ("gardening",), False),  # glued to what stands before it
    ("bob_user_1950 is my neighbour", ("Bob", "neighbour"), False),  # glued to what follows it
    ("My neighbour's name is Bob!", ("Bob", "neighbour"), True),  # either order, any separator
    ("The user:TheuserTombstone", ("Tom",), False),
])
def test_the_phrase_grammar_admits_a_phrase_only_as_whole_words(text, phrases, fits):
    """What the grammar lets a teacher write is what the whole-word check keeps: a turn the grammar admits is never
    refused for a missing phrase."""
    admitted = re.fullmatch(phrase_pattern(phrases, 160), text) is not None
    assert admitted == fits
    assert not admitted or all(contains_phrase(text, p) for p in phrases)


UNITS = ["session", "turn"]


def unit_config(unit: str, **overrides):
    dialogue = {"draft_unit": unit, **overrides.pop("dialogue", {})}
    teacher = {"max_model_len": 4096, **overrides.pop("teacher", {})}  # room for whole-session drafts
    return load_config("tiny", overrides={"dialogue": dialogue, "teacher": teacher, **overrides})


class ShuffledTeacher(SchemaTeacher):
    """Answers like SchemaTeacher, each call after a seeded random number of event-loop turns (one persona's
    calls after many more), so answers arrive in an order unrelated to the order they were asked in."""

    def __init__(self, override=None, seed: int = 0, slow: str | None = None):
        super().__init__(override)
        self.rng, self.slow = random.Random(seed), slow
        self.order: list[str] = []  # tags of the calls, in the order they were answered

    async def agenerate(self, requests, stats=None, priority=0):
        slow = self.slow is not None and any(r.owner == self.slow for r in requests)
        for _ in range(self.rng.randint(0, 5) + (400 if slow else 0)):
            await asyncio.sleep(0)
        self.order += [r.tag for r in requests]
        return self.generate(requests, stats)


@pytest.mark.parametrize("unit", UNITS)
def test_personas_never_wait_for_each_other(images, unit):
    """No barrier between personas: while one persona's first session is still being answered, every other
    persona writes all its sessions."""
    cfg = unit_config(unit)
    personas, plans = histories(cfg, images)
    slow = sorted(p.persona_id for p in personas)[0]
    teacher = ShuffledTeacher(slow=slow)
    D.generate_dialogues(cfg, teacher, personas, plans, images, TeacherStats())
    drafts = [t for t in teacher.order if t.startswith(f"{unit}:")]
    first_of_slow = next(i for i, t in enumerate(drafts) if t.split(":")[1] == slow)
    others = [t for t in drafts if t.split(":")[1] != slow]
    assert len(set(others[:first_of_slow])) == len(others)  # every other persona's drafts came first
    assert len(drafts) == (sum(len(p.sessions) for p in plans) if unit == "session"
                           else sum(s.n_turns for p in plans for s in p.sessions))


@pytest.mark.parametrize("in_flight", [1, 3])
@pytest.mark.parametrize("unit", UNITS)
def test_the_order_answers_arrive_in_changes_nothing(images, unit, in_flight):
    """Results are keyed by request: with rewrites and judges in play and sessions of one history in flight
    together, any arrival order gives the same dialogues, quarantine rows and failures."""
    cfg = unit_config(unit, dialogue={"sessions_in_flight": in_flight})
    personas, plans = histories(cfg, images)
    flaky = _edit_first_drafts(unit, lambda user, pid: "Just chatting today.",
                               lambda tag: int(tag.split(":")[2]) % 3 == 0)
    outcomes = []
    for teacher in (SchemaTeacher(flaky), ShuffledTeacher(flaky, seed=1), ShuffledTeacher(flaky, seed=2)):
        failures: list = []
        dialogues, quarantined = D.generate_dialogues(cfg, teacher, personas, plans, images, TeacherStats(),
                                                      failures)
        outcomes.append(([d.model_dump() for d in dialogues], quarantined, [f.tag for f in failures]))
    assert outcomes[0] == outcomes[1] == outcomes[2]
    assert any(t.startswith("repair:") for t in teacher.order)


class SessionWatcher(ShuffledTeacher):
    """Counts, per persona, the sessions whose drafts are being answered at the same moment."""

    def __init__(self, seed: int):
        super().__init__(seed=seed)
        self.open: dict[str, set[int]] = {}
        self.most: dict[str, int] = {}

    async def agenerate(self, requests, stats=None, priority=0):
        drafts = [r.tag.split(":") for r in requests if r.tag.startswith("session:")]
        for _, pid, k in drafts:
            self.open.setdefault(pid, set()).add(int(k))
            self.most[pid] = max(self.most.get(pid, 0), len(self.open[pid]))
        try:
            return await super().agenerate(requests, stats, priority)
        finally:
            for _, pid, k in drafts:
                self.open[pid].discard(int(k))


def test_a_history_writes_its_sessions_in_flight_together_and_reports_them_in_order(images):
    """With `dialogue.sessions_in_flight` 3, up to three sessions of one history are drafted at once; session k's
    prompt carries the statements told up to session k - 3 and none told later; sessions are reported final in
    order, each report a prefix of the finished dialogue."""
    cfg = unit_config("session", dialogue={"sessions_in_flight": 3})
    personas, plans = histories(cfg, images)
    teacher = SessionWatcher(seed=3)
    reports: dict[str, list[tuple[int, list]]] = {}

    def session_done(persona, plan, dialogue, sessions, whole):
        reports.setdefault(persona.persona_id, []).append((sessions, [s.model_dump() for s in dialogue.sessions]))

    dialogues, _ = teacher.run(D.write_dialogues(cfg, teacher, personas, plans, images, TeacherStats(),
                                                 session_done=session_done))
    assert max(teacher.most.values()) == 3
    for plan, dialogue in zip(sorted(plans, key=lambda p: p.persona_id), dialogues):
        final = [s.model_dump() for s in dialogue.sessions]
        assert [n for n, _ in reports[plan.persona_id]] == list(range(1, len(plan.sessions) + 1))
        assert all(sessions == final[:n] for n, sessions in reports[plan.persona_id])
        statements = {i.item_id: PL.realization(i).statement for i in plan.items if PL.realizable(i)}
        told = [(s.session_index, statements[t.realizes[0]]) for s in dialogue.sessions for t in s.turns if t.realizes]
        for k in range(3, len(plan.sessions)):
            [prompt] = [r.messages[1].content for r in teacher.requests if r.tag == f"session:{plan.persona_id}:{k}"]
            carried = [s for s, statement in told if statement in prompt]
            assert carried and max(carried) <= k - 3


@pytest.mark.parametrize("unit", UNITS)
def test_prompts_do_not_grow_with_the_history(images, unit):
    """Prompt size per turn for a 20-turn vs a 300-turn history stays within 1.5x. One session in flight, so every
    session after the first carries the history's bounded state (with n in flight the first n carry nothing, which
    would make a 3-session history look cheap rather than a long one costly)."""
    def per_turn(turns: int) -> float:
        cfg = unit_config(unit, personas={"train": 1, "bench_32k": 0, "bench_128k": 0},
                          dialogue={"turns_train": {"min": turns, "max": turns}, "sessions_in_flight": 1},
                          plan={"span_days_train": 31})
        personas, plans = histories(cfg, images)
        teacher = SchemaTeacher()
        D.generate_dialogues(cfg, teacher, personas, plans, images, TeacherStats())
        sent = [r for r in teacher.requests if r.tag.startswith(f"{unit}:")]
        chars = sum(len(m.content if isinstance(m.content, str) else m.content[-1]) for r in sent
                    for m in r.messages)
        return chars / turns

    assert per_turn(300) / per_turn(20) <= 1.5


def _edit_first_drafts(unit: str, edit, only=lambda tag: True):
    """An override that passes first drafts (either unit) through `edit(user_text, persona_id)`."""
    def override(req: TeacherRequest) -> str | None:
        if not req.tag.startswith(f"{unit}:") or not only(req.tag):
            return None
        data = json.loads(answer(req.json_schema(), req.sampling.seed))
        for turn in data.get("turns", [data]):
            turn["user"] = edit(turn["user"], req.tag.split(":")[1])
        return json.dumps(data)
    return override


@pytest.mark.parametrize("unit", UNITS)
def test_failed_drafts_are_rewritten_turn_by_turn(images, unit):
    """First drafts of the first session that lack their phrases fail validation; each failed turn is rewritten
    alone, and all of them make it into the dialogue."""
    cfg = unit_config(unit)
    personas, plans = histories(cfg, images)
    first = {p.persona_id: p.sessions[0].n_turns for p in plans}

    def in_first_session(tag: str) -> bool:
        _, pid, index = tag.split(":")
        return index == "0" if unit == "session" else int(index) < first[pid]

    teacher = SchemaTeacher(_edit_first_drafts(unit, lambda user, pid: "Just chatting today.", in_first_session))
    dialogues, quarantined = D.generate_dialogues(cfg, teacher, personas, plans, images, TeacherStats())
    repairs = [r for r in teacher.requests if r.tag.startswith("repair:")]
    if unit == "session":
        assert len(repairs) == sum(first.values())  # the whole session failed its schema
    else:
        assert 0 < len(repairs) < sum(first.values())  # small-talk turns need no phrase and stand
    assert not [q for q in quarantined if q.table_name == "dialogue_turns"]
    assert sum(len(d.turns) for d in dialogues) == sum(s.n_turns for p in plans for s in p.sessions)
    assert all("Just chatting today." not in t.user for d in dialogues for t in d.turns if t.realizes)


def test_a_turn_that_stays_wrong_is_quarantined_and_its_item_unrealized(images):
    cfg = load_config("tiny", overrides={"dialogue": {"constrain_phrases": False, "realization_retries": 1}})
    personas, plans = histories(cfg, images)
    target = next(i for i in plans[0].items if i.kind == "relationship")

    def never_name(req: TeacherRequest) -> str | None:
        raw = answer(req.json_schema(), req.sampling.seed)
        return raw.replace(target.subject, "someone")

    teacher = SchemaTeacher(never_name)
    dialogues, quarantined = D.generate_dialogues(cfg, teacher, personas, plans, images, TeacherStats())
    rules = {(q.table_name, q.rule) for q in quarantined}
    assert ("dialogue_turns", "missing_phrase") in rules
    assert any(q.rule == "unrealized" and q.row_key.endswith(target.item_id) for q in quarantined)
    assert target.item_id not in {i for d in dialogues for t in d.turns for i in t.realizes}
    assert len([r for r in teacher.requests if r.tag.startswith("repair:")]) >= 1


@pytest.mark.parametrize("unit", UNITS)
def test_a_new_interest_before_its_shift_is_rejected(images, unit):
    """The plan drives the dialogue: a planned preference shift appears only after its cause event."""
    cfg = unit_config(unit)
    personas, plans = histories(cfg, images)
    shifts = {p.persona_id: next(i for i in p.items if i.kind == "preference_shift") for p in plans
              if any(i.kind == "preference_shift" for i in p.items)}
    assert shifts
    teacher = SchemaTeacher(_edit_first_drafts(
        unit, lambda user, pid: user + (f" Also, {shifts[pid].value} looks fun." if pid in shifts else "")))
    dialogues, quarantined = D.generate_dialogues(cfg, teacher, personas, plans, images, TeacherStats())
    assert any("premature_shift" in r.messages[1].content for r in teacher.requests if r.tag.startswith("repair:"))
    items = {i.item_id: i for p in plans for i in p.items}
    for d in dialogues:
        shift = shifts.get(d.persona_id)
        if shift is None:
            continue
        cause_turns = [t for t in d.turns if shift.cause_item_id in t.realizes]
        for t in d.turns:
            if contains_phrase(t.user, shift.value):
                assert t.time >= shift.time or shift.cause_item_id in t.realizes
        if cause_turns:
            shift_turns = [t for t in d.turns if shift.item_id in t.realizes]
            assert all(parse_time(s.time) > parse_time(cause_turns[0].time) for s in shift_turns)
        assert items[shift.cause_item_id].time < shift.time


@pytest.mark.parametrize("unit", UNITS)
def test_a_denied_fact_goes_to_the_judge(images, unit):
    cfg = unit_config(unit)
    personas, plans = histories(cfg, images)
    replaced = {i.previous_value for p in plans for i in p.items if i.kind == "preference_shift"}
    pref = {p.persona_id: i for p in plans for i in p.items if i.kind == "preference" and i.value not in replaced}
    assert pref
    deny = _edit_first_drafts(unit, lambda user, pid: user + (
        f" I never liked {pref[pid].value} anyway." if pid in pref else ""))
    teacher = SchemaTeacher(lambda req: json.dumps({"consistent": False}) if req.tag.startswith("judge:")
                            else deny(req))
    dialogues, quarantined = D.generate_dialogues(cfg, teacher, personas, plans, images, TeacherStats())
    assert [r for r in teacher.requests if r.tag.startswith("judge:")]
    assert any("contradiction" in r.messages[1].content for r in teacher.requests if r.tag.startswith("repair:"))
    for d in (d for d in dialogues if d.persona_id in pref):
        for t in d.turns:
            assert f"never liked {pref[d.persona_id].value}" not in t.user or pref[d.persona_id].time > t.time


@pytest.mark.parametrize("unit", UNITS)
def test_image_teachers_see_every_shared_photo(images, unit):
    cfg = unit_config(unit, teacher={"supports_images": True})
    personas, plans = histories(cfg, images)
    teacher = SchemaTeacher()
    D.generate_dialogues(cfg, teacher, personas, plans, images, TeacherStats())
    with_photos = [r for r in teacher.requests if r.tag.startswith(f"{unit}:") and not isinstance(
        r.messages[1].content, str)]
    photos = sum(1 for p in plans for i in p.items if i.kind == "photo_share")
    assert sum(len(r.messages[1].content) - 1 for r in with_photos) == photos > 0


def test_paper_scale_plans_fit_their_sessions_and_buckets(images):
    """At the paper preset's sizes every item is told in the session it is dated for (photos included) and each
    benchmark history is sized for the Persona-MME bucket its persona was assigned."""
    cfg = load_config("paper", overrides={"personas": {"train": 3, "bench_32k": 4, "bench_128k": 4}})
    personas, plans = histories(cfg, images)
    by_image = {i.image_id: i for i in images}
    assert {p.bucket for p in personas if p.split != "train"} == {"50", "100", "200", "500"}
    for persona, plan in zip(personas, plans):
        if persona.bucket is not None:
            assert bucket_of(persona.split, sum(s.n_turns for s in plan.sessions)) == persona.bucket
        slots, unplaced = D.plan_slots(cfg, persona, plan, by_image)
        assert unplaced == []
        for session in slots:
            for slot in (s for s in session if s.item is not None):
                assert PL.told_in(plan.sessions, slot.item) == slot.session_index
