"""Blocking asset checks: the great-expectations suites under quality/suites/ must pass before publishing."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from persona_factory.store import replace_bookkeeping
from quality import validate


def suite_check(suite: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset="release_splits", name=f"{suite}_suite", blocking=True,
                    description=f"great-expectations suite quality/suites/{suite}.json on the {suite} table.")
    def _check(duckdb: DuckDBResource) -> dg.AssetCheckResult:
        with duckdb.get_connection() as con:
            frame = con.execute(f"SELECT * EXCLUDE (record) FROM {suite}").df()
            result = validate.run_suite(suite, frame)
            replace_bookkeeping(con, f"check:{suite}", result.quarantined)
        return dg.AssetCheckResult(passed=result.success, metadata={
            "rows": result.rows, "failed_expectations": result.failed_expectations,
            "quarantined_rows": len(result.quarantined)})

    return _check


release_checks = [suite_check(s) for s in validate.SUITES]
