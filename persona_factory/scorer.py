"""Score answers to a Persona-MME-style benchmark with a strict letter parser.

    python -m persona_factory.scorer --benchmark output/native --predictions predictions.jsonl [--output score.json]
    python -m persona_factory.scorer --benchmark output/native --baseline always-a   # or oracle, random

`--benchmark` is a release root (holding data/Persona-MME/Persona-MME.json) or that file itself; the release is
loaded and checked first (every data_path resolves to a user_data.json with profile, imgs and sessions, one image
file per <img>, evidence turn and image references in range), so a broken export fails here with its reason.

Predictions, one JSON object per line, keyed by the record's `id`:
    {"id": "q_...", "response": "... (b) ..."}                                  the multiple-choice question
    {"id": "q_...", "alignment": "chosen" | "rejected", "response": "(a)"}      its Personality Alignment checks
PersonaVLM's own result file (eval.py's eval_persona_mme.json) is accepted too and re-scored with this parser.

The released eval script takes the character before the first ")" as the answer, so "I ruled out (a); it is (c)"
scores as (a). Here a response counts only when it names one letter unambiguously: the whole reply is a letter,
or it states its answer ("answer: (c)"), or it mentions exactly one option label. Anything else is unparsed and
scored wrong; a question without a prediction is missing and scored wrong. Reported: accuracy per task, per aspect,
over the multiple-choice questions, over the binary alignment checks, over both together (as the paper's Table 4
"Overall"), and per context configuration (32k: buckets 50 and 100; 128k: 200 and 500).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

MME_JSON = Path("data/Persona-MME/Persona-MME.json")
LETTERS = ("(a)", "(b)", "(c)", "(d)")
ALIGNMENT = "Personality Alignment"
CONFIGS = {"50": "32k", "100": "32k", "200": "128k", "500": "128k"}
BASELINES = ("always-a", "oracle", "random")
DATA_PATH = re.compile(r"\./data/Persona-MME/samples/(?:50|100|200|500)/[^/]+/user_data\.json")
EVAL_USERS_PER_BUCKET = 50  # eval.py reads only the first 50 folders a bucket lists
_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_BARE = re.compile(r"\(?\s*([a-d])\s*\)?\s*[.:!]?", re.I)
_LETTER = r"(?:\(\s*([a-d])\s*\)|\b([a-d])(?=\s*(?:$|[.,;:!)])))"
_STATED = re.compile(rf"(?:\banswer\b|\bchoice\b|\bi (?:choose|pick|select|go with)\b)\s*(?:is|:|=|would be)?\s*{_LETTER}",
                     re.I)
_LABEL = re.compile(r"\(\s*([a-d])\s*\)|^\s*([a-d])\)", re.I | re.M)


class ReleaseError(ValueError):
    """The benchmark files do not form a loadable Persona-MME release; the message says where and why."""


# ---------------------------------------------------------------------------------------------- parsing


def parse_letter(response: str | None, n_options: int = 4) -> str | None:
    """"(a)".."(d)" when the response names exactly one option letter, else None."""
    text = response or ""
    if tags := _TAG.findall(text):
        text = tags[-1]
    text = text.strip()
    found: set[str]
    if m := _BARE.fullmatch(text):
        found = {m.group(1)}
    elif stated := _STATED.findall(text):
        found = {a or b for a, b in stated}
    else:
        found = {a or b for a, b in _LABEL.findall(text)}
    letters = {f.lower() for f in found}
    if len(letters) != 1:
        return None
    letter = f"({letters.pop()})"
    return letter if letter in LETTERS[:n_options] else None


# ---------------------------------------------------------------------------------------------- release


def benchmark_file(path: Path) -> Path:
    return path / MME_JSON if path.is_dir() else path


def load_release(path: Path) -> list[dict[str, Any]]:
    """The question records, each checked against the release layout PersonaVLM's eval script reads."""
    file = benchmark_file(Path(path))
    if not file.is_file():
        raise ReleaseError(f"{file}: no Persona-MME.json here (give the release root or the file itself)")
    if file.parent.name != "Persona-MME" or file.parent.parent.name != "data":
        raise ReleaseError(f"{file}: expected at <root>/{MME_JSON}, where data_path values are relative to <root>")
    root = file.parents[2]
    try:
        records = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReleaseError(f"{file}: not JSON ({e})") from None
    if not isinstance(records, list):
        raise ReleaseError(f"{file}: the top level must be a list of question records")
    users: dict[str, dict[str, Any]] = {}
    for k, r in enumerate(records):
        where = f"{file.name}[{k}]"
        for key in ("data_path", "type", "question_type", "time", "query", "choices", "answer"):
            if key not in r:
                raise ReleaseError(f"{where}: missing {key!r}")
        if list(r["choices"]) != list(LETTERS) or r["answer"] not in LETTERS:
            raise ReleaseError(f"{where}: choices must be {LETTERS} and the answer one of them")
        if "alignment" in r and set(r["alignment"]) != {"chosen", "rejected"}:
            raise ReleaseError(f"{where}: alignment needs exactly 'chosen' and 'rejected'")
        if r["data_path"] not in users:
            users[r["data_path"]] = _load_user(root, r["data_path"], where)
        user = users[r["data_path"]]
        turns = [t for s in user["sessions"] for t in s]
        if any(not 0 <= i < len(turns) for i in r.get("evidence_turns", [])):
            raise ReleaseError(f"{where}: evidence_turns {r['evidence_turns']} outside the {len(turns)} turns")
        folder = (root / r["data_path"]).parent
        if missing := [i for i in r.get("evidence_images", []) if not (folder / i).is_file()]:
            raise ReleaseError(f"{where}: evidence images {missing} are not in {folder}")
        if r["time"] <= max((t["time"] for t in turns), default=""):
            raise ReleaseError(f"{where}: the question time {r['time']} is not after the history's last turn")
    return records


def release_warnings(records: list[dict[str, Any]]) -> list[str]:
    """What PersonaVLM's eval script would silently get wrong on this release."""
    users: dict[str, set[str]] = defaultdict(set)
    for r in records:
        users[Path(r["data_path"]).parent.parent.name].add(r["data_path"])
    return [f"bucket {b} holds {len(u)} users; eval.py evaluates only the first {EVAL_USERS_PER_BUCKET} it lists"
            for b, u in sorted(users.items()) if len(u) > EVAL_USERS_PER_BUCKET]


def _load_user(root: Path, data_path: str, where: str) -> dict[str, Any]:
    if not DATA_PATH.fullmatch(data_path):  # eval.py matches questions to users by this exact string
        raise ReleaseError(f"{where}: data_path {data_path!r} is not "
                           f"./data/Persona-MME/samples/<{'|'.join(CONFIGS)}>/<uid>/user_data.json")
    file = root / data_path
    if not file.is_file():
        raise ReleaseError(f"{where}: data_path {data_path!r} does not exist under {root}")
    user = json.loads(file.read_text(encoding="utf-8"))
    for key in ("profile", "imgs", "sessions"):
        if key not in user:
            raise ReleaseError(f"{file}: missing {key!r}")
    turns = [t for s in user["sessions"] for t in s]
    placeholders = sum(t["user"].count("<img>") for t in turns)
    if placeholders != len(user["imgs"]):
        raise ReleaseError(f"{file}: {placeholders} <img> placeholders but {len(user['imgs'])} imgs")
    if missing := [i for i in user["imgs"] if not (file.parent / Path(i).name).is_file()]:
        raise ReleaseError(f"{file}: image files {missing} are missing beside it")
    return user


# ---------------------------------------------------------------------------------------------- scoring


@dataclass
class Tally:
    correct: int = 0
    total: int = 0
    unparsed: int = 0
    missing: int = 0

    def add(self, response: str | None, gold: str, n_options: int) -> None:
        """response: the raw reply (None when there is no prediction)."""
        self.total += 1
        if response is None:
            self.missing += 1
            return
        letter = parse_letter(str(response), n_options)
        if letter is None:
            self.unparsed += 1
        self.correct += letter == gold

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def merged(self, other: "Tally") -> "Tally":
        return Tally(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values())))


@dataclass
class Report:
    per_task: dict[str, Tally]
    per_aspect: dict[str, Tally]
    per_config: dict[str, Tally]  # multiple choice only
    multiple_choice: Tally
    alignment: Tally

    @property
    def overall(self) -> Tally:
        return self.multiple_choice.merged(self.alignment)

    def as_dict(self) -> dict[str, Any]:
        line = lambda t: {**asdict(t), "accuracy": round(t.accuracy, 4)}  # noqa: E731
        return {"overall": line(self.overall), "multiple_choice": line(self.multiple_choice),
                "alignment": line(self.alignment),
                "per_config": {k: line(v) for k, v in sorted(self.per_config.items())},
                "per_aspect": {k: line(v) for k, v in sorted(self.per_aspect.items())},
                "per_task": {k: line(v) for k, v in sorted(self.per_task.items())}}

    def table(self) -> str:
        rows = [("task", "n", "accuracy")]
        rows += [(k, str(v.total), f"{100 * v.accuracy:.2f}") for k, v in sorted(self.per_task.items())]
        rows += [("", "", "")] + [(f"aspect: {k}", str(v.total), f"{100 * v.accuracy:.2f}")
                                  for k, v in sorted(self.per_aspect.items())]
        rows += [("", "", "")] + [(f"config: {k}", str(v.total), f"{100 * v.accuracy:.2f}")
                                  for k, v in sorted(self.per_config.items())]
        rows += [("", "", ""), ("multiple choice", str(self.multiple_choice.total),
                                f"{100 * self.multiple_choice.accuracy:.2f}"),
                 ("alignment (binary)", str(self.alignment.total), f"{100 * self.alignment.accuracy:.2f}"),
                 ("overall", str(self.overall.total), f"{100 * self.overall.accuracy:.2f}")]
        width = max(len(r[0]) for r in rows)
        lines = [f"{a:<{width}}  {b:>5}  {c:>8}" for a, b, c in rows]
        o = self.overall
        lines.append(f"unparsed responses: {o.unparsed}, missing predictions: {o.missing} (both scored wrong)")
        return "\n".join(lines)


def score(records: list[dict[str, Any]], predictions: dict[tuple[str, str], str]) -> Report:
    """predictions: (record id, "mc" | "chosen" | "rejected") -> response."""
    per_task: dict[str, Tally] = defaultdict(Tally)
    per_aspect: dict[str, Tally] = defaultdict(Tally)
    per_config: dict[str, Tally] = defaultdict(Tally)
    mc, alignment = Tally(), Tally()
    for r in records:
        response = predictions.get((record_id(r), "mc"))
        bucket = Path(r["data_path"]).parent.parent.name
        for tally in (per_task[r["question_type"]], per_aspect[r["type"]], per_config[CONFIGS.get(bucket, bucket)], mc):
            tally.add(response, r["answer"], 4)
        if "alignment" in r:
            for side, gold in (("chosen", "(a)"), ("rejected", "(b)")):
                response = predictions.get((record_id(r), side))
                per_task[ALIGNMENT].add(response, gold, 2)
                alignment.add(response, gold, 2)
    return Report(dict(per_task), dict(per_aspect), dict(per_config), mc, alignment)


def record_id(r: dict[str, Any]) -> str:
    """The record's id; releases without ids are addressed by data_path and query."""
    return r.get("id") or f"{r['data_path']}#{r['query']}"


def score_eval_results(results: dict[str, list]) -> Report:
    """Re-score eval.py's result file: {"<type>_<question_type>": [[response, gold, chain], ...], "alignment": ...}."""
    per_task: dict[str, Tally] = defaultdict(Tally)
    per_aspect: dict[str, Tally] = defaultdict(Tally)
    mc, alignment = Tally(), Tally()
    for key, rows in results.items():
        for response, gold, *_ in rows:
            if key == "alignment":
                per_task[ALIGNMENT].add(response, gold, 2)
                alignment.add(response, gold, 2)
                continue
            aspect, _, task = key.partition("_")
            for tally in (per_task[task], per_aspect[aspect], mc):
                tally.add(response, gold, 4)
    return Report(dict(per_task), dict(per_aspect), {}, mc, alignment)


def load_predictions(path: Path) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            key = (str(row["id"]), row.get("alignment", "mc"))
            response = str(row["response"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: not a prediction line ({type(e).__name__}: {e}); expected "
                             '{"id": ..., "response": ...} (plus "alignment": "chosen"|"rejected")') from None
        if key[1] not in ("mc", "chosen", "rejected"):
            raise ValueError(f"{path}:{n}: alignment must be 'chosen' or 'rejected', not {key[1]!r}")
        if key in out:
            raise ValueError(f"{path}:{n}: a second prediction for {key}")
        out[key] = response
    return out


def baseline_predictions(records: Iterable[dict[str, Any]], kind: str, seed: int = 0) -> dict[tuple[str, str], str]:
    """always-a answers (a) everywhere; oracle reads the gold; random picks uniformly (seeded)."""
    if kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}; choose one of {BASELINES}")
    rng = random.Random(seed)
    out = {}
    for r in records:
        sides = [("mc", r["answer"], 4)] + ([("chosen", "(a)", 2), ("rejected", "(b)", 2)] if "alignment" in r else [])
        for side, gold, n in sides:
            out[record_id(r), side] = {"always-a": "(a)", "oracle": gold,
                                       "random": rng.choice(LETTERS[:n])}[kind]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m persona_factory.scorer", description=__doc__.split("\n\n")[0])
    ap.add_argument("--benchmark", type=Path, help="release root or its data/Persona-MME/Persona-MME.json")
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--predictions", type=Path, help="JSONL predictions, or eval.py's eval_persona_mme.json")
    group.add_argument("--baseline", choices=BASELINES)
    ap.add_argument("--output", type=Path, help="write the report as JSON here")
    args = ap.parse_args(argv)
    try:
        if args.predictions is not None and args.predictions.suffix == ".json":
            report = score_eval_results(json.loads(args.predictions.read_text(encoding="utf-8")))
        else:
            if args.benchmark is None:
                ap.error("--benchmark is required unless --predictions is eval.py's result file")
            records = load_release(args.benchmark)
            for warning in release_warnings(records):
                print(f"warning: {warning}", file=sys.stderr)
            preds = (baseline_predictions(records, args.baseline) if args.baseline
                     else load_predictions(args.predictions))
            if unknown := {k for k, _ in preds} - {record_id(r) for r in records}:
                raise ValueError(f"{len(unknown)} predictions name no question of the benchmark, e.g. {sorted(unknown)[0]!r}")
            report = score(records, preds)
    except (ReleaseError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.table())
    if args.output:
        args.output.write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
