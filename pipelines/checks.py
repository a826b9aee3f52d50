"""Blocking asset checks on release_splits: nothing is published unless every one of them passed on the latest
release. Rows a check rejects are quarantined under `check:<name>` with the rule and the value."""

from __future__ import annotations

from collections import Counter

import dagster as dg
from dagster_duckdb import DuckDBResource

from assets.common import provenance
from persona_factory.schema import QuarantineRow
from persona_factory.store import replace_bookkeeping
from quality import dedup, release, validate

from .resources import FactoryConfig, TeacherResource

RELEASE = "release_splits"
SHOWN = 20  # quarantine rows listed in a check's metadata; all of them are in the quarantine table


def _result(con, check: str, quarantined: list[QuarantineRow], passed: bool | None = None,
            **metadata) -> dg.AssetCheckResult:
    """Replace the check's quarantine rows and report them; it passes when it rejected no row, unless told."""
    replace_bookkeeping(con, f"check:{check}", quarantined)
    return dg.AssetCheckResult(passed=not quarantined if passed is None else passed, metadata={
        "quarantined_rows": len(quarantined), "by_rule": dict(Counter(q.rule for q in quarantined)),
        "first_rows": [f"{q.table_name} {q.row_key}: {q.rule} = {q.value}" for q in quarantined[:SHOWN]],
        **metadata})


def suite_check(suite: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=RELEASE, name=f"{suite}_suite", blocking=True,
                    description=f"great-expectations suite quality/suites/{suite}.json on the {suite} table.")
    def _check(duckdb: DuckDBResource) -> dg.AssetCheckResult:
        with duckdb.get_connection() as con:
            frame = con.execute(f"SELECT * EXCLUDE (record) FROM {suite}").df()
            result = validate.run_suite(suite, frame)
            return _result(con, f"{suite}_suite", result.quarantined, result.success, rows=result.rows,
                           failed_expectations=result.failed_expectations)

    return _check


@dg.asset_check(asset=RELEASE, blocking=True,
                description="Every stored record parses under its model in persona_factory/schema.py.")
def record_schemas(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    with duckdb.get_connection() as con:
        violations, checked, unregistered = validate.schema_violations(con)
        return _result(con, "record_schemas", violations, rows_checked=checked, tables_without_model=unregistered)


@dg.asset_check(asset=RELEASE, blocking=True,
                description="No duplicate or leaking pair from dedup_decisions has both sides in the release.")
def release_dedup(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    with duckdb.get_connection() as con:
        rows = [QuarantineRow(table_name="dedup_decisions", row_key=f"{a} ~ {b}", rule=reason,
                              value="both sides are released")
                for reason, a, b in dedup.unresolved_pairs(con)]
        return _result(con, "release_dedup", rows)


@dg.asset_check(asset=RELEASE, blocking=True,
                description="Model-free shortcut audit (quality/audit.py) of the benchmark as it will be published: "
                            "every applicable rule passes.")
def shortcut_audit(settings: FactoryConfig, teacher: TeacherResource, duckdb: DuckDBResource) -> dg.AssetCheckResult:
    with duckdb.get_connection() as con:
        _, report = release.audited_release(con, provenance(settings.load(), teacher.model_name()))
        rows = [QuarantineRow(table_name="release_benchmark", row_key=scope, rule=r.name, value=what)
                for r in report.failed for scope, what in r.failures]
        return _result(con, "shortcut_audit", rows, report.passed, items=report.findings.n_items,
                       rules={r.name: f"{r.status}: {r.detail}" for r in report.rules},
                       notes=report.findings.notes)


release_checks = [record_schemas, release_dedup, shortcut_audit, *(suite_check(s) for s in validate.SUITES)]


def release_check_failures(instance: dg.DagsterInstance) -> tuple[int | None, list[str]]:
    """The storage id of the latest release_splits materialization, and why it may not be published: every
    blocking check above must have passed on that very materialization. No reasons means publishing is allowed."""
    latest = instance.fetch_materializations(dg.AssetKey(RELEASE), limit=1).records
    if not latest:
        return None, [f"{RELEASE} has never been materialized"]
    release_id = latest[0].storage_id
    keys = [key for c in release_checks for key in c.check_keys]
    records = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    reasons = []
    for key in keys:
        record = records.get(key)
        evaluation = record.event.asset_check_evaluation if record is not None and record.event else None
        target = evaluation.target_materialization_data if evaluation is not None else None
        if evaluation is None or target is None or target.storage_id != release_id:
            reasons.append(f"{key.name} has not run on the latest {RELEASE}")
        elif not evaluation.passed:
            reasons.append(f"{key.name} failed")
    return release_id, reasons


def require_publishable(instance: dg.DagsterInstance) -> None:
    """Raise unless the latest release passed every blocking check (guards a publish step launched alone)."""
    _, reasons = release_check_failures(instance)
    if reasons:
        raise dg.Failure(description="not publishing: " + "; ".join(reasons))
