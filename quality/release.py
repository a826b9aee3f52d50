"""The release: which personas, histories, items and training records get published, as the `release_*` tables
that the blocking checks validate and the exporters read. Everything left out is recorded with its reason."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import duckdb

from persona_factory.catalog import (
    BENCHMARK_BLIND_ACCURACY, BENCHMARK_GATE_COUNTS, BENCHMARK_ITEMS, DIALOGUES, IMAGE_POOL, MEMORY_DB, PERSONALITY_STEPS,
    PERSONAS, RELEASE_BENCHMARK, RELEASE_DIALOGUES, RELEASE_EXCLUSIONS, RELEASE_PERSONAS, RELEASE_RL, RELEASE_SFT,
    RELEASE_TURNS, RL_RECORDS, SFT_RECORDS, TIMELINE_PLANS,
)
from persona_factory.config import PipelineConfig
from persona_factory.markdown import markdown_table
from persona_factory.publish import PublishBundle
from persona_factory.publish.native import persona_mme
from persona_factory.schema import (
    BenchmarkItem, Dialogue, Persona, Provenance, QuarantineRow, RLRecord, SFTRecord, TimelinePlan,
)
from persona_factory.store import Batch, read_records, table_exists
from quality import audit, dedup, validate
from quality.dedup import Exclusion

EXCLUSIONS = RELEASE_EXCLUSIONS.name
# written by the benchmark asset's gates; the card shows them when present
GATE_TABLE = BENCHMARK_GATE_COUNTS.name
BLIND_TABLE = BENCHMARK_BLIND_ACCURACY.name
AUDIT_SECTION = "Shortcut audit"


@dataclass
class ReleaseSummary:
    personas: dict[str, int]  # split -> released personas
    turns: int
    benchmark_items: int
    sft_records: int
    rl_records: int
    excluded_personas: dict[str, int] = field(default_factory=dict)  # reason -> personas
    dropped_items: dict[str, int] = field(default_factory=dict)  # reason -> items
    dropped_records: dict[str, int] = field(default_factory=dict)  # reason -> SFT/RL records
    unparsed_records: int = 0  # rows failing their schema; the record_schemas check reports them

    def as_metadata(self) -> dict:
        return {"personas": self.personas, "turns": self.turns, "benchmark_items": self.benchmark_items,
                "sft_records": self.sft_records, "rl_records": self.rl_records,
                "excluded_personas": self.excluded_personas, "dropped_items": self.dropped_items,
                "dropped_records": self.dropped_records, "unparsed_records": self.unparsed_records}


def build_release(con: duckdb.DuckDBPyConnection, cfg: PipelineConfig
                  ) -> tuple[ReleaseSummary, list[QuarantineRow], Batch]:
    """The release tables (a batch for the store), the summary, and the structural and image-file quarantine rows.

    A persona is left out when it has no valid history, when its history breaks a structural rule (too short
    included), when an image it shows is not in the pool or its file is missing or no longer matches its id, or
    when a dedup rule says so (dedup.release_exclusions); items and records go with their persona, and a training
    record citing such an image is left out on its own. Rows that fail their schema are not released, and the
    record_schemas check blocks publishing until they are fixed.
    """
    parsed, unparsed = {}, 0
    for table in (PERSONAS, TIMELINE_PLANS, DIALOGUES, IMAGE_POOL, BENCHMARK_ITEMS, SFT_RECORDS, RL_RECORDS):
        parsed[table.name], invalid = validate.parse_records(con, table)
        unparsed += len(invalid)
    personas: dict[str, Persona] = {p.persona_id: p for p in parsed["personas"]}
    plans: dict[str, TimelinePlan] = {p.persona_id: p for p in parsed["timeline_plans"]}
    dialogues: dict[str, Dialogue] = {d.persona_id: d for d in parsed["dialogues"]}
    items: list[BenchmarkItem] = parsed["benchmark_items"]

    pool_ids = {i.image_id for i in parsed["image_pool"]}
    broken = validate.image_file_problems(parsed["image_pool"])
    quarantined = [QuarantineRow(table_name="image_pool", row_key=image_id, rule=rule, value=found)
                   for image_id, (rule, found) in sorted(broken.items())]
    excluded: dict[str, Exclusion] = {}
    for pid in sorted(personas):
        if pid not in dialogues:
            excluded[pid] = Exclusion("persona", pid, pid, "no_history", "no valid dialogue record")
            continue
        structural = validate.structural_violations(dialogues[pid], {i.item_id for i in plans[pid].items}
                                                    if pid in plans else set(), cfg.dialogue.session_gap_minutes)
        images = validate.image_violations(dialogues[pid], pool_ids, broken)
        quarantined += structural + images
        if structural or images:
            family, first = ("structural", structural[0]) if structural else ("image", images[0])
            excluded[pid] = Exclusion("persona", pid, pid, f"{family}:{first.rule}", f"{first.row_key}: {first.value}")
    evidence = {i.item_id: (i.persona_id, list(i.evidence_images)) for i in items}
    exclusions = [*excluded.values(), *dedup.release_exclusions(dedup.read_pairs(con), evidence, excluded)]
    gone = {e.key for e in exclusions if e.unit == "persona"}
    dropped = {e.key for e in exclusions if e.unit == "item"}
    released = sorted(pid for pid in personas if pid not in gone)
    split_of = {pid: personas[pid].split for pid in released}

    for i in items:
        if split_of.get(i.persona_id) == "train" and i.item_id not in dropped:
            exclusions.append(Exclusion("item", i.item_id, i.persona_id, "posed_on_training_persona",
                                        "benchmark items are asked on benchmark histories only"))
            dropped.add(i.item_id)
    kept_items = [i for i in items if i.persona_id in split_of and i.item_id not in dropped]

    def trainable(r: SFTRecord | RLRecord, image_ids: list[str]) -> bool:
        if split_of.get(r.persona_id) != "train":
            return False
        for image_id in image_ids:
            if problem := validate.image_problem(image_id, pool_ids, broken):
                exclusions.append(Exclusion("record", r.record_id, r.persona_id, f"image:{problem[0]}",
                                            f"image {image_id}: {problem[1]}"))
                return False
        return True

    sft = [r for r in parsed["sft_records"] if trainable(r, r.image)]
    rl = [r for r in parsed["rl_records"] if trainable(r, r.images)]
    histories = [dialogues[pid] for pid in released]
    turns = [t for d in histories for t in d.turns]

    batch = _release_batch([personas[p] for p in released], histories, kept_items, sft, rl, exclusions)
    summary = ReleaseSummary(
        personas=dict(Counter(split_of.values())), turns=len(turns), benchmark_items=len(kept_items),
        sft_records=len(sft), rl_records=len(rl),
        excluded_personas=dict(Counter(e.reason for e in exclusions if e.unit == "persona")),
        dropped_items=dict(Counter(e.reason for e in exclusions if e.unit == "item")),
        dropped_records=dict(Counter(e.reason for e in exclusions if e.unit == "record")), unparsed_records=unparsed)
    return summary, quarantined, batch


def _release_batch(personas: list[Persona], histories: list[Dialogue], items: list[BenchmarkItem],
                   sft: list[SFTRecord], rl: list[RLRecord], exclusions: list[Exclusion]) -> Batch:
    """The release tables: the records plus the flat columns the suites under quality/suites/ read."""
    history = {d.persona_id: d for d in histories}
    batch = Batch("release_splits")
    batch.add(RELEASE_PERSONAS, personas, {"n_turns": [len(history[p.persona_id].turns) for p in personas],
                                           "n_sessions": [len(history[p.persona_id].sessions) for p in personas]})
    batch.add(RELEASE_DIALOGUES, histories)
    batch.add(RELEASE_TURNS, [t for d in histories for t in d.turns])
    batch.add(RELEASE_BENCHMARK, items)
    batch.add(RELEASE_SFT, sft)
    batch.add(RELEASE_RL, rl)
    batch.add(RELEASE_EXCLUSIONS, [(e.unit, e.key, e.persona_id, e.reason, e.cause) for e in exclusions])
    return batch


# ---------------------------------------------------------------------------------------------- reading back


def release_bundle(con: duckdb.DuckDBPyConnection, provenance: Provenance) -> PublishBundle:
    """The released rows only, plus the curation figures and the shortcut audit the card reports."""
    return audited_release(con, provenance)[0]


def audited_release(con: duckdb.DuckDBPyConnection,
                    provenance: Provenance) -> tuple[PublishBundle, audit.AuditReport]:
    """The release bundle and the shortcut audit of its benchmark (a section of the bundle's card)."""
    personas = read_records(con, RELEASE_PERSONAS)
    released = [p.persona_id for p in personas]
    train = [p.persona_id for p in personas if p.split == "train"]
    memory = {pid: json.loads(u) for pid, u in con.execute(
        f"SELECT persona_id, user_data FROM {MEMORY_DB.name} WHERE persona_id IN (SELECT unnest(?::VARCHAR[])) "
        "ORDER BY persona_id", [train]).fetchall()}
    steps = read_records(con, PERSONALITY_STEPS, "WHERE record->>'$.persona_id' IN (SELECT unnest(?::VARCHAR[]))",
                         [released])
    bundle = PublishBundle(
        personas=personas, dialogues=read_records(con, RELEASE_DIALOGUES),
        images={i.image_id: i for i in read_records(con, IMAGE_POOL)}, memory_dbs=memory,
        sft=read_records(con, RELEASE_SFT), rl=read_records(con, RELEASE_RL),
        benchmark=read_records(con, RELEASE_BENCHMARK), provenance=provenance,
        personality_steps=steps, card_sections=curation_sections(con))
    mme = persona_mme(bundle)  # the benchmark exactly as the native exporter will write it
    report = audit.run_audit(audit.AuditInput(mme.records, mme.users, source="this release"))
    bundle.card_sections[AUDIT_SECTION] = report.markdown()
    return bundle, report


REASONS = {  # what each dedup reason means, for the card
    "exact_turn": "a user utterance repeated word for word (after normalisation)",
    "near_duplicate_turn": "a user utterance with a MinHash-estimated Jaccard at the threshold",
    "exact_session": "a session repeated word for word",
    "near_duplicate_session": "a session with a MinHash-estimated Jaccard at the threshold",
    "leakage_session": "a training session equal or near-equal to a benchmark session",
    "exact_question": "a benchmark question asked twice of one persona",
    "near_duplicate_question": "a paraphrased benchmark question of one persona (content words)",
    "embedding_duplicate_question": "a paraphrased benchmark question of one persona (MiniLM cosine at the threshold, "
                                    "same answer)",
    "near_duplicate_image": "two pool images within the perceptual-hash distance",
    "leakage_image": "an image (or near duplicate) shown in training data and in a benchmark history",
    "leakage_persona": "a persona seed or role used in training and in the benchmark",
}


def curation_sections(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Card sections: dedup pairs and what the release left out, quarantine, teacher failures, benchmark gates,
    retrieval hits."""
    pairs = [(r, REASONS.get(r, ""), n) for r, n in dedup.summary(con).items()]
    left_out = con.execute(f"SELECT unit, reason, count(*) FROM {EXCLUSIONS} GROUP BY ALL ORDER BY ALL").fetchall()
    quarantine = con.execute("SELECT asset, rule, count(*) FROM quarantine GROUP BY ALL ORDER BY ALL").fetchall() \
        if table_exists(con, "quarantine") else []
    failures = con.execute("SELECT asset, split_part(reason, ':', 1), count(*) FROM teacher_failures "
                           "GROUP BY ALL ORDER BY ALL").fetchall() if table_exists(con, "teacher_failures") else []
    return {
        "Deduplication and leakage": "\n\n".join([
            "Pairs found (each pair is recorded with both keys in the `dedup_decisions` table):",
            markdown_table(("reason", "meaning", "pairs"), pairs),
            "Left out of this release because of them, or of a structural or image-file rule:",
            markdown_table(("unit", "reason", "count"), left_out)]),
        "Quarantine": markdown_table(("asset", "rule", "rows"), quarantine),
        "Teacher failures (after retries)": markdown_table(("asset", "kind", "requests"), failures),
        "Benchmark gates": gate_results(con),
        "Retrieval": retrieval_hits(con),
    }


def retrieval_hits(con: duckdb.DuckDBPyConnection) -> str:
    """Per retriever, the share of the build's retrieval probes whose searches retrieved the turn that told the
    answer: both retrievers run the same calls on the same probes; the trajectories use one of them."""
    if not table_exists(con, "reasoning_trajectories"):
        return "None."
    rows = con.execute("""
        SELECT name, count(*) FILTER (WHERE record->>'retriever' = name) > 0, count(*),
               count(*) FILTER (WHERE (record->'answer_hits'->>name)::BOOLEAN)
        FROM reasoning_trajectories, unnest(json_keys(record->'answer_hits')) AS t(name)
        GROUP BY name ORDER BY name""").fetchall()
    return "\n\n".join([
        "Retrieval probes whose searches retrieved the memory holding the answer, per retriever (the same calls on "
        "the same probes); only such probes can become verified trajectories:",
        markdown_table(("retriever", "used for the trajectories", "probes", "answer retrieved", "share"),
                       [(name, "yes" if used else "no", n, hit, f"{hit / n:.1%}") for name, used, n, hit in rows])])


def gate_results(con: duckdb.DuckDBPyConnection) -> str:
    """The benchmark gates' own tables, when the benchmark asset wrote them: rejections per gate and task, and
    blind accuracy per judge and task (answered without the history; chance is 25%)."""
    parts = []
    if table_exists(con, GATE_TABLE):
        totals = con.execute(f"SELECT gate, sum(checked), sum(rejected) FROM {GATE_TABLE} "
                             "GROUP BY gate ORDER BY min(rowid)").fetchall()
        per_task = con.execute(f"SELECT gate, question_type, checked, rejected FROM {GATE_TABLE} "
                               "WHERE rejected > 0 ORDER BY rowid").fetchall()
        parts += ["Items checked and rejected per gate:", markdown_table(("gate", "checked", "rejected"), totals),
                  "Rejections per task:", markdown_table(("gate", "question_type", "checked", "rejected"), per_task)]
    if table_exists(con, BLIND_TABLE):
        blind = con.execute(f"SELECT judge, context, question_type, answered, correct, "
                            f"round(correct / answered, 3) FROM {BLIND_TABLE} WHERE answered > 0 "
                            "ORDER BY ALL").fetchall()
        parts += ["Blind accuracy:", markdown_table(("judge", "context", "question_type", "answered", "correct",
                                                     "accuracy"), blind)]
    return "\n\n".join(parts) or "None."
