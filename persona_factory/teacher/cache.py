"""Persistent response cache: a re-run or a resume after a crash never pays for an answered request twice.

SQLite in WAL mode, so several step processes can read and write the same file safely.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from ..config import InputError, canonical_json
from .types import TeacherRequest


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
        with self._lock:
            row = self._con.execute(
                "SELECT ok, payload, failure, attempts FROM responses WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        ok, payload, failure, attempts = row
        return {"ok": bool(ok), "payload": json.loads(payload) if payload else None, "failure": failure,
                "attempts": attempts}

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
