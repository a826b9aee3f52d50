"""Deduplication and leakage decisions, computed in DuckDB and recorded with the pair and the reason."""

from __future__ import annotations

from pathlib import Path

import duckdb

SQL_DIR = Path(__file__).parent / "sql"
IMAGE_MAX_DISTANCE = 8  # resize / re-encode copies stay within 4 bits; unrelated photos are >= 10 apart


def _sql(name: str) -> str:
    return (SQL_DIR / f"{name}.sql").read_text()


def find_duplicates(con: duckdb.DuckDBPyConnection) -> int:
    """Replaces `dedup_decisions`; returns how many pairs were found."""
    con.execute("CREATE OR REPLACE TABLE dedup_decisions (kind VARCHAR, key_a VARCHAR, key_b VARCHAR,"
                " reason VARCHAR, distance INTEGER)")
    con.execute(f"INSERT INTO dedup_decisions {_sql('exact_duplicates')}")
    con.execute(f"INSERT INTO dedup_decisions {_sql('image_near_duplicates')}", {"max_distance": IMAGE_MAX_DISTANCE})
    con.execute(f"INSERT INTO dedup_decisions {_sql('leakage')}")
    return con.execute("SELECT count(*) FROM dedup_decisions").fetchone()[0]


def summary(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return dict(con.execute("SELECT reason, count(*) FROM dedup_decisions GROUP BY reason ORDER BY reason").fetchall())


def dropped_questions(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("SELECT key_b FROM dedup_decisions WHERE reason = 'duplicate_question'").fetchall()}
