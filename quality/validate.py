"""Validation: structural rules over dialogues, schema checks of every stored record against its pydantic model,
and great-expectations suites kept as JSON files under quality/suites/, run on pandas frames pulled from DuckDB
(GX has no DuckDB or polars datasource). Every failing row becomes a quarantine row naming the rule and the value."""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import duckdb
import numpy as np
import pandas as pd
from pydantic import BaseModel, ValidationError

from persona_factory.catalog import RECORD_TABLES, Table
from persona_factory.schema import Dialogue, ImageRecord, QuarantineRow
from persona_factory.stages.common import parse_time
from persona_factory.store import table_exists

SUITES_DIR = Path(__file__).parent / "suites"
SUITES = ("release_personas", "release_turns", "release_benchmark", "release_sft", "release_rl")
M = TypeVar("M", bound=BaseModel)


# the least a released history holds: one session with an exchange to remember and one after it; the
# release_personas suite reads the same values
MIN_HISTORY_TURNS = 2
MIN_HISTORY_SESSIONS = 1


# ---------------------------------------------------------------------------------------------- structure


def structural_violations(dialogue: Dialogue, plan_item_ids: set[str], gap_minutes: int) -> list[QuarantineRow]:
    """Length (at least MIN_HISTORY_TURNS turns in MIN_HISTORY_SESSIONS sessions), alternation (every turn has a
    user and an assistant side), readable and monotonic time, the session-gap rule, exactly one <img> per image
    turn and none elsewhere, and evidence links that exist in the plan."""
    out = []
    gap = timedelta(minutes=gap_minutes)
    n_turns, n_sessions = len(dialogue.turns), len(dialogue.sessions)
    if n_turns < MIN_HISTORY_TURNS or n_sessions < MIN_HISTORY_SESSIONS:
        out.append(QuarantineRow(table_name="dialogues", row_key=dialogue.persona_id, rule="short_history",
                                 value=f"{n_turns} turns in {n_sessions} sessions"))

    def bad(turn, rule: str, value: str) -> None:
        out.append(QuarantineRow(table_name="dialogue_turns", row_key=f"{turn.persona_id}:{turn.turn_index}",
                                 rule=rule, value=value))

    previous = None  # (turn, its time) of the last turn with a readable time
    for session in dialogue.sessions:
        for k, turn in enumerate(session.turns):
            if not turn.user.strip() or not turn.assistant.strip():
                bad(turn, "alternation", "empty user or assistant side")
            n_img = turn.user.count("<img>") + turn.assistant.count("<img>")
            if n_img != (1 if turn.image_id else 0):
                bad(turn, "image_placeholder", f"{n_img} <img> for image_id={turn.image_id}")
            if unknown := set(turn.realizes) - plan_item_ids:
                bad(turn, "unknown_plan_item", ",".join(sorted(unknown)))
            try:
                time = parse_time(turn.time)
            except ValueError:
                bad(turn, "time_format", turn.time)
                continue
            if previous is not None:
                dt = time - previous[1]
                if dt < timedelta(0):
                    bad(turn, "time_not_monotonic", f"{previous[0].time} -> {turn.time}")
                elif k == 0 and dt <= gap:
                    bad(turn, "session_gap", f"new session only {dt} after the previous turn")
                elif k > 0 and dt > gap:
                    bad(turn, "session_gap", f"{dt} inside one session")
            previous = (turn, time)
    return out


# ---------------------------------------------------------------------------------------------- image files


def image_file_problems(pool: Iterable[ImageRecord]) -> dict[str, tuple[str, str]]:
    """image_id -> (rule, what was found) for every pool image whose PNG is missing, unreadable, or whose bytes no
    longer hash to its id (the id is the sha256 of the stored file, so an edited or swapped file shows here)."""
    out = {}
    for image in pool:
        try:
            data = Path(image.path).read_bytes()
        except FileNotFoundError:
            out[image.image_id] = ("image_file_missing", f"no file at {image.path}")
            continue
        except OSError as e:
            out[image.image_id] = ("image_file_unreadable", f"{image.path}: {type(e).__name__}: {e}")
            continue
        if (digest := hashlib.sha256(data).hexdigest()) != image.image_id:
            out[image.image_id] = ("image_checksum", f"{image.path} has sha256 {digest}")
    return out


def image_violations(dialogue: Dialogue, pool_ids: Container[str],
                     problems: Mapping[str, tuple[str, str]]) -> list[QuarantineRow]:
    """One row per image turn whose image is not in the pool or whose file has a problem (image_file_problems)."""
    return [QuarantineRow(table_name="dialogue_turns", row_key=f"{turn.persona_id}:{turn.turn_index}",
                          rule=problem[0], value=f"image {turn.image_id}: {problem[1]}")
            for turn in dialogue.turns
            if turn.image_id is not None and (problem := image_problem(turn.image_id, pool_ids, problems))]


def image_problem(image_id: str, pool_ids: Container[str],
                  problems: Mapping[str, tuple[str, str]]) -> tuple[str, str] | None:
    """(rule, what was found) when a cited image cannot be published, else None."""
    if image_id not in pool_ids:
        return "image_not_in_pool", "no image_pool record"
    return problems.get(image_id)


# ---------------------------------------------------------------------------------------------- schemas


def parse_records(con: duckdb.DuckDBPyConnection, table: Table, where: str = "",
                  params: list | tuple = ()) -> tuple[list[BaseModel], list[QuarantineRow]]:
    """The rows of a record table that parse under its model, in stored order, and one quarantine row per row
    that does not (rule `schema:<Model>`, value: pydantic's first errors)."""
    model = table.model
    assert model is not None, f"{table.name} holds no records"
    rows = con.execute(f"SELECT rowid, record FROM {table.name} {where} ORDER BY rowid", list(params)).fetchall()
    valid, invalid = [], []
    for rowid, raw in rows:
        try:
            valid.append(model.model_validate_json(raw))
        except ValidationError as e:
            invalid.append(QuarantineRow(table_name=table.name, row_key=_row_key(raw, table.key, rowid),
                                         rule=f"schema:{model.__name__}", value=_describe(e)))
    return valid, invalid


def schema_violations(con: duckdb.DuckDBPyConnection) -> tuple[list[QuarantineRow], dict[str, int], list[str]]:
    """Every record table of the catalog that exists, validated row by row: (violations, rows checked per table,
    tables holding records that the catalog does not know)."""
    violations, checked = [], {}
    for name, table in RECORD_TABLES.items():
        if table_exists(con, name):
            valid, invalid = parse_records(con, table)
            violations += invalid
            checked[name] = len(valid) + len(invalid)
    with_records = {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.columns WHERE column_name = 'record' AND table_schema = 'main'"
    ).fetchall()}
    return violations, checked, sorted(with_records - set(RECORD_TABLES))


def _row_key(raw: str, key_fields: tuple[str, ...], rowid: int) -> str:
    """The key fields' values (a dotted field reads a nested one), or the row's position when they are missing."""
    try:
        obj = json.loads(raw)
    except (TypeError, ValueError):
        return f"rowid {rowid}"
    values = []
    for f in key_fields:
        value = obj
        for part in f.split("."):
            if not isinstance(value, dict) or part not in value:
                return f"rowid {rowid}"
            value = value[part]
        values.append(str(value))
    return ":".join(values)


def _describe(err: ValidationError, most: int = 3) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']} (got {e.get('input')!r:.60})"
             for e in err.errors()[:most]]
    more = err.error_count() - most
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


# ---------------------------------------------------------------------------------------------- suites


@dataclass
class SuiteResult:
    name: str
    success: bool
    rows: int
    failed_expectations: dict[str, int] = field(default_factory=dict)  # expectation -> unexpected count
    quarantined: list[QuarantineRow] = field(default_factory=list)


def load_suite(name: str) -> dict:
    """A suite file; a kwarg written "@module:ATTR" takes the value the code defines (a dict becomes its
    [key, value] pairs, a collection a list), so task lists, letters and limits have one source of truth."""
    spec = json.loads((SUITES_DIR / f"{name}.json").read_text())
    for e in spec["expectations"]:
        e["kwargs"] = {k: _resolve(v) for k, v in e["kwargs"].items()}
    return spec


def _resolve(value: object) -> object:
    if not (isinstance(value, str) and value.startswith("@")):
        return value
    module, attr = value[1:].split(":")
    found = getattr(importlib.import_module(module), attr)
    if isinstance(found, dict):
        return [list(kv) for kv in found.items()]
    return found if isinstance(found, (str, int, float)) else list(found)


def run_suite(name: str, frame: pd.DataFrame) -> SuiteResult:
    """Validate `frame` with suite `name`; each row an expectation rejects is quarantined with the values it saw."""
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    spec = load_suite(name)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    suite = gx.ExpectationSuite(name=spec["name"])
    for e in spec["expectations"]:
        suite.add_expectation(getattr(gxe, "".join(w.capitalize() for w in e["type"].split("_")))(**e["kwargs"]))
    suite = context.suites.add(suite)
    batch = (context.data_sources.add_pandas(f"{name}_src").add_dataframe_asset(name)
             .add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": frame}))
    result = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    out = SuiteResult(name=name, success=bool(result.success), rows=len(frame))
    key = spec["key"]
    for r in result.results:
        if r.success:
            continue
        kwargs = r.expectation_config.kwargs
        columns = [v for k, v in kwargs.items() if k.startswith("column") and isinstance(v, str)]
        label = f"{r.expectation_config.type}({','.join(columns)})"
        out.failed_expectations[label] = int(r.result.get("unexpected_count") or 0)
        for idx in r.result.get("unexpected_index_list") or []:
            row = frame.loc[idx["index"] if isinstance(idx, dict) else idx]
            out.quarantined.append(QuarantineRow(
                table_name=name, row_key=str(row[key]), rule=label,
                value="; ".join(f"{c}={_plain(row[c])!r}" for c in columns)[:300]))
    return out


def _plain(value: object) -> object:
    """A numpy scalar as the Python value it holds, so quarantine values read `n_images=0`."""
    return value.item() if isinstance(value, np.generic) else value
