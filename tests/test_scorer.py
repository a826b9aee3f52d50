"""The scorer: a strict letter parser, release loading that fails with the reason, per-task / per-aspect /
overall / alignment accuracy, prediction files, eval.py result files and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from persona_factory import scorer


@pytest.mark.parametrize("response, letter", [
    ("(b)", "(b)"), ("b", "(b)"), ("B.", "(b)"), ("c)", "(c)"), ("(d) Sketching", "(d)"),
    ("The answer is (c).", "(c)"), ("Answer: b", "(b)"), ("My final answer is d.", "(d)"),
    ("I ruled out (a) because of the photo; the answer is (c).", "(c)"),
    ("<think>(a) or (b)?</think><answer>(b)</answer>", "(b)"),
    ("Sketching, option (b), fits you best", "(b)"),
])
def test_parser_reads_one_unambiguous_letter(response, letter):
    assert scorer.parse_letter(response) == letter


@pytest.mark.parametrize("response", [
    "", "I don't know", "(a) or (c), hard to say", "The answer is a bit unclear", "(e)",
    "I think (a) is wrong and (c) is right",  # the released parser would read (a) here
])
def test_parser_refuses_what_it_cannot_decide(response):
    assert scorer.parse_letter(response) is None


def test_parser_keeps_binary_answers_to_two_letters():
    assert scorer.parse_letter("(b)", n_options=2) == "(b)"
    assert scorer.parse_letter("(c)", n_options=2) is None


# ---------------------------------------------------------------------------------------------- a small release


def _record(uid: str, bucket: str, task: str, aspect: str, answer: str, **extra) -> dict:
    return {"data_path": f"./data/Persona-MME/samples/{bucket}/{uid}/user_data.json", "type": aspect,
            "question_type": task, "time": "2024-05-03 09:00", "query": f"{task}?",
            "choices": {"(a)": "w", "(b)": "x", "(c)": "y", "(d)": "z"}, "answer": answer, **extra}


def write_release(root: Path, records: list[dict], imgs: int = 1) -> Path:
    for uid, bucket in {(Path(r["data_path"]).parent.name, Path(r["data_path"]).parent.parent.name) for r in records}:
        folder = root / "data/Persona-MME/samples" / bucket / uid
        folder.mkdir(parents=True, exist_ok=True)
        sessions = [[{"time": "2024-05-01 10:00", "user": "<img>hi", "assistant": "hello"},
                     {"time": "2024-05-01 10:05", "user": "bye", "assistant": "see you"}]]
        (folder / "user_data.json").write_text(json.dumps({"profile": {"name": uid}, "imgs": [f"{k}.png" for k in range(imgs)],
                                                           "sessions": sessions}))
        for k in range(imgs):
            (folder / f"{k}.png").write_bytes(b"png")
    (root / "data/Persona-MME/Persona-MME.json").write_text(json.dumps(records))
    return root


RECORDS = [
    _record("u1", "50", "Visual Detail Recall", "Memory Recall", "(a)", id="q1", evidence_turns=[0],
            evidence_images=["0.png"]),
    _record("u1", "50", "Semantic Information Recall", "Memory Recall", "(b)", id="q2",
            alignment={"chosen": "fits", "rejected": "generic"}),
    _record("u2", "500", "Long-term Goal Tracking", "Behavioral Awareness", "(c)", id="q3"),
    _record("u2", "500", "Relationship Recognition", "Relationship Understanding", "(d)", id="q4"),
]


def test_scores_per_task_aspect_config_and_alignment(tmp_path):
    records = scorer.load_release(write_release(tmp_path, RECORDS))
    preds = {("q1", "mc"): "(a)", ("q2", "mc"): "I'd say (b)", ("q3", "mc"): "(a) or (c)?",
             ("q2", "chosen"): "(a)", ("q2", "rejected"): "(a)"}
    report = scorer.score(records, preds)
    assert report.per_task["Visual Detail Recall"].accuracy == 1.0
    assert report.per_aspect["Memory Recall"].correct == 2
    assert report.per_config["128k"].total == 2 and report.per_config["128k"].correct == 0
    assert (report.multiple_choice.correct, report.multiple_choice.unparsed, report.multiple_choice.missing) == (2, 1, 1)
    assert (report.alignment.correct, report.alignment.total) == (1, 2)
    assert (report.overall.correct, report.overall.total) == (3, 6)
    assert report.as_dict()["per_task"][scorer.ALIGNMENT]["accuracy"] == 0.5
    assert "missing predictions: 1" in report.table()


def test_baselines(tmp_path):
    records = scorer.load_release(write_release(tmp_path, RECORDS))
    assert scorer.score(records, scorer.baseline_predictions(records, "oracle")).overall.accuracy == 1.0
    always_a = scorer.score(records, scorer.baseline_predictions(records, "always-a"))
    assert always_a.multiple_choice.accuracy == 0.25 and always_a.alignment.accuracy == 0.5
    with pytest.raises(ValueError, match="unknown baseline"):
        scorer.baseline_predictions(records, "always-b")


@pytest.mark.parametrize("breakage, message", [
    (lambda r: r[0].pop("answer"), "missing 'answer'"),
    (lambda r: r[0].update(answer="(e)"), "choices must be"),
    (lambda r: r[0].update(data_path="data/Persona-MME/samples/50/u1/user_data.json"), "is not ./data/"),
    (lambda r: r[0].update(data_path="./data/Persona-MME/samples/50/nobody/user_data.json"), "does not exist"),
    (lambda r: r[0].update(evidence_turns=[5]), "outside the 2 turns"),
    (lambda r: r[0].update(evidence_images=["7.png"]), "evidence images"),
    (lambda r: r[0].update(time="2024-05-01 10:01"), "not after the history's last turn"),
    (lambda r: r[1].update(alignment={"chosen": "x"}), "alignment needs"),
])
def test_a_broken_release_fails_with_its_reason(tmp_path, breakage, message):
    records = json.loads(json.dumps(RECORDS))
    write_release(tmp_path, records)
    breakage(records)
    (tmp_path / "data/Persona-MME/Persona-MME.json").write_text(json.dumps(records))
    with pytest.raises(scorer.ReleaseError, match=message):
        scorer.load_release(tmp_path)


def test_image_placeholders_must_match_the_image_files(tmp_path):
    write_release(tmp_path, RECORDS, imgs=2)
    with pytest.raises(scorer.ReleaseError, match="1 <img> placeholders but 2 imgs"):
        scorer.load_release(tmp_path)


def test_prediction_files_and_eval_results(tmp_path):
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"id": "q1", "response": "(a)"}\n\n{"id": "q2", "alignment": "chosen", "response": "a"}\n')
    assert scorer.load_predictions(preds) == {("q1", "mc"): "(a)", ("q2", "chosen"): "a"}
    preds.write_text('{"id": "q1", "response": "(a)"}\n{"id": "q1", "response": "(b)"}\n')
    with pytest.raises(ValueError, match="second prediction"):
        scorer.load_predictions(preds)
    preds.write_text('{"answer": "(a)"}\n')
    with pytest.raises(ValueError, match="p.jsonl:1"):
        scorer.load_predictions(preds)
    results = {"Memory Recall_Visual Detail Recall": [["I think (a) is wrong, so (c)", "(c)", []], ["(a)", "(a)", []]],
               "alignment": [["(a)", "(a)", []], ["(a)", "(b)", []]]}
    report = scorer.score_eval_results(results)
    assert (report.multiple_choice.correct, report.multiple_choice.unparsed) == (1, 1)
    assert report.alignment.accuracy == 0.5


def test_command_line(tmp_path, capsys):
    root = write_release(tmp_path, RECORDS)
    out = tmp_path / "score.json"
    assert scorer.main(["--benchmark", str(root / "data/Persona-MME/Persona-MME.json"), "--baseline", "oracle",
                        "--output", str(out)]) == 0
    assert json.loads(out.read_text())["overall"]["accuracy"] == 1.0
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"id": "nope", "response": "(a)"}\n')
    assert scorer.main(["--benchmark", str(root), "--predictions", str(preds)]) == 2
    assert "name no question" in capsys.readouterr().err


def test_warns_when_eval_py_would_skip_users():
    many = [_record(f"u{k}", "100", "Semantic Information Recall", "Memory Recall", "(a)") for k in range(51)]
    assert scorer.release_warnings(many) == ["bucket 100 holds 51 users; eval.py evaluates only the first 50 it lists"]
    assert scorer.release_warnings(many[:50]) == []
