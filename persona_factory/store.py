"""DuckDB persistence for records: each table keeps the full record as JSON plus flat columns for SQL."""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence, TypeVar

import duckdb
import pyarrow as pa
from pydantic import BaseModel

from .schema import QuarantineRow, TeacherFailure

M = TypeVar("M", bound=BaseModel)
ARROW = {"VARCHAR": pa.string(), "BIGINT": pa.int64(), "INTEGER": pa.int32(), "BOOLEAN": pa.bool_(),
         "DOUBLE": pa.float64(), "VARCHAR[]": pa.list_(pa.string()), "INTEGER[]": pa.list_(pa.int32())}
Columns = dict[str, tuple[str, Callable[[Any], Any]]]


def write_records(con: duckdb.DuckDBPyConnection, table: str, records: Sequence[BaseModel], columns: Columns,
                  *, partition: tuple[str, Sequence[str]] | None = None) -> int:
    """Replace `table` with these records (idempotent re-runs), in their given order.

    With `partition=(column, keys)` only the rows whose `column` is in `keys` are replaced, so one shard re-runs
    without touching the others; a table whose columns changed is recreated, which drops its other shards' rows
    (those shards must re-run to come back).
    """
    arrays = {name: pa.array([fn(r) for r in records], type=ARROW[sql_type]) for name, (sql_type, fn) in columns.items()}
    arrays["record"] = pa.array([r.model_dump_json(by_alias=True) for r in records], type=pa.string())
    data = pa.table(arrays)
    ddl = ", ".join(f"{name} {sql_type}" for name, (sql_type, _) in columns.items()) + ", record JSON"
    if partition is None or _columns(con, table) != [*columns, "record"]:
        con.execute(f"CREATE OR REPLACE TABLE {table} ({ddl})")
    else:
        column, keys = partition
        con.execute(f"DELETE FROM {table} WHERE {column} IN (SELECT unnest(?::VARCHAR[]))", [list(keys)])
    con.register("_incoming", data)
    try:
        con.execute(f"INSERT INTO {table} SELECT * FROM _incoming")
    finally:
        con.unregister("_incoming")
    return len(records)


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [r[0] for r in con.execute("SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                                      "ORDER BY ordinal_position", [table]).fetchall()]


def read_records(con: duckdb.DuckDBPyConnection, table: str, model: type[M], where: str = "",
                 params: Sequence[Any] = ()) -> list[M]:
    rows = con.execute(f"SELECT record FROM {table} {where} ORDER BY rowid", list(params)).fetchall()
    return [model.model_validate_json(r[0]) for r in rows]


def table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]).fetchone()[0])


def replace_bookkeeping(con: duckdb.DuckDBPyConnection, asset: str, quarantined: Sequence[QuarantineRow],
                        failures: Sequence[TeacherFailure] = (), *, partitions: Sequence[str] = ("",),
                        partition_of: Callable[[str], str] | None = None) -> None:
    """Quarantine rows and teacher failures are kept per producing asset and partition, replaced on each run.

    A partitioned asset names the partitions its run covers and `partition_of(owner)`, the partition of a row's
    owner: the part of a quarantine row key, or of a failure tag after its kind, before the first ':'.
    """
    con.execute("CREATE TABLE IF NOT EXISTS quarantine (asset VARCHAR, table_name VARCHAR, row_key VARCHAR,"
                " rule VARCHAR, value VARCHAR, partition VARCHAR DEFAULT '')")
    con.execute("CREATE TABLE IF NOT EXISTS teacher_failures (asset VARCHAR, request_key VARCHAR, tag VARCHAR,"
                " reason VARCHAR, attempts INTEGER, partition VARCHAR DEFAULT '')")
    where = "asset = ? AND partition IN (SELECT unnest(?::VARCHAR[]))"
    con.execute(f"DELETE FROM quarantine WHERE {where}", [asset, list(partitions)])
    con.execute(f"DELETE FROM teacher_failures WHERE {where}", [asset, list(partitions)])
    part = partition_of or (lambda _owner: partitions[0])
    if quarantined:
        con.executemany("INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?)",
                        [(asset, q.table_name, q.row_key, q.rule, q.value, part(q.row_key.split(":")[0]))
                         for q in quarantined])
    if failures:
        con.executemany("INSERT INTO teacher_failures VALUES (?, ?, ?, ?, ?, ?)",
                        [(f.asset, f.request_key, f.tag, f.reason, f.attempts, part((f.tag.split(":") + [""])[1]))
                         for f in failures])


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)
