"""The model-free shortcut audit: no rule fires on a clean synthetic release, each rule fires on a release with its
shortcut planted, the command's exit codes and errors, and the blocking check that keeps such a release unpublished."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from persona_factory.stages.common import stable_id
from pipelines.resources import FactoryConfig
from quality import audit
from quality.audit import FAIL, NOT_APPLICABLE, PASS, AuditInput, Rate, credit, run_audit
from tests.audit_world import Shortcuts, synthetic_release, write_release
from tests.curation_world import CURATION, clean_world, materialize, write_world


def failed(report: audit.AuditReport) -> dict[str, str]:
    """Failing rule -> all its breaches in one string."""
    return {r.name: " | ".join(f"{s}: {w}" for s, w in r.failures) for r in report.failed}


@pytest.fixture(scope="module")
def clean() -> AuditInput:
    return synthetic_release(seed=0)


# ---------------------------------------------------------------------------------------------- the rules


@pytest.mark.parametrize("seed", [0, 1])
def test_a_clean_release_breaks_no_rule_and_every_rule_applies(seed):
    inp = synthetic_release(seed=seed)
    assert len(inp.records) >= 300 and len({r["question_type"] for r in inp.records}) == 13
    report = run_audit(inp)
    assert {r.name: r.status for r in report.rules} == {rule.name: PASS for rule in audit.RULES}, report.markdown()
    assert report.passed
    f = report.findings
    assert f.accuracy["BM25 reader"]["overall"].value > 0.9  # the history answers every item
    assert f.accuracy["BM25 reader, no evidence"]["overall"].value < 0.35  # and only its evidence does


PLANTED = {  # shortcut -> (the rule that must fire, words its breach must name)
    "gold_longest": (Shortcuts(gold_longest=True), "blind_overall", "longest option"),
    "gold_in_query": (Shortcuts(gold_in_query=True), "blind_overall", "query overlap"),
    "gold_in_profile": (Shortcuts(gold_in_profile=True), "blind_overall", "profile overlap"),
    "history_emptied": (Shortcuts(history_emptied=True), "history_helps", "best blind solver"),
    "ids_hashed_from_gold": (Shortcuts(ids_from_gold=True), "id_not_from_answer",
                             "sha1(persona, task, query, option; joined by \\x1f): 338 of 338"),
    "rotating_letters": (Shortcuts(rotating_letters=True), "letters_unpredictable", "permutation blocks"),
    "answers_repeated": (Shortcuts(repeated_answer_tasks=2), "blind_per_task", "answer prior"),
    "evidence_ids_dropped": (Shortcuts(unlisted_gold_turn=True), "evidence_needed", "BM25 reader, no evidence"),
    "gold_only_mentioned": (Shortcuts(gold_only_mentioned=True), "gold_not_only_mentioned", "overall"),
}


@pytest.mark.parametrize("shortcut", PLANTED)
def test_each_planted_shortcut_fires_its_rule(shortcut):
    plant, rule, named = PLANTED[shortcut]
    report = run_audit(synthetic_release(seed=0, plant=plant))
    breaches = failed(report)
    assert rule in breaches, report.markdown()
    assert named in breaches[rule]
    assert not report.passed


def test_rotating_letters_are_caught_in_both_orders_and_by_both_statistics():
    report = run_audit(synthetic_release(seed=0, plant=Shortcuts(rotating_letters=True)))
    tests = {(t.order, t.statistic): t for t in report.findings.sequences}
    assert len(tests) == 4
    assert all(t.p_value < 0.001 for t in tests.values())
    assert tests["id order", "permutation blocks"].observed == 1.0  # every block of four is a permutation


def test_ids_carrying_the_gold_letter_are_caught(clean):
    records = [dict(r) for r in clean.records]
    for n, r in enumerate(records):
        r["id"] = f"q_{n:05d}{'abcd'.index(r['answer'][1])}"  # the last character encodes the letter
    breaches = failed(run_audit(AuditInput(records, clean.users)))
    assert "char 7 100%" in breaches["id_features_uninformative"]  # the last of eight characters


def test_random_ids_are_not_mistaken_for_a_leak():
    """The best of many id characters looks above chance on random ids (here 29% of 2,000, 4.4 binomial standard
    deviations above 25%, since one value's items win or lose together); the shuffles know that."""
    rng = random.Random(1)
    records = [{"data_path": "./u/user_data.json", "type": "T", "question_type": f"task {k % 13}",
                "time": "2024-01-01 00:00", "query": "Which?", "choices": dict(zip("abcd", "wxyz")),
                "answer": rng.choice("abcd"), "id": f"q_{rng.getrandbits(48):012x}"} for k in range(2000)]
    test = audit.id_feature_test(audit.normalise(AuditInput(records)), seed=0)
    assert test.accuracy.value > 0.29 and test.p_value > 0.2
    assert test.features_tried == 12  # "q_" never varies; char k and char -(14-k) are one feature


def test_a_reply_length_cue_in_alignment_pairs_is_caught(clean):
    records = []
    for r in clean.records:
        if "alignment" in r:
            short, long = sorted(r["alignment"].values(), key=len)
            r = {**r, "alignment": {"chosen": long + " indeed", "rejected": short}}
        records.append(r)
    breaches = failed(run_audit(AuditInput(records, clean.users)))
    assert "longer reply picks the chosen reply 100%" in breaches["alignment_cues"]


def test_small_tasks_are_reported_but_not_judged(clean):
    """A task below MIN_JUDGED_ITEMS gets no per-task verdict; the overall rules still see its items."""
    records = [r for r in clean.records if r["question_type"] != "Tiered Explanation Delivery"]
    tiny = [r for r in clean.records if r["question_type"] == "Tiered Explanation Delivery"][:5]
    for r in tiny:  # gold made longest, in only five items
        texts = sorted(r["choices"].values(), key=len)
        r = {**r, "choices": dict(zip(r["choices"], [texts[-1] + " and more", *texts[:-1]])), "answer": "(a)"}
        records.append(r)
    report = run_audit(AuditInput(records, clean.users))
    assert report.findings.accuracy["longest option"]["Tiered Explanation Delivery"].n == 5
    assert "blind_per_task" not in failed(report)


# ---------------------------------------------------------------------------------------------- measurements


def test_wilson_interval_and_tie_credit():
    low, high = Rate(50, 100).interval
    assert (round(low, 3), round(high, 3)) == (0.404, 0.596)
    assert Rate(0, 0).interval == (0.0, 1.0)
    assert credit([3, 3, 1, 0], 0) == 0.5 and credit([3, 3, 1, 0], 2) == 0.0 and credit([1, 1, 1, 1], 3) == 0.25


def test_mentions_need_most_of_an_options_own_words_close_together():
    turn = audit.Turn.of("2024-01-01 10:00", "I baked sourdough bread with rye, then walked the dog to the lake")
    mentions = lambda option: turn.mentions(frozenset(audit.content_stems(option)))  # noqa: E731
    assert mentions("baking rye bread")  # stems meet (bake/baked), in another order
    assert mentions("sourdough bread with seeds and rye")  # 3 of 4 words: two thirds
    assert not mentions("rye crackers")  # one of two words is not enough
    assert not mentions("rye bread and oat cookies")  # 2 of 4: not two thirds
    assert not mentions("sourdough lake")  # both words, but seven content words apart
    assert audit.HistoryView([turn, turn]).mentions(frozenset(audit.content_stems("walking the dog"))) == 2


def test_the_report_is_deterministic(clean):
    first, second = run_audit(clean), run_audit(synthetic_release(seed=0))
    assert first.markdown() == second.markdown()
    assert json.dumps(first.as_dict()) == json.dumps(second.as_dict())


def test_a_release_without_histories_or_ids_is_audited_on_what_it_has(clean, tmp_path):
    records = [{k: v for k, v in r.items() if k not in ("id", "evidence_turns")} for r in clean.records]
    records[0]["question_type"] = "*" + records[0]["question_type"]  # as in the original release
    write_release(AuditInput(records, clean.users), tmp_path, histories=False)
    report = run_audit(audit.load_audit_input(tmp_path))
    statuses = {r.name: r.status for r in report.rules}
    assert {n for n, s in statuses.items() if s == NOT_APPLICABLE} == {
        "evidence_needed", "history_helps", "gold_not_only_mentioned", "id_not_from_answer",
        "id_features_uninformative"}
    assert report.passed and len(report.findings.tasks) == 13
    assert any("read as" in n for n in report.findings.notes)
    assert "profile overlap" not in report.findings.accuracy


# ---------------------------------------------------------------------------------------------- the command


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = audit.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_command_exits_0_on_a_clean_release_and_writes_json(clean, tmp_path, capsys):
    write_release(clean, tmp_path / "rel")
    code, out, err = run_cli(capsys, str(tmp_path / "rel"), "--json", str(tmp_path / "audit.json"))
    assert code == 0 and err == ""
    assert "| overall | 338 |" in out and "| letters_unpredictable | pass |" in out
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["passed"] is True and report["items"] == 338
    assert {r["name"] for r in report["rules"]} == {r.name for r in audit.RULES}


def test_the_command_exits_1_when_a_rule_fails(tmp_path, capsys):
    file = write_release(synthetic_release(plant=Shortcuts(ids_from_gold=True)), tmp_path)
    code, out, _ = run_cli(capsys, str(file))  # the question file itself
    assert code == 1 and "| id_not_from_answer | FAIL |" in out


@pytest.mark.parametrize("problem", ["missing", "not_json", "no_answer", "bad_history"])
def test_bad_input_is_one_line_naming_the_file_and_exit_2(clean, tmp_path, capsys, problem):
    file = write_release(clean, tmp_path)
    named = file
    if problem == "missing":
        named = tmp_path / "nowhere.json"
    elif problem == "not_json":
        file.write_text('[{"data_path": ')
    elif problem == "no_answer":
        records = json.loads(file.read_text())
        del records[3]["answer"]
        file.write_text(json.dumps(records))
    else:
        named = tmp_path / clean.records[0]["data_path"]
        named.write_text('{"profile": {}, "sessions": "none"}')
    code, out, err = run_cli(capsys, str(named))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and str(named) in err and "Traceback" not in err
    if problem == "no_answer":
        assert "[3]: 'answer' missing" in err
    with pytest.raises(audit.AuditInputError):
        audit.main([str(named), "--debug"])


def test_the_module_runs_as_a_command(clean, tmp_path):
    write_release(clean, tmp_path)
    done = subprocess.run([sys.executable, "-m", "quality.audit", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Rules:" in done.stdout


# ---------------------------------------------------------------------------------------------- the blocking check


def test_a_shortcut_in_the_release_blocks_publishing(tmp_path):
    """Ids hashed from the gold (the recipe `stable_id` makes) fail the check; the failing rule is quarantined and
    nothing is published."""
    world = clean_world(tmp_path / "images")
    world.items = [i.model_copy(update={"item_id": stable_id("q_", i.persona_id, i.question_type, i.query,
                                                             i.choices[i.answer])}) for i in world.items]
    write_world(world, tmp_path / "pipeline.duckdb")
    settings = FactoryConfig(preset="tiny", output_dir=str(tmp_path))
    with dg.instance_for_test() as instance:
        result = materialize(settings, instance)
    assert not result.success
    evaluations = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not evaluations["shortcut_audit"].passed
    assert {name for name, c in evaluations.items() if not c.passed} == {"shortcut_audit"}
    rules = evaluations["shortcut_audit"].metadata["rules"].value
    assert rules["id_not_from_answer"].startswith("FAIL: sha1(persona, task, query, option")
    assert {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()} == set(CURATION)
    assert not (tmp_path / "hub").exists() and not (tmp_path / "native").exists()
    with duckdb.connect(str(tmp_path / "pipeline.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT table_name, row_key, rule FROM quarantine WHERE asset = 'check:shortcut_audit'"
                           ).fetchall()
    assert rows == [("release_benchmark", "overall", "id_not_from_answer")]
    assert FAIL in rules["id_not_from_answer"]
