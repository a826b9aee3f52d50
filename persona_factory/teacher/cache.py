"""Persistent response cache: a re-run or a resume after a crash never pays for an answered request twice.

Two backends with the same keys and interface: SQLite in WAL mode (the default: several processes of one machine
share the file safely) and Postgres (`cache.backend: postgres`), shared by every machine of a cluster, written in
batches at most `cache.flush_interval_s` apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Sequence

from ..config import ConfigError, InputError, PipelineConfig, canonical_json
from .types import TeacherRequest

COLUMNS = ("key", "model", "tag", "ok", "payload", "failure", "attempts", "prompt_tokens", "completion_tokens")


def request_key(model_id: str, request: TeacherRequest) -> str:
    """sha256 over everything that can change the answer: model, rendered messages (images by content
    hash), sampling parameters with the seed, and the output schema."""
    payload = {
        "model": model_id,
        "messages": [m.to_key() for m in request.messages],
        "sampling": {
            "temperature": request.sampling.temperature,
            "top_p": request.sampling.top_p,
            "max_tokens": request.sampling.max_tokens,
            "seed": request.sampling.seed,
        },
        "schema": request.json_schema(),
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


class ResponseCache:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        try:
            self._con = sqlite3.connect(str(path), check_same_thread=False, timeout=60)
            self._con.execute("PRAGMA journal_mode=WAL")
            # each answer is committed at once, without an fsync: in WAL mode a commit then survives the process
            # dying (what a resume relies on) and only a power loss can take the last ones; an fsync per answer
            # would cost milliseconds each and cap a run far below what a fleet of engines answers
            self._con.execute("PRAGMA synchronous=NORMAL")
            self._con.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT, tag TEXT, ok INTEGER,"
                " payload TEXT, failure TEXT, attempts INTEGER, prompt_tokens INTEGER, completion_tokens INTEGER,"
                " created TEXT DEFAULT CURRENT_TIMESTAMP)"
            )
            self._con.commit()
        except sqlite3.DatabaseError as e:
            raise InputError(f"teacher response cache {path} cannot be used ({e}): move it away (every answer is "
                             "then asked again) or point `output_dir` elsewhere") from None

    def get(self, key: str) -> dict[str, Any] | None:
        return self.get_many([key]).get(key)

    def get_many(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The cached entries among `keys`: key -> {ok, payload, failure, attempts}."""
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            for i in range(0, len(keys), 500):  # SQLite's bound-parameter limit
                part = keys[i:i + 500]
                rows = self._con.execute("SELECT key, ok, payload, failure, attempts FROM responses WHERE key IN "
                                         f"({', '.join('?' * len(part))})", part).fetchall()
                out.update((r[0], _entry(*r[1:])) for r in rows)
        return out

    def put(self, key: str, model: str, tag: str, *, payload: Any = None, failure: str | None = None,
            attempts: int, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            self._con.execute(
                "INSERT OR REPLACE INTO responses (key, model, tag, ok, payload, failure, attempts, prompt_tokens,"
                " completion_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, model, tag, int(failure is None), None if payload is None else json.dumps(payload), failure,
                 attempts, prompt_tokens, completion_tokens),
            )
            self._con.commit()

    def count(self) -> int:
        with self._lock:
            return self._con.execute("SELECT count(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._con.close()


def _entry(ok: Any, payload: str | None, failure: str | None, attempts: int) -> dict[str, Any]:
    return {"ok": bool(ok), "payload": json.loads(payload) if payload else None, "failure": failure,
            "attempts": attempts}


class PostgresResponseCache:
    """The cache every machine shares. Answers are buffered and written by a background thread in batches (one
    INSERT ... ON CONFLICT per flush, at most `flush_interval_s` apart), so an answer survives a crash of its
    process once that long has passed; a later answer replaces only a recorded failure."""

    def __init__(self, url: str, flush_interval_s: float = 0.5):
        import psycopg2

        self._psycopg2 = psycopg2
        self._url = url
        self._lock = threading.Lock()
        self._pending: dict[str, tuple] = {}  # answered, not yet written (and readable meanwhile)
        self._read = self._connect()
        with self._read.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT, tag TEXT, ok BOOLEAN,"
                        " payload TEXT, failure TEXT, attempts INTEGER, prompt_tokens INTEGER,"
                        " completion_tokens INTEGER, created TIMESTAMPTZ DEFAULT now())")
        self._write = self._connect()
        self._interval = flush_interval_s
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._flusher = threading.Thread(target=self._flush_loop, name="response-cache-flush", daemon=True)
        self._flusher.start()

    def _connect(self):
        con = self._psycopg2.connect(self._url)
        con.autocommit = True
        return con

    def get(self, key: str) -> dict[str, Any] | None:
        return self.get_many([key]).get(key)

    def get_many(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        with self._lock:
            out = {k: _entry(*self._pending[k][3:7]) for k in keys if k in self._pending}
            rest = [k for k in keys if k not in out]
            if rest:
                with self._read.cursor() as cur:
                    cur.execute("SELECT key, ok, payload, failure, attempts FROM responses WHERE key = ANY(%s)",
                                (rest,))
                    out.update((r[0], _entry(*r[1:])) for r in cur.fetchall())
        return out

    def put(self, key: str, model: str, tag: str, *, payload: Any = None, failure: str | None = None,
            attempts: int, prompt_tokens: int, completion_tokens: int) -> None:
        if self._error is not None:
            raise RuntimeError(f"the response cache stopped writing: {self._error}") from self._error
        with self._lock:
            self._pending[key] = (key, model, tag, failure is None,
                                  None if payload is None else json.dumps(payload), failure, attempts, prompt_tokens,
                                  completion_tokens)

    def _flush_loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def flush(self) -> None:
        from psycopg2.extras import execute_values

        with self._lock:
            rows = list(self._pending.values())
        if not rows:
            return
        try:
            with self._write.cursor() as cur:
                execute_values(cur, f"INSERT INTO responses ({', '.join(COLUMNS)}) VALUES %s ON CONFLICT (key) DO "
                               "UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[1:]) +
                               ", created = now() WHERE NOT responses.ok", rows, page_size=1000)
        except self._psycopg2.Error as e:
            self._error = e
            raise
        with self._lock:
            for row in rows:
                if self._pending.get(row[0]) is row:
                    del self._pending[row[0]]

    def count(self) -> int:
        self.flush()
        with self._read.cursor() as cur:
            cur.execute("SELECT count(*) FROM responses")
            return cur.fetchone()[0]

    def close(self) -> None:
        self._stop.set()
        self._flusher.join(timeout=10)
        self.flush()
        self._read.close()
        self._write.close()


def open_cache(cfg: PipelineConfig) -> ResponseCache | PostgresResponseCache:
    """The configured response cache: the SQLite file under the output folder, or the shared Postgres database
    whose URL is in the environment variable `cache.url_env` (it may carry a password, so never in the config)."""
    c = cfg.cache
    if c.backend == "sqlite":
        return ResponseCache(cfg.output_path / "teacher_cache.sqlite")
    url = os.environ.get(c.url_env)
    if not url:
        raise ConfigError(f"cache.backend is 'postgres' but the environment variable {c.url_env} (setting "
                          "`cache.url_env`) holding its URL is not set")
    try:
        return PostgresResponseCache(url, c.flush_interval_s)
    except ImportError:
        raise ConfigError("cache.backend 'postgres' needs psycopg2: install the cluster extra "
                          "(`uv sync --extra cluster`)") from None
    except Exception as e:  # psycopg2.OperationalError and friends; the URL is not echoed (it may hold a password)
        raise ConfigError(f"cannot connect to the response cache named by ${c.url_env} (setting `cache.url_env`): "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
