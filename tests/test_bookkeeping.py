"""What every asset records around its work: quarantine rows and teacher failures per shard, replaced on re-runs,
and a stop when nothing the teacher was asked got through."""

from __future__ import annotations

import duckdb
import pytest

from assets.common import finish
from persona_factory.schema import QuarantineRow
from persona_factory.teacher.client import TeacherUnavailable
from persona_factory.teacher.types import TeacherResult, TeacherStats


def rows(con, table: str) -> list[tuple]:
    key = "row_key" if table == "quarantine" else "request_key"
    return sorted(con.execute(f"SELECT asset, {key}, partition FROM {table}").fetchall())


def quarantine(key: str) -> QuarantineRow:
    return QuarantineRow(table_name="dialogue_turns", row_key=key, rule="missing_phrase", value="...")


def test_bookkeeping_is_replaced_per_shard():
    con = duckdb.connect()
    owners = {"p_a": "shard-000", "p_b": "shard-001"}
    failed = TeacherResult(key="k", tag="turn:p_b:3", failure="truncated: output hit max_tokens", attempts=3)
    finish(con, "dialogues", TeacherStats(requests=2, failures=1), [quarantine("p_a:1"), quarantine("p_b:2")],
           [failed], shards=["shard-000", "shard-001"], owner_shard=owners)
    assert rows(con, "quarantine") == [("dialogues", "p_a:1", "shard-000"), ("dialogues", "p_b:2", "shard-001")]
    assert rows(con, "teacher_failures") == [("dialogues", "k", "shard-001")]
    # shard-001 alone again, now clean: shard-000's rows stay
    finish(con, "dialogues", TeacherStats(), [], [], shards=["shard-001"], owner_shard=owners)
    assert rows(con, "quarantine") == [("dialogues", "p_a:1", "shard-000")]
    assert rows(con, "teacher_failures") == []


def test_an_asset_whose_every_request_failed_stops_the_run():
    stats = TeacherStats(requests=3, failures=3, first_failure="transport: HTTP 400 at http://x/v1: bad schema")
    with pytest.raises(TeacherUnavailable, match="all 3 teacher requests failed.*bad schema"):
        finish(duckdb.connect(), "timeline_plans", stats)
    partly = TeacherStats(requests=3, failures=2, first_failure="schema: ...")
    assert finish(duckdb.connect(), "timeline_plans", partly).metadata["teacher_failures"] == 2
