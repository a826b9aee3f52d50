"""Where the working tables live, behind one interface with two backends.

Every asset reads through `Store.reader()` — a DuckDB connection on which each table of the catalog
(persona_factory/catalog.py) that has rows is visible under its name — and writes through `Store.commit(batch)`:
a `Batch` holds what one asset (the writer) produced for the partitions its run covers, and a commit replaces exactly
that, atomically. Rows read back in a canonical order (`ORDER BY rowid`): by shard, then in the order they were
written, whichever runs wrote them and on which machine.

- `DuckDBStore`: one local DuckDB file (the default, one machine). A commit is one transaction.
- `ParquetStore`: one Parquet object per table, writer and partition on any fsspec filesystem (`file://`, `s3://`,
  `gs://`, ...), read back by DuckDB through the registered fsspec filesystem (no DuckDB extension is downloaded).
  A commit writes its objects, then one manifest per partition naming them; readers see only objects a manifest
  names, so a partition's tables become visible together and a crashed run leaves nothing half-visible; a re-run
  replaces the manifest, then deletes the objects of the one it replaced.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

from .catalog import QUARANTINE, SHARD, TABLES, TEACHER_FAILURES, WRITER, Table
from .config import ConfigError, PipelineConfig
from .schema import QuarantineRow, TeacherFailure
from .teacher.types import tag_owner

M = TypeVar("M", bound=BaseModel)
WHOLE = ""  # the partition of an unpartitioned writer


# ---------------------------------------------------------------------------------------------- what a write holds


@dataclass
class Batch:
    """What one writer produced for `partitions` (shard keys, or WHOLE for an unpartitioned writer). Committing it
    replaces, per table: the rows of those shards (shard tables), the writer's rows of those partitions
    (bookkeeping), or the whole table. With `keep`, rows of shards not in it (the config no longer has them) go."""

    writer: str
    partitions: tuple[str, ...] = (WHOLE,)
    keep: tuple[str, ...] | None = None
    tables: dict[str, pa.Table] = field(default_factory=dict)

    def add(self, table: Table, rows: Sequence[Any], supplied: dict[str, Sequence[Any]] | None = None, *,
            shard_of: Mapping[str, str] | None = None) -> int:
        """Adds a table's rows; a shard table's rows are filed under their persona's shard (`shard_of`: persona id
        -> shard; a row table's persona is its first column)."""
        if table.partition == SHARD and shard_of is not None:
            persona = (lambda r: r[0]) if table.model is None else (lambda r: r.persona_id)  # noqa: E731
            supplied = {**(supplied or {}), SHARD: [shard_of[persona(r)] for r in rows]}
        self.tables[table.name] = table.arrow(rows, supplied)
        return len(rows)

    def add_arrow(self, table: Table, data: pa.Table) -> None:
        if data.column_names != table.column_names:
            raise ValueError(f"table {table.name}: columns {data.column_names} are not the catalog's "
                             f"{table.column_names}")
        self.tables[table.name] = data

    def add_bookkeeping(self, quarantined: Sequence[QuarantineRow], failures: Sequence[TeacherFailure] = (),
                        partition_of: Callable[[str], str] | None = None) -> None:
        """Quarantine rows and teacher failures, each filed under the partition of its owner (`partition_of`; the
        owner is a quarantine row key's part, or a failure tag's part after its kind, before the first ':')."""
        part = partition_of or (lambda _owner: self.partitions[0])
        self.add(QUARANTINE, [(self.writer, q.table_name, q.row_key, q.rule, q.value, part(q.row_key.split(":")[0]))
                              for q in quarantined])
        self.add(TEACHER_FAILURES, [(f.asset, f.request_key, f.tag, f.reason, f.attempts, part(tag_owner(f.tag)))
                                    for f in failures])


def _rows_of(table: Table, data: pa.Table, partition: str) -> pa.Table:
    if table.partition is None:
        return data
    column = SHARD if table.partition == SHARD else "partition"
    return data.filter(pc.equal(data[column], partition))


# ---------------------------------------------------------------------------------------------- reading helpers


def read_records(con: duckdb.DuckDBPyConnection, table: Table, where: str = "", params: Sequence[Any] = ()) -> list:
    """The records of a record table, in canonical order; an absent table reads as empty."""
    if not table_exists(con, table.name):
        return []
    rows = con.execute(f"SELECT record FROM {table.name} {where} ORDER BY rowid", list(params)).fetchall()
    return [table.model.model_validate_json(r[0]) for r in rows]  # type: ignore[union-attr]


def table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]).fetchone()[0])


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


class Store(Protocol):
    def reader(self) -> contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]: ...

    def commit(self, batch: Batch) -> None: ...


# ---------------------------------------------------------------------------------------------- DuckDB file


def apply_batch(con: duckdb.DuckDBPyConnection, batch: Batch) -> None:
    """A batch written into a DuckDB database (the DuckDBStore's commit, inside its transaction)."""
    for name, data in batch.tables.items():
        table = TABLES[name]
        target = f"main.{name}"
        exists = bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'main' "
                                  "AND table_name = ?", [name]).fetchone()[0])
        columns = [r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'main' AND table_name = ? "
            "ORDER BY ordinal_position", [name]).fetchall()]
        if table.partition is None or not exists or columns != table.column_names:
            # a table whose columns changed is recreated: other shards' rows go (those shards must re-run)
            con.execute(f"CREATE OR REPLACE TABLE {target} ({table.ddl()})")
        elif table.partition == WRITER:
            con.execute(f"DELETE FROM {target} WHERE asset = ? AND partition IN (SELECT unnest(?::VARCHAR[]))",
                        [batch.writer, list(batch.partitions)])
        else:
            con.execute(f"DELETE FROM {target} WHERE shard IN (SELECT unnest(?::VARCHAR[]))", [list(batch.partitions)])
            if batch.keep is not None:
                con.execute(f"DELETE FROM {target} WHERE shard NOT IN (SELECT unnest(?::VARCHAR[]))",
                            [list(batch.keep)])
        if table.partition == SHARD:  # a multi-shard run's rows come interleaved: shard by shard, stably
            data = data.take(pc.sort_indices(data, [(SHARD, "ascending")]))
        con.register("_incoming", data)
        try:
            con.execute(f"INSERT INTO {target} SELECT * FROM _incoming")
        finally:
            con.unregister("_incoming")
        if table.partition == SHARD and con.execute(
                f"SELECT count(*) FROM {target} WHERE shard NOT IN (SELECT unnest(?::VARCHAR[]))",
                [list(batch.partitions)]).fetchone()[0]:
            # keep rows in canonical order (shard, then as written) whatever order shards were run in
            con.execute(f"CREATE OR REPLACE TABLE {target} AS SELECT * FROM {target} ORDER BY shard, rowid")


class DuckDBStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def __repr__(self) -> str:
        return f"DuckDBStore({self.path})"

    @contextlib.contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with duckdb.connect(str(self.path)) as con:
            yield con

    def commit(self, batch: Batch) -> None:
        with duckdb.connect(str(self.path)) as con:
            con.begin()
            try:
                apply_batch(con, batch)
                con.commit()
            except BaseException:
                con.rollback()
                raise


# ---------------------------------------------------------------------------------------------- Parquet objects


MANIFESTS = "_manifests"
ROW_BITS = 40  # rowid = (position of the object in the canonical order << ROW_BITS) + row number in the object


def _partition_dir(partition: str) -> str:
    return f"shard={partition}" if partition != WHOLE else "all"


class ParquetStore:
    """Tables as Parquet objects under `url`: `<table>/<partition>/<writer>-<commit>.parquet`, made visible by
    `_manifests/<writer>/<partition>.json`. `options` go to the fsspec filesystem (e.g. `endpoint_url`);
    credentials come from the filesystem's usual environment (AWS_ACCESS_KEY_ID, ...)."""

    def __init__(self, url: str, options: Mapping[str, Any] | None = None):
        import fsspec

        self.url = url.rstrip("/")
        # no cached listings: other machines commit while this process reads
        options = {"use_listings_cache": False, "skip_instance_cache": True, **dict(options or {})}
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **options)
        self.protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.fs.makedirs(self.root, exist_ok=True)

    def __repr__(self) -> str:
        return f"ParquetStore({self.url})"

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _url(self, path: str) -> str:
        """What DuckDB reads: a local path, or a URL its registered fsspec filesystem serves."""
        return path if self.protocol in ("file", "local") else f"{self.protocol}://{path}"

    def _manifests(self) -> list[dict]:
        base = self._path(MANIFESTS)
        paths = sorted(p for p in self.fs.find(base) if p.endswith(".json")) if self.fs.exists(base) else []
        if not paths:
            return []
        blobs = self.fs.cat(paths)
        return [json.loads(blobs[p]) for p in paths]

    @contextlib.contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        files: dict[str, list[tuple[str, str, str]]] = {}  # table -> (partition, writer, object path)
        for manifest in self._manifests():
            for table, path in manifest["tables"].items():
                files.setdefault(table, []).append((manifest["partition"], manifest["writer"], path))
        with duckdb.connect() as con:
            if self.protocol not in ("file", "local"):
                con.register_filesystem(self.fs)
            for table, entries in sorted(files.items()):
                urls = [self._url(self._path(path)) for _, _, path in sorted(entries)]
                con.execute(f"CREATE VIEW {table} AS SELECT * EXCLUDE (file_row_number), "
                            f"(file_index::BIGINT << {ROW_BITS}) + file_row_number AS rowid "
                            f"FROM read_parquet({urls!r}, union_by_name = true, file_row_number = true)")
            yield con

    def commit(self, batch: Batch) -> None:
        commit_id = uuid.uuid4().hex[:12]
        writer_dir = batch.writer.replace(":", "_").replace("/", "_")
        for partition in batch.partitions:
            written = {}
            for name, data in batch.tables.items():
                rel = posixpath.join(name, _partition_dir(partition), f"{writer_dir}-{commit_id}.parquet")
                self.fs.makedirs(posixpath.dirname(self._path(rel)), exist_ok=True)
                with self.fs.open(self._path(rel), "wb") as f:
                    pq.write_table(_rows_of(TABLES[name], data, partition), f, compression="zstd")
                written[name] = rel
            manifest = {"writer": batch.writer, "partition": partition, "commit": commit_id, "tables": written}
            self._replace_manifest(posixpath.join(MANIFESTS, writer_dir, f"{_partition_dir(partition)}.json"),
                                   manifest)
        if batch.keep is not None:
            keep = {_partition_dir(p) for p in batch.keep} | {_partition_dir(WHOLE)}
            base = self._path(MANIFESTS, writer_dir)
            for path in self.fs.find(base) if self.fs.exists(base) else []:
                if posixpath.basename(path)[:-len(".json")] not in keep:
                    self._drop_manifest(path)

    def _replace_manifest(self, rel: str, manifest: dict) -> None:
        path = self._path(rel)
        old = json.loads(self.fs.cat(path)) if self.fs.exists(path) else None
        data = json.dumps(manifest, sort_keys=True).encode()
        if self.protocol in ("file", "local"):
            # a local rename is atomic; an object store's single PUT already is
            tmp = f"{path}.{manifest['commit']}.tmp"
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
            self.fs.pipe(tmp, data)
            self.fs.mv(tmp, path)
        else:
            self.fs.pipe(path, data)
        if old is not None:
            self._delete_objects(old, keep=set(manifest["tables"].values()))

    def _drop_manifest(self, path: str) -> None:
        old = json.loads(self.fs.cat(path))
        self.fs.rm(path)
        self._delete_objects(old, keep=set())

    def _delete_objects(self, manifest: dict, keep: set[str]) -> None:
        for rel in manifest["tables"].values():
            if rel not in keep and self.fs.exists(self._path(rel)):
                self.fs.rm(self._path(rel))


# ---------------------------------------------------------------------------------------------- choosing one


def open_store(cfg: PipelineConfig) -> DuckDBStore | ParquetStore:
    s = cfg.storage
    if s.backend == "duckdb":
        return DuckDBStore(cfg.duckdb_path)
    url = s.url or (cfg.output_path / "tables").as_uri()
    try:
        return ParquetStore(url, s.options)
    except ImportError as e:
        raise ConfigError(f"storage.url {url!r} needs a filesystem package that is not installed ({e}); "
                          "install the cluster extra (`uv sync --extra cluster`) for s3://") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"storage.url {url!r} cannot be opened: {type(e).__name__}: {e}") from None
