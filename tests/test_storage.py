"""The working-table backends behind one interface: the local DuckDB file, Parquet on a local folder and Parquet on
S3 (moto's server on loopback) read back the same rows in the same canonical order; a commit replaces exactly its
own partitions, atomically; the table catalog is the one description of every table."""

from __future__ import annotations

import pytest

from persona_factory import catalog as C
from persona_factory.config import ConfigError, load_config
from persona_factory.schema import BenchmarkGateCount, QuarantineRow
from persona_factory.store import Batch, DuckDBStore, ParquetStore, open_store, read_records

try:
    from tests.servers import make_bucket
except ImportError:
    from servers import make_bucket

BACKENDS = ("duckdb", "parquet-file", "parquet-s3")


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    if request.param == "duckdb":
        return DuckDBStore(tmp_path / "pipeline.duckdb")
    if request.param == "parquet-file":
        return ParquetStore((tmp_path / "tables").as_uri())
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"t-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    make_bucket(endpoint, bucket)
    return ParquetStore(f"s3://{bucket}/run", {"endpoint_url": endpoint})


def decision_rows(con) -> list[tuple]:
    return con.execute("SELECT key_a, key_b FROM dedup_decisions ORDER BY rowid").fetchall()


def shard_write(store, shards: tuple[str, ...], rows: list[tuple], keep=None, writer="memory_db") -> None:
    """memory_db rows (persona, split, user_data, shard) of these shards."""
    batch = Batch(writer, shards, keep=keep)
    batch.add(C.MEMORY_DB, [r[:3] for r in rows], {C.SHARD: [r[3] for r in rows]})
    store.commit(batch)


def memory_rows(con) -> list[tuple]:
    return con.execute("SELECT persona_id, shard FROM memory_db ORDER BY rowid").fetchall()


def test_a_whole_table_is_replaced_and_read_back_in_written_order(store):
    batch = Batch("dedup_decisions")
    batch.add(C.DEDUP_DECISIONS, [("exact", "exact_turn", f"a{i}", f"b{i}", "p", "q", None, None) for i in (3, 1, 2)])
    store.commit(batch)
    with store.reader() as con:
        assert decision_rows(con) == [("a3", "b3"), ("a1", "b1"), ("a2", "b2")]
    batch.add(C.DEDUP_DECISIONS, [("exact", "exact_turn", "z", "y", "p", "q", 0.5, 2)])
    store.commit(batch)
    with store.reader() as con:
        assert decision_rows(con) == [("z", "y")]


def test_shards_read_back_in_canonical_order_whatever_order_they_ran_in(store):
    # interleaved as a multi-shard run writes them, then one shard again, alone
    shard_write(store, ("shard-000", "shard-001"), [("p1", "train", "{}", "shard-001"), ("p0", "train", "{}", "shard-000"),
                                                    ("p3", "train", "{}", "shard-001"), ("p2", "train", "{}", "shard-000")])
    canonical = [("p0", "shard-000"), ("p2", "shard-000"), ("p1", "shard-001"), ("p3", "shard-001")]
    with store.reader() as con:
        assert memory_rows(con) == canonical
    shard_write(store, ("shard-000",), [("p0", "train", "{}", "shard-000"), ("p2", "train", "{}", "shard-000")])
    with store.reader() as con:
        assert memory_rows(con) == canonical


def test_a_shard_rerun_replaces_exactly_its_own_rows_and_dropped_shards_go(store):
    shard_write(store, ("shard-000", "shard-001", "shard-002"),
                [("p0", "train", "{}", "shard-000"), ("p1", "train", "{}", "shard-001"), ("p2", "train", "{}", "shard-002")])
    shard_write(store, ("shard-001",), [("p1b", "train", "{}", "shard-001")], keep=("shard-000", "shard-001"))
    with store.reader() as con:
        assert memory_rows(con) == [("p0", "shard-000"), ("p1b", "shard-001")]


def test_bookkeeping_is_kept_per_writer_and_partition(store):
    def file(writer: str, shards: tuple[str, ...], keys: list[str]) -> None:
        batch = Batch(writer, shards)
        batch.add_bookkeeping([QuarantineRow(table_name="t", row_key=k, rule="r", value="v") for k in keys],
                              partition_of={"a": "shard-000", "b": "shard-001"}.__getitem__)
        store.commit(batch)

    file("dialogues", ("shard-000", "shard-001"), ["a:1", "b:2"])
    file("memory_targets", ("shard-000",), ["a:3"])
    file("dialogues", ("shard-001",), [])
    with store.reader() as con:
        assert sorted(con.execute("SELECT asset, row_key, partition FROM quarantine").fetchall()) == [
            ("dialogues", "a:1", "shard-000"), ("memory_targets", "a:3", "shard-000")]


def test_records_round_trip_through_the_catalog(store):
    counts = [BenchmarkGateCount(gate="blind", question_type=q, checked=n, rejected=n // 2)
              for q, n in (("LGT", 4), ("AEM", 2))]
    batch = Batch("benchmark_items")
    batch.add(C.BENCHMARK_GATE_COUNTS, counts)
    store.commit(batch)
    with store.reader() as con:
        assert read_records(con, C.BENCHMARK_GATE_COUNTS) == counts
        assert con.execute("SELECT question_type, checked FROM benchmark_gate_counts ORDER BY rowid").fetchall() == [
            ("LGT", 4), ("AEM", 2)]
        assert read_records(con, C.RELEASE_PERSONAS) == []  # a table never written reads as empty


def test_a_crashed_commit_leaves_the_last_complete_one_visible(tmp_path, monkeypatch):
    store = ParquetStore((tmp_path / "tables").as_uri())
    shard_write(store, ("shard-000",), [("p0", "train", "{}", "shard-000")])

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed before the manifest")

    monkeypatch.setattr(store, "_replace_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        shard_write(store, ("shard-000",), [("p0-new", "train", "{}", "shard-000")])
    with store.reader() as con:
        assert memory_rows(con) == [("p0", "shard-000")]
    monkeypatch.undo()
    shard_write(store, ("shard-000",), [("p0-new", "train", "{}", "shard-000")])
    with store.reader() as con:
        assert memory_rows(con) == [("p0-new", "shard-000")]
    # the re-run left only the objects its manifest names (the crashed run's objects are never read)
    live = {p for p in store.fs.find(store.root) if p.endswith(".parquet")}
    assert sum("memory_db" in p for p in live) == 2  # the committed object and the crashed run's orphan


def test_the_catalog_describes_every_stored_table():
    assert set(C.RECORD_TABLES) <= set(C.TABLES)
    for table in C.TABLES.values():
        assert table.column_names[-1] == ("record" if table.model else table.columns[-1].name)
        assert len(set(table.column_names)) == len(table.column_names), table.name
        if table.partition == C.SHARD:
            assert "persona_id" in table.column_names and table.column_names.count("shard") == 1, table.name


def test_storage_settings_choose_the_backend(tmp_path):
    cfg = load_config("tiny", overrides={"output_dir": str(tmp_path)})
    assert isinstance(open_store(cfg), DuckDBStore)
    parquet = open_store(load_config("tiny", overrides={"output_dir": str(tmp_path), "storage": {"backend": "parquet"}}))
    assert isinstance(parquet, ParquetStore) and parquet.root == str(tmp_path / "tables")
    with pytest.raises(ConfigError, match="storage.url"):
        open_store(load_config("tiny", overrides={"storage": {"backend": "parquet", "url": "nosuchfs://x/y"}}))
