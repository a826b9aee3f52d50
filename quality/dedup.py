"""Deduplication and leakage, computed in DuckDB; every pair found is recorded in `dedup_decisions` with its reason.

What is compared (quality/sql/dedup_units.sql): turns and sessions (exact and MinHash-LSH near duplicates),
benchmark questions of one persona (exact, paraphrase by content words, and paraphrase by MiniLM embedding cosine),
pool images (perceptual hash within a Hamming distance), and training against benchmark: personas, sessions and
images. `release_exclusions` turns the pairs into what the release leaves out; that keeps finding (SQL) and
deciding (a pure function) apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
import re
from pathlib import Path

import duckdb
import numpy as np

from persona_factory.catalog import DEDUP_DECISIONS
from persona_factory.config import QualitySettings
from persona_factory.embeddings import TextEmbedder

SQL_DIR = Path(__file__).parent / "sql"
DECISIONS = DEDUP_DECISIONS.name
BANDS_PER_PASS = 8  # LSH bands joined at once: bounds the memory of the candidate join
# words that carry no content in a question; two paraphrases differ mostly in these
STOP_WORDS = (
    "a an the i me my mine myself you your we our it its is am are was were be been being do did does done have has "
    "had what which who whom whose when where why how that this these those there here of to in on at for from with "
    "about as by into than then so and or but not no any some one ever again tell remember recall said say "
    "mentioned mention told"
).split()


def _sql(name: str) -> str:
    return (SQL_DIR / f"{name}.sql").read_text()


def run_script(con: duckdb.DuckDBPyConnection, name: str, params: Mapping[str, object] | None = None,
               **fmt: str) -> None:
    """Run every statement of quality/sql/<name>.sql; `fmt` fills table-name placeholders."""
    text = _sql(name).format(**fmt) if fmt else _sql(name)
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    for statement in filter(None, (s.strip() for s in code.split(";"))):
        con.execute(statement, {k: v for k, v in (params or {}).items() if re.search(rf"\${k}\b", statement)})


def install_macros(con: duckdb.DuckDBPyConnection) -> None:
    run_script(con, "macros")


# ---------------------------------------------------------------------------------------------- finding


def find_duplicates(con: duckdb.DuckDBPyConnection, settings: QualitySettings, embedder: TextEmbedder) -> int:
    """Replace `dedup_decisions` with every pair found; return how many."""
    install_macros(con)
    create_decisions(con)
    run_script(con, "dedup_units")
    text_duplicates(con, "dedup_turns", "turn", settings, leaks_across_sides=False)
    text_duplicates(con, "dedup_sessions", "session", settings, leaks_across_sides=True)
    question_duplicates(con, settings, embedder)
    con.execute("CREATE OR REPLACE TEMP VIEW image_hashes AS "
                "SELECT record->>'$.image_id' AS image_id, TRY_CAST(record->>'$.phash' AS BIGINT) AS phash "
                "FROM image_pool WHERE phash IS NOT NULL")
    image_near_duplicates(con, settings.image_max_hamming)
    run_script(con, "leakage")
    con.execute(f"INSERT INTO {DECISIONS} SELECT * FROM leakage_pairs")
    return con.execute(f"SELECT count(*) FROM {DECISIONS}").fetchone()[0]


def create_decisions(con: duckdb.DuckDBPyConnection) -> None:
    """An empty `dedup_decisions` in the connection (the asset stores it): one row per pair; key_a is the first
    occurrence (the training side for leakage)."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE {DECISIONS} ({DEDUP_DECISIONS.ddl()})")


def text_duplicates(con: duckdb.DuckDBPyConnection, units: str, kind: str, settings: QualitySettings, *,
                    leaks_across_sides: bool) -> None:
    """Exact then near duplicates among `units(key, persona_id, side, ord, text)`, appended to the decisions.

    Near duplicates are searched among first occurrences only: a copy of a text is already paired with it.
    With `leaks_across_sides`, a pair joining a training and a benchmark unit is recorded as leakage.
    """
    exact = _sql("exact_duplicates").format(units=units, partition="text")
    con.execute(f"CREATE OR REPLACE TEMP TABLE exact_pairs AS {exact}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE lsh_keys AS SELECT row_number() OVER (ORDER BY ord) AS doc_id, key, "
                f"persona_id, side, text FROM {units} WHERE text <> '' AND key NOT IN (SELECT key_b FROM exact_pairs)")
    con.execute("CREATE OR REPLACE TEMP VIEW lsh_docs AS SELECT doc_id, text FROM lsh_keys")
    minhash_pairs(con, settings)
    con.execute("CREATE OR REPLACE TEMP TABLE near_pairs AS "
                "SELECT x.key AS key_a, y.key AS key_b, x.persona_id AS persona_a, y.persona_id AS persona_b, "
                "x.side AS side_a, y.side AS side_b, p.similarity "
                "FROM lsh_pairs p JOIN lsh_keys x ON x.doc_id = p.a JOIN lsh_keys y ON y.doc_id = p.b")
    _record(con, kind, "exact_pairs", f"exact_{kind}", leaks_across_sides)
    _record(con, kind, "near_pairs", f"near_duplicate_{kind}", leaks_across_sides)


def minhash_pairs(con: duckdb.DuckDBPyConnection, settings: QualitySettings) -> None:
    """MinHash LSH over the view `lsh_docs(doc_id, text)`; creates `lsh_pairs(a, b, similarity)` with a < b."""
    seeds = [r[0] for r in con.execute("SELECT hash(i) FROM range(?) t(i) ORDER BY i",
                                       [settings.minhash_permutations]).fetchall()]
    run_script(con, "minhash_signatures", {"shingle_words": settings.shingle_words,
                                           "min_shingles": settings.min_shingles},
               shingle_hash=f"hash({', '.join(f'w[i + {j}]' for j in range(1, settings.shingle_words + 1))})",
               min_hashes=", ".join(f"min(hash(xor(h, {s}::UBIGINT)) >> 32)::UINTEGER" for s in seeds))
    con.execute("CREATE OR REPLACE TEMP TABLE lsh_candidates (a BIGINT, b BIGINT)")
    rows = settings.minhash_permutations // settings.minhash_bands
    for band_from in range(0, settings.minhash_bands, BANDS_PER_PASS):
        run_script(con, "minhash_candidates", {"rows": rows, "band_from": band_from,
                                               "band_to": min(band_from + BANDS_PER_PASS, settings.minhash_bands)})
    run_script(con, "minhash_verify", {"threshold": settings.near_duplicate_similarity})
    con.execute("DROP TABLE lsh_candidates")


def question_duplicates(con: duckdb.DuckDBPyConnection, settings: QualitySettings, embedder: TextEmbedder) -> None:
    """Exact and paraphrased questions of one persona; the later item of a pair is the duplicate. A paraphrase is
    found by content words or, failing that, by embedding cosine."""
    con.execute("CREATE OR REPLACE TEMP TABLE exact_pairs AS "
                + _sql("exact_duplicates").format(units="dedup_questions", partition="persona_id, text"))
    con.execute("CREATE OR REPLACE TEMP TABLE near_pairs AS " + _sql("question_near_duplicates"),
                {"stop_words": STOP_WORDS, "similarity": settings.question_similarity})
    embedding_pairs(con, embedder, settings.question_embedding_similarity)
    _record(con, "question", "exact_pairs", "exact_question", False)
    _record(con, "question", "near_pairs", "near_duplicate_question", False)
    _record(con, "question", "embedded_pairs", "embedding_duplicate_question", False)


def embedding_pairs(con: duckdb.DuckDBPyConnection, embedder: TextEmbedder, threshold: float) -> None:
    """`embedded_pairs`: questions of one persona with the same gold answer whose query embeddings have a cosine of
    at least `threshold`, among first occurrences and not already paired by content words (key_a < key_b)."""
    rows = con.execute("SELECT key, persona_id, side, gold, query FROM dedup_questions "
                       "WHERE gold <> '' AND key NOT IN (SELECT key_b FROM exact_pairs) ORDER BY key").fetchall()
    lexical = set(con.execute("SELECT key_a, key_b FROM near_pairs").fetchall())
    vectors = dict(zip((r[0] for r in rows), embedder.embed(r[4] for r in rows)))
    groups: dict[tuple[str, str], list[tuple]] = {}
    for row in rows:
        groups.setdefault((row[1], row[3]), []).append(row)
    found = []
    for group in groups.values():
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                # rounded: the cosine is stored, and a re-run must write the same value
                cosine = round(float(np.dot(vectors[a[0]], vectors[b[0]])), 4)
                if cosine >= threshold and (a[0], b[0]) not in lexical:
                    found.append((a[0], b[0], a[1], b[1], a[2], b[2], cosine))
    con.execute("CREATE OR REPLACE TEMP TABLE embedded_pairs (key_a VARCHAR, key_b VARCHAR, persona_a VARCHAR, "
                "persona_b VARCHAR, side_a VARCHAR, side_b VARCHAR, similarity DOUBLE)")
    if found:
        con.executemany("INSERT INTO embedded_pairs VALUES (?, ?, ?, ?, ?, ?, ?)", found)


def image_near_duplicates(con: duckdb.DuckDBPyConnection, max_distance: int) -> None:
    """Pool images within `max_distance` bits of each other, from the view `image_hashes(image_id, phash)`."""
    bands = max_distance + 1
    con.execute(f"INSERT INTO {DECISIONS} SELECT 'image', 'near_duplicate_image', key_a, key_b, NULL, NULL, NULL, "
                f"hamming FROM ({_sql('image_near_duplicates')})",
                {"bands": bands, "band_bits": 64 // bands, "max_distance": max_distance})


def _record(con: duckdb.DuckDBPyConnection, kind: str, pairs: str, reason: str, leaks_across_sides: bool) -> None:
    """Append `pairs` as decisions; a cross-side pair becomes leakage with its training unit first."""
    leak = "side_a <> side_b" if leaks_across_sides else "false"
    swap = f"({leak}) AND side_a = 'bench'"
    con.execute(f"""
        INSERT INTO {DECISIONS}
        SELECT ?, CASE WHEN {leak} THEN 'leakage_' || ? ELSE ? END,
               CASE WHEN {swap} THEN key_b ELSE key_a END, CASE WHEN {swap} THEN key_a ELSE key_b END,
               CASE WHEN {swap} THEN persona_b ELSE persona_a END, CASE WHEN {swap} THEN persona_a ELSE persona_b END,
               similarity, NULL
        FROM {pairs} ORDER BY key_a, key_b""", [kind, kind, reason])


# ---------------------------------------------------------------------------------------------- deciding


@dataclass(frozen=True)
class Pair:
    kind: str
    reason: str
    key_a: str
    key_b: str
    persona_a: str | None
    persona_b: str | None
    similarity: float | None
    hamming: int | None


@dataclass(frozen=True)
class Exclusion:
    """One unit the release leaves out: a persona (its history and every record of it), a benchmark item, or a
    training record."""

    unit: str  # "persona" | "item" | "record"
    key: str
    persona_id: str
    reason: str
    cause: str  # the rule or the pair that decided it


def read_pairs(con: duckdb.DuckDBPyConnection) -> list[Pair]:
    rows = con.execute(f"SELECT kind, reason, key_a, key_b, persona_a, persona_b, similarity, hamming "
                       f"FROM {DECISIONS} ORDER BY rowid").fetchall()
    return [Pair(*r) for r in rows]


def unresolved_pairs(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str]]:
    """(reason, key_a, key_b) of every acting pair with both sides still in the release tables."""
    return con.execute(_sql("unresolved_pairs")).fetchall()


def summary(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return dict(con.execute(f"SELECT reason, count(*) FROM {DECISIONS} GROUP BY reason ORDER BY reason").fetchall())


def release_exclusions(pairs: Iterable[Pair], evidence_images: Mapping[str, tuple[str, list[str]]],
                       excluded: Mapping[str, Exclusion]) -> list[Exclusion]:
    """What dedup removes from the release, given personas already `excluded` (persona_id -> why).

    `evidence_images`: benchmark item_id -> (persona_id, evidence image ids). Order of the rules:
    1. a benchmark persona whose seed or role is also in training is left out (its facts were trained on);
    2. of two copies of a session on one side, the history holding the later copy is left out (a history
       repeating its own session is left out: its evidence turns are ambiguous);
    3. a training history sharing a session with a benchmark history is left out (the benchmark stays whole);
    4. of two duplicate questions of a persona (exact, or a paraphrase by words or embedding), the later item is
       dropped;
    5. a benchmark item whose evidence image (or a near duplicate) is shown in training data is dropped.
    Turn and pool-image pairs are reported only: turns are kept to preserve evidence turn indices, and the pool
    pairs act through rule 5.
    """
    pairs = list(pairs)
    gone: dict[str, Exclusion] = dict(excluded)
    dropped: dict[str, Exclusion] = {}
    out: list[Exclusion] = []

    def cause(p: Pair) -> str:
        return f"{p.key_a} ~ {p.key_b}"

    def leave_out(persona: str, p: Pair) -> None:
        if persona not in gone:
            gone[persona] = Exclusion("persona", persona, persona, p.reason, cause(p))
            out.append(gone[persona])

    def drop(item: str, persona: str, p: Pair) -> None:
        if item not in dropped:
            dropped[item] = Exclusion("item", item, persona, p.reason, cause(p))
            out.append(dropped[item])

    by_reason = lambda *reasons: [p for p in pairs if p.reason in reasons]  # noqa: E731
    for p in by_reason("leakage_persona"):
        if p.persona_a not in gone:
            leave_out(p.persona_b, p)
    for p in by_reason("exact_session", "near_duplicate_session"):
        if p.persona_a == p.persona_b or p.persona_a not in gone:
            leave_out(p.persona_b, p)
    for p in by_reason("leakage_session"):
        if p.persona_b not in gone:
            leave_out(p.persona_a, p)
    for p in by_reason("exact_question", "near_duplicate_question", "embedding_duplicate_question"):
        if p.persona_b not in gone and p.key_a not in dropped:
            drop(p.key_b, p.persona_b, p)
    cited: dict[tuple[str, str], list[str]] = {}  # (persona, image) -> items citing it as evidence
    for item, (persona, images) in sorted(evidence_images.items()):
        for image in images:
            cited.setdefault((persona, image), []).append(item)
    for p in by_reason("leakage_image"):
        if p.persona_a not in gone and p.persona_b not in gone:
            for item in cited.get((p.persona_b, p.key_b), []):
                drop(item, p.persona_b, p)
    return out
