"""The table catalog: every table the pipeline stores, with its record model, its flat columns, the fields that
name a row, and how it is partitioned. Assets, the release, the suites, the schema check and both storage backends
read it; nothing else names a stored table.

A record table keeps each row's full record as JSON (`record`) plus flat columns computed from the record for SQL;
a row table (no model) holds plain rows. Partitions say what one write replaces:

- `SHARD`: the rows of the shards written (a `shard` column the writer fills from each row's persona);
- `WRITER`: the rows one asset wrote for its partitions (`asset` and `partition` columns: the bookkeeping);
- none: the whole table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import pyarrow as pa
from pydantic import BaseModel

from .schema import (
    AlignmentPair, BenchmarkCandidate, BenchmarkGateCount, BenchmarkItem, BlindAccuracy, Dialogue, ImageRecord,
    Persona, PersonalityCorrelation, PersonalityStep, ReasoningTrajectory, RLRecord, SemanticMemoryTarget,
    SessionMemoryTarget, SFTRecord, TimelinePlan, Turn,
)

ARROW = {"VARCHAR": pa.string(), "BIGINT": pa.int64(), "INTEGER": pa.int32(), "BOOLEAN": pa.bool_(),
         "DOUBLE": pa.float64(), "VARCHAR[]": pa.list_(pa.string()), "INTEGER[]": pa.list_(pa.int32()),
         "JSON": pa.string()}
SHARD: Literal["shard"] = "shard"
WRITER: Literal["writer"] = "writer"
Partition = Literal["shard", "writer"] | None


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str
    value: Callable[[Any], Any] | None = None  # of the record; None: the writer supplies the values

    @property
    def supplied(self) -> bool:
        return self.value is None


@dataclass(frozen=True)
class Table:
    name: str
    model: type[BaseModel] | None  # None: a row table of plain tuples in column order
    columns: tuple[Column, ...]
    key: tuple[str, ...]  # record fields (row tables: columns) that name a row, in quarantine and checks
    partition: Partition = None
    flat_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        extra = (Column(SHARD, "VARCHAR"),) if self.partition == SHARD else ()
        object.__setattr__(self, "columns", self.columns + extra)
        object.__setattr__(self, "flat_names", tuple(c.name for c in self.columns))

    @property
    def column_names(self) -> list[str]:
        """Every stored column, in order: the flat ones, then `record` for a record table."""
        return [*self.flat_names, "record"] if self.model is not None else list(self.flat_names)

    def ddl(self) -> str:
        cols = [f"{c.name} {c.sql_type}" for c in self.columns]
        return ", ".join(cols + (["record JSON"] if self.model is not None else []))

    def arrow(self, rows: Sequence[Any], supplied: dict[str, Sequence[Any]] | None = None) -> pa.Table:
        """The stored form of these records (or row tuples), in their order; `supplied` holds the values of the
        columns the catalog leaves to the writer (a row table's shard column too), one per row."""
        supplied = supplied or {}
        if self.model is not None and (missing := [c.name for c in self.columns
                                                   if c.supplied and c.name not in supplied]):
            raise ValueError(f"table {self.name}: the writer must supply the columns {missing}")
        arrays = {}
        for i, c in enumerate(self.columns):
            if c.name in supplied:
                values = list(supplied[c.name])
            elif self.model is None:
                values = [r[i] for r in rows]
            else:
                values = [c.value(r) for r in rows]  # type: ignore[misc]
            arrays[c.name] = pa.array(values, type=ARROW[c.sql_type])
        if self.model is not None:
            arrays["record"] = pa.array([r.model_dump_json(by_alias=True) for r in rows], type=pa.string())
        return pa.table(arrays)


def _cols(*spec: tuple) -> tuple[Column, ...]:
    return tuple(Column(*s) for s in spec)


def _image_tokens(messages: list[dict[str, str]], field_name: str) -> int:
    return sum(m[field_name].count("<image>") for m in messages)


# ---------------------------------------------------------------------------------------------- histories

PERSONAS = Table("personas", Persona, _cols(
    ("persona_id", "VARCHAR", lambda p: p.persona_id), ("split", "VARCHAR", lambda p: p.split),
    ("name", "VARCHAR", lambda p: p.profile.name)), ("persona_id",), SHARD)
TIMELINE_PLANS = Table("timeline_plans", TimelinePlan, _cols(
    ("persona_id", "VARCHAR", lambda p: p.persona_id), ("n_items", "INTEGER", lambda p: len(p.items)),
    ("n_sessions", "INTEGER", lambda p: len(p.sessions)),
    ("n_turns", "INTEGER", lambda p: sum(s.n_turns for s in p.sessions))), ("persona_id",), SHARD)
DIALOGUES = Table("dialogues", Dialogue, _cols(
    ("persona_id", "VARCHAR", lambda d: d.persona_id), ("split", "VARCHAR", lambda d: d.split),
    ("n_turns", "INTEGER", lambda d: len(d.turns))), ("persona_id",), SHARD)
DIALOGUE_TURNS = Table("dialogue_turns", Turn, _cols(
    ("persona_id", "VARCHAR", lambda t: t.persona_id), ("session_index", "INTEGER", lambda t: t.session_index),
    ("turn_index", "INTEGER", lambda t: t.turn_index), ("time", "VARCHAR", lambda t: t.time),
    ("user_text", "VARCHAR", lambda t: t.user), ("assistant_text", "VARCHAR", lambda t: t.assistant),
    ("image_id", "VARCHAR", lambda t: t.image_id), ("realizes", "VARCHAR[]", lambda t: t.realizes)),
    ("persona_id", "turn_index"), SHARD)
IMAGE_POOL = Table("image_pool", ImageRecord, _cols(
    ("image_id", "VARCHAR", lambda i: i.image_id), ("name", "VARCHAR", lambda i: i.name),
    ("phash", "BIGINT", lambda i: i.phash)), ("image_id",))

# ---------------------------------------------------------------------------------------------- supervision

SEMANTIC_MEMORY_TARGETS = Table("semantic_memory_targets", SemanticMemoryTarget, _cols(
    ("persona_id", "VARCHAR", lambda s: s.persona_id), ("turn_index", "INTEGER", lambda s: s.turn_index),
    ("decision", "BOOLEAN", lambda s: s.decision), ("item_id", "VARCHAR", lambda s: s.item_id),
    ("wording", "VARCHAR", lambda s: s.wording), ("content", "VARCHAR", lambda s: s.content)),
    ("persona_id", "turn_index"), SHARD)
SESSION_MEMORY_TARGETS = Table("session_memory_targets", SessionMemoryTarget, _cols(
    ("persona_id", "VARCHAR", lambda s: s.persona_id), ("session_index", "INTEGER", lambda s: s.session_index),
    ("topics", "INTEGER", lambda s: len(s.episodic)), ("procedural", "INTEGER", lambda s: len(s.procedural))),
    ("persona_id", "session_index"), SHARD)
PERSONALITY_STEPS = Table("personality_steps", PersonalityStep, _cols(
    ("persona_id", "VARCHAR", lambda s: s.persona_id), ("turn_index", "INTEGER", lambda s: s.turn_index),
    ("inferred_by", "VARCHAR", lambda s: s.inferred_by)), ("persona_id", "turn_index"), SHARD)
PERSONALITY_CORRELATIONS = Table("personality_correlations", PersonalityCorrelation, _cols(
    ("persona_id", "VARCHAR", lambda c: c.persona_id), ("turns", "INTEGER", lambda c: c.turns),
    ("inferred_r", "DOUBLE", lambda c: c.inferred_r), ("ema_r", "DOUBLE", lambda c: c.ema_r),
    ("drift_trait", "VARCHAR", lambda c: c.drift_trait), ("drift_r", "DOUBLE", lambda c: c.drift_r),
    ("final_ema_mae", "DOUBLE", lambda c: c.final_ema_mae)), ("persona_id",), SHARD)
# each user's memory database (user_data.json shape), replayed from the targets
MEMORY_DB = Table("memory_db", None, _cols(
    ("persona_id", "VARCHAR"), ("split", "VARCHAR"), ("user_data", "JSON")), ("persona_id",), SHARD)
REASONING_TRAJECTORIES = Table("reasoning_trajectories", ReasoningTrajectory, _cols(
    ("probe_id", "VARCHAR", lambda r: r.probe_id), ("persona_id", "VARCHAR", lambda r: r.persona_id),
    ("question_kind", "VARCHAR", lambda r: r.question_kind), ("mode", "VARCHAR", lambda r: r.mode),
    ("steps", "INTEGER", lambda r: len(r.steps)), ("verdict", "VARCHAR", lambda r: r.verdict)), ("probe_id",), SHARD)
ALIGNMENT_PAIRS = Table("alignment_pairs", AlignmentPair, _cols(
    ("pair_id", "VARCHAR", lambda p: p.pair_id), ("persona_id", "VARCHAR", lambda p: p.persona_id),
    ("rejected_kind", "VARCHAR", lambda p: p.rejected_kind)), ("pair_id",), SHARD)
# the SFT and RL columns, shared by the training tables and their released copies
SFT_COLUMNS = _cols(
    ("record_id", "VARCHAR", lambda r: r.record_id), ("persona_id", "VARCHAR", lambda r: r.persona_id),
    ("task", "VARCHAR", lambda r: r.task), ("n_images", "INTEGER", lambda r: len(r.image)),
    ("n_turns", "INTEGER", lambda r: len(r.conversations)),
    ("n_image_tokens", "INTEGER", lambda r: _image_tokens(r.conversations, "value")))
RL_COLUMNS = _cols(
    ("record_id", "VARCHAR", lambda r: r.record_id), ("persona_id", "VARCHAR", lambda r: r.persona_id),
    ("kind", "VARCHAR", lambda r: r.kind), ("solution", "VARCHAR", lambda r: r.solution),
    ("n_images", "INTEGER", lambda r: len(r.images)),
    ("n_image_tokens", "INTEGER", lambda r: _image_tokens(r.messages, "content")))
SFT_RECORDS = Table("sft_records", SFTRecord, SFT_COLUMNS, ("record_id",), SHARD)
RL_RECORDS = Table("rl_records", RLRecord, RL_COLUMNS, ("record_id",), SHARD)

# ---------------------------------------------------------------------------------------------- benchmark

BENCHMARK_ITEMS = Table("benchmark_items", BenchmarkItem, _cols(
    ("item_id", "VARCHAR", lambda i: i.item_id), ("persona_id", "VARCHAR", lambda i: i.persona_id),
    ("bucket", "VARCHAR", lambda i: i.bucket), ("question_type", "VARCHAR", lambda i: i.question_type),
    ("query", "VARCHAR", lambda i: i.query), ("answer", "VARCHAR", lambda i: i.answer),
    ("with_image", "BOOLEAN", lambda i: bool(i.evidence_images)),
    ("with_alignment", "BOOLEAN", lambda i: i.alignment is not None)), ("item_id",))
BENCHMARK_CANDIDATES = Table("benchmark_candidates", BenchmarkCandidate, _cols(
    ("item_id", "VARCHAR", lambda c: c.item.item_id), ("persona_id", "VARCHAR", lambda c: c.item.persona_id),
    ("question_type", "VARCHAR", lambda c: c.item.question_type), ("rejected_by", "VARCHAR", lambda c: c.rejected_by),
    ("published", "BOOLEAN")), ("item.item_id",))
BENCHMARK_GATE_COUNTS = Table("benchmark_gate_counts", BenchmarkGateCount, _cols(
    ("gate", "VARCHAR", lambda r: r.gate), ("question_type", "VARCHAR", lambda r: r.question_type),
    ("checked", "INTEGER", lambda r: r.checked), ("rejected", "INTEGER", lambda r: r.rejected)),
    ("gate", "question_type"))
BENCHMARK_BLIND_ACCURACY = Table("benchmark_blind_accuracy", BlindAccuracy, _cols(
    ("judge", "VARCHAR", lambda r: r.judge), ("context", "VARCHAR", lambda r: r.context),
    ("question_type", "VARCHAR", lambda r: r.question_type), ("answered", "INTEGER", lambda r: r.answered),
    ("correct", "INTEGER", lambda r: r.correct)), ("judge", "context", "question_type"))

# ---------------------------------------------------------------------------------------------- quality

DEDUP_DECISIONS = Table("dedup_decisions", None, _cols(
    ("kind", "VARCHAR"), ("reason", "VARCHAR"), ("key_a", "VARCHAR"), ("key_b", "VARCHAR"), ("persona_a", "VARCHAR"),
    ("persona_b", "VARCHAR"), ("similarity", "DOUBLE"), ("hamming", "INTEGER")), ("reason", "key_a", "key_b"))
# what the release tables validated by quality/suites/ hold: the records plus the columns the suites read
RELEASE_PERSONAS = Table("release_personas", Persona, _cols(
    ("persona_id", "VARCHAR", lambda p: p.persona_id), ("split", "VARCHAR", lambda p: p.split),
    ("n_turns", "INTEGER"), ("n_sessions", "INTEGER")), ("persona_id",))
RELEASE_DIALOGUES = Table("release_dialogues", Dialogue, _cols(
    ("persona_id", "VARCHAR", lambda d: d.persona_id), ("split", "VARCHAR", lambda d: d.split)), ("persona_id",))
RELEASE_TURNS = Table("release_turns", Turn, _cols(
    ("turn_key", "VARCHAR", lambda t: f"{t.persona_id}:{t.turn_index}"),
    ("persona_id", "VARCHAR", lambda t: t.persona_id), ("time", "VARCHAR", lambda t: t.time),
    ("user_text", "VARCHAR", lambda t: t.user), ("assistant_text", "VARCHAR", lambda t: t.assistant),
    ("img_placeholders", "INTEGER", lambda t: t.user.count("<img>") + t.assistant.count("<img>")),
    ("has_image", "INTEGER", lambda t: int(t.image_id is not None))), ("persona_id", "turn_index"))
RELEASE_BENCHMARK = Table("release_benchmark", BenchmarkItem, _cols(
    ("item_id", "VARCHAR", lambda i: i.item_id), ("persona_id", "VARCHAR", lambda i: i.persona_id),
    ("bucket", "VARCHAR", lambda i: i.bucket), ("type", "VARCHAR", lambda i: i.type),
    ("question_type", "VARCHAR", lambda i: i.question_type), ("query", "VARCHAR", lambda i: i.query),
    ("answer", "VARCHAR", lambda i: i.answer), ("n_choices", "INTEGER", lambda i: len(i.choices)),
    ("n_distinct_choices", "INTEGER", lambda i: len({v.strip().lower() for v in i.choices.values()})),
    ("answer_in_choices", "INTEGER", lambda i: int(i.answer in i.choices)),
    ("n_evidence_turns", "INTEGER", lambda i: len(i.evidence_turns))), ("item_id",))
RELEASE_SFT = Table("release_sft", SFTRecord, SFT_COLUMNS, ("record_id",))
RELEASE_RL = Table("release_rl", RLRecord, RL_COLUMNS, ("record_id",))
RELEASE_EXCLUSIONS = Table("release_exclusions", None, _cols(
    ("unit", "VARCHAR"), ("key", "VARCHAR"), ("persona_id", "VARCHAR"), ("reason", "VARCHAR"), ("cause", "VARCHAR")),
    ("unit", "key"))

# ---------------------------------------------------------------------------------------------- bookkeeping

QUARANTINE = Table("quarantine", None, _cols(
    ("asset", "VARCHAR"), ("table_name", "VARCHAR"), ("row_key", "VARCHAR"), ("rule", "VARCHAR"), ("value", "VARCHAR"),
    ("partition", "VARCHAR")), ("asset", "table_name", "row_key", "rule"), WRITER)
TEACHER_FAILURES = Table("teacher_failures", None, _cols(
    ("asset", "VARCHAR"), ("request_key", "VARCHAR"), ("tag", "VARCHAR"), ("reason", "VARCHAR"),
    ("attempts", "INTEGER"), ("partition", "VARCHAR")), ("asset", "request_key"), WRITER)

TABLES: dict[str, Table] = {t.name: t for t in (
    PERSONAS, TIMELINE_PLANS, DIALOGUES, DIALOGUE_TURNS, IMAGE_POOL, SEMANTIC_MEMORY_TARGETS, SESSION_MEMORY_TARGETS,
    PERSONALITY_STEPS, PERSONALITY_CORRELATIONS, MEMORY_DB, REASONING_TRAJECTORIES, ALIGNMENT_PAIRS, SFT_RECORDS,
    RL_RECORDS, BENCHMARK_ITEMS, BENCHMARK_CANDIDATES, BENCHMARK_GATE_COUNTS, BENCHMARK_BLIND_ACCURACY, DEDUP_DECISIONS,
    RELEASE_PERSONAS, RELEASE_DIALOGUES, RELEASE_TURNS, RELEASE_BENCHMARK, RELEASE_SFT, RELEASE_RL, RELEASE_EXCLUSIONS,
    QUARANTINE, TEACHER_FAILURES)}
RECORD_TABLES = {name: t for name, t in TABLES.items() if t.model is not None}
