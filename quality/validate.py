"""Validation: structural rules over dialogues (pure Python) and great-expectations suites kept as JSON files
under quality/suites/, run on pandas frames pulled from DuckDB (GX has no DuckDB or polars datasource)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pandas as pd

from persona_factory.schema import Dialogue, QuarantineRow
from persona_factory.stages.common import parse_time

SUITES_DIR = Path(__file__).parent / "suites"
SUITES = ("release_turns", "release_benchmark", "release_sft", "release_rl")


def structural_violations(dialogue: Dialogue, plan_item_ids: set[str], gap_minutes: int) -> list[QuarantineRow]:
    """Alternation (every turn has a user and an assistant side), monotonic time, the session-gap rule,
    exactly one <img> per image turn and none elsewhere, and evidence links that exist in the plan."""
    out = []
    gap = timedelta(minutes=gap_minutes)

    def bad(turn, rule: str, value: str) -> None:
        out.append(QuarantineRow(table_name="dialogue_turns", row_key=f"{turn.persona_id}:{turn.turn_index}",
                                 rule=rule, value=value))

    previous = None
    for session in dialogue.sessions:
        for k, turn in enumerate(session.turns):
            if not turn.user.strip() or not turn.assistant.strip():
                bad(turn, "alternation", "empty user or assistant side")
            n_img = turn.user.count("<img>") + turn.assistant.count("<img>")
            if n_img != (1 if turn.image_id else 0):
                bad(turn, "image_placeholder", f"{n_img} <img> for image_id={turn.image_id}")
            if unknown := set(turn.realizes) - plan_item_ids:
                bad(turn, "unknown_plan_item", ",".join(sorted(unknown)))
            if previous is not None:
                dt = parse_time(turn.time) - parse_time(previous.time)
                if dt < timedelta(0):
                    bad(turn, "time_not_monotonic", f"{previous.time} -> {turn.time}")
                elif k == 0 and dt <= gap:
                    bad(turn, "session_gap", f"new session only {dt} after the previous turn")
                elif k > 0 and dt > gap:
                    bad(turn, "session_gap", f"{dt} inside one session")
            previous = turn
    return out


@dataclass
class SuiteResult:
    name: str
    success: bool
    rows: int
    failed_expectations: dict[str, int] = field(default_factory=dict)  # expectation -> unexpected count
    quarantined: list[QuarantineRow] = field(default_factory=list)


def load_suite(name: str) -> dict:
    return json.loads((SUITES_DIR / f"{name}.json").read_text())


def run_suite(name: str, frame: pd.DataFrame) -> SuiteResult:
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    spec = load_suite(name)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    suite = gx.ExpectationSuite(name=spec["name"])
    for e in spec["expectations"]:
        cls = getattr(gxe, "".join(w.capitalize() for w in e["type"].split("_")))
        suite.add_expectation(cls(**e["kwargs"]))
    suite = context.suites.add(suite)
    batch = (context.data_sources.add_pandas(f"{name}_src").add_dataframe_asset(name)
             .add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": frame}))
    result = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    out = SuiteResult(name=name, success=bool(result.success), rows=len(frame))
    key = spec["key"]
    for r in result.results:
        if r.success:
            continue
        label = f"{r.expectation_config.type}({','.join(str(v) for v in r.expectation_config.kwargs.values() if isinstance(v, str))})"
        out.failed_expectations[label] = int(r.result.get("unexpected_count") or 0)
        for idx in r.result.get("unexpected_index_list") or []:
            row = frame.loc[idx] if not isinstance(idx, dict) else frame.loc[idx.get("index", 0)]
            out.quarantined.append(QuarantineRow(table_name=name, row_key=str(row[key]), rule=label,
                                                 value=str({c: row[c] for c in frame.columns if c != key})[:300]))
    return out
