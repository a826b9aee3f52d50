"""Stored records read back for the stages: a persona's history, records grouped by persona, memory replays.
Optionally limited to some persona shards (what a shard run reads)."""

from __future__ import annotations

import json
from typing import Sequence, TypeVar

import duckdb

from .catalog import (
    DIALOGUES, IMAGE_POOL, MEMORY_DB, PERSONALITY_STEPS, PERSONAS, SEMANTIC_MEMORY_TARGETS, SESSION_MEMORY_TARGETS,
    TIMELINE_PLANS, Table,
)
from .schema import Dialogue, ImageRecord, Persona, QuarantineRow, TimelinePlan
from .stages.memory import replay_user_data
from .store import read_records

R = TypeVar("R")


def read_shards(con: duckdb.DuckDBPyConnection, table: Table, shards: Sequence[str] | None = None) -> list:
    """A shard table's records, of these shards only when given."""
    if shards is None:
        return read_records(con, table)
    return read_records(con, table, "WHERE shard IN (SELECT unnest(?::VARCHAR[]))", [list(shards)])


def by_persona(records: Sequence[R]) -> dict[str, list[R]]:
    """Records grouped by their persona, in their given order."""
    out: dict[str, list[R]] = {}
    for r in records:
        out.setdefault(r.persona_id, []).append(r)  # type: ignore[attr-defined]
    return out


def load_histories(con: duckdb.DuckDBPyConnection, shards: Sequence[str] | None = None
                   ) -> tuple[dict[str, Persona], dict[str, TimelinePlan], dict[str, Dialogue], list[ImageRecord]]:
    personas = {p.persona_id: p for p in read_shards(con, PERSONAS, shards)}
    plans = {p.persona_id: p for p in read_shards(con, TIMELINE_PLANS, shards)}
    dialogues = {d.persona_id: d for d in read_shards(con, DIALOGUES, shards)}
    return personas, plans, dialogues, read_records(con, IMAGE_POOL)


def memory_databases(con: duckdb.DuckDBPyConnection, split: str | None = None,
                     shards: Sequence[str] | None = None) -> dict[str, dict]:
    """persona_id -> stored memory database (user_data.json), of one split and some shards when given."""
    where = ["TRUE"]
    params: list = []
    if split is not None:
        where.append("split = ?")
        params.append(split)
    if shards is not None:
        where.append("shard IN (SELECT unnest(?::VARCHAR[]))")
        params.append(list(shards))
    rows = con.execute(f"SELECT persona_id, user_data FROM {MEMORY_DB.name} WHERE {' AND '.join(where)} "
                       "ORDER BY persona_id", params).fetchall()
    return {pid: json.loads(u) for pid, u in rows}


def replay_all(con: duckdb.DuckDBPyConnection, shards: Sequence[str] | None = None
               ) -> tuple[dict[str, tuple[str, dict]], list[QuarantineRow]]:
    """Every persona's memory database replayed from the stored targets, with its split; a persona whose targets
    do not match its dialogue is quarantined."""
    personas, _, dialogues, _ = load_histories(con, shards)
    semantic = by_persona(read_shards(con, SEMANTIC_MEMORY_TARGETS, shards))
    sessions = by_persona(read_shards(con, SESSION_MEMORY_TARGETS, shards))
    steps = by_persona(read_shards(con, PERSONALITY_STEPS, shards))
    replayed, quarantined = {}, []
    for pid, dialogue in sorted(dialogues.items()):
        try:
            replayed[pid] = (personas[pid].split, replay_user_data(
                personas[pid], dialogue, semantic.get(pid, []), sessions.get(pid, []), steps.get(pid, [])))
        except (KeyError, ValueError) as err:
            quarantined.append(QuarantineRow(table_name=MEMORY_DB.name, row_key=pid, rule="replay_mismatch",
                                             value=str(err)))
    return replayed, quarantined
