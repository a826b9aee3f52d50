"""What every asset records around its work: quarantine rows and teacher failures per shard, replaced on re-runs,
and a stop when nothing the teacher was asked got through."""

from __future__ import annotations

import duckdb
import pytest

import dagster as dg

from assets.common import answered, finish
from persona_factory.schema import QuarantineRow
from persona_factory.store import Batch, DuckDBStore
from persona_factory.teacher.client import TeacherUnavailable
from persona_factory.teacher.embedded import EMBEDDED_SERVED_NAME
from persona_factory.teacher.types import TeacherResult, TeacherStats
from pipelines.definitions import build_definitions
from pipelines.partitions import all_shards_tags
from pipelines.resources import FactoryConfig

try:
    from tests.fake_openai import FakeOpenAI, Reply
except ImportError:
    from fake_openai import FakeOpenAI, Reply


def rows(con, table: str) -> list[tuple]:
    key = "row_key" if table == "quarantine" else "request_key"
    return sorted(con.execute(f"SELECT asset, {key}, partition FROM {table}").fetchall())


def quarantine(key: str) -> QuarantineRow:
    return QuarantineRow(table_name="dialogue_turns", row_key=key, rule="missing_phrase", value="...")


def test_bookkeeping_is_replaced_per_shard(tmp_path):
    store = DuckDBStore(tmp_path / "pipeline.duckdb")
    owners = {"p_a": "shard-000", "p_b": "shard-001"}
    failed = TeacherResult(key="k", tag="turn:p_b:3", failure="truncated: output hit max_tokens", attempts=3)
    finish(store, Batch("dialogues", ("shard-000", "shard-001")), TeacherStats(requests=2, failures=1),
           [quarantine("p_a:1"), quarantine("p_b:2")], [failed], owner_shard=owners)
    with store.reader() as con:
        assert rows(con, "quarantine") == [("dialogues", "p_a:1", "shard-000"), ("dialogues", "p_b:2", "shard-001")]
        assert rows(con, "teacher_failures") == [("dialogues", "k", "shard-001")]
    # shard-001 alone again, now clean: shard-000's rows stay
    finish(store, Batch("dialogues", ("shard-001",)), TeacherStats(), [], [], owner_shard=owners)
    with store.reader() as con:
        assert rows(con, "quarantine") == [("dialogues", "p_a:1", "shard-000")]
        assert rows(con, "teacher_failures") == []


def test_an_asset_whose_every_request_failed_stops_the_run():
    stats = TeacherStats(requests=3, failures=3, first_failure="transport: HTTP 400 at http://x/v1: bad schema")
    with pytest.raises(TeacherUnavailable, match="all 3 teacher requests failed.*bad schema"):
        answered("timeline_plans", stats)
    answered("timeline_plans", TeacherStats(requests=3, failures=2, first_failure="schema: ..."))
    answered("image_pool", TeacherStats())


def test_a_run_whose_teacher_refuses_everything_keeps_the_rows_it_had(tmp_path):
    """The stop comes before any write: a refused schema does not replace good personas with none."""
    with FakeOpenAI(EMBEDDED_SERVED_NAME, responder=lambda body: Reply.status(400)) as fake:
        settings = FactoryConfig(preset="tiny", output_dir=str(tmp_path), teacher_base_urls=[fake.base_url])
        defs = build_definitions(settings)
        with duckdb.connect(str(tmp_path / "pipeline.duckdb")) as con:
            con.execute("CREATE TABLE personas (persona_id VARCHAR, split VARCHAR, shard VARCHAR, name VARCHAR, "
                        "record JSON)")
            con.execute("INSERT INTO personas VALUES ('p_kept', 'train', 'shard-000', 'Ana', '{}')")
        with dg.instance_for_test() as instance:
            result = dg.materialize([a for a in defs.assets if isinstance(a, dg.AssetsDefinition)],
                                    selection=["personas"], instance=instance, resources=defs.resources,
                                    tags=all_shards_tags(settings.load()), raise_on_error=False)
        assert not result.success
        [failure] = result.get_step_failure_events()
        assert "teacher requests failed" in failure.event_specific_data.error.to_string()
        with duckdb.connect(str(tmp_path / "pipeline.duckdb"), read_only=True) as con:
            assert con.execute("SELECT persona_id FROM personas").fetchall() == [("p_kept",)]
