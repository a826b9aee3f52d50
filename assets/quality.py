import dagster as dg
from dagster_duckdb import DuckDBResource

from persona_factory.schema import BenchmarkItem, RLRecord, SFTRecord
from persona_factory.store import read_records, write_records
from pipelines.resources import FactoryConfig
from quality import dedup, validate

from .common import QUALITY, finish, load_histories


@dg.asset(group_name=QUALITY, deps=["dialogues", "benchmark_items", "training_records", "image_pool"],
          description="Exact and near duplicates (turns, sessions, questions, images) and train/benchmark leakage.")
def dedup_decisions(duckdb: DuckDBResource) -> dg.MaterializeResult:
    with duckdb.get_connection() as con:
        pairs = dedup.find_duplicates(con)
        return dg.MaterializeResult(metadata={"pairs": pairs, "by_reason": dedup.summary(con)})


@dg.asset(group_name=QUALITY, deps=["dedup_decisions", "memory_db"],
          description="What will be published: histories passing the structural rules, deduplicated items, "
                      "and the records of those personas. Blocking checks validate it before publishing.")
def release_splits(settings: FactoryConfig, duckdb: DuckDBResource) -> dg.MaterializeResult:
    cfg = settings.load()
    with duckdb.get_connection() as con:
        personas, plans, dialogues, _ = load_histories(con)
        quarantined = []
        for pid, dialogue in dialogues.items():
            quarantined += validate.structural_violations(dialogue, {i.item_id for i in plans[pid].items},
                                                          cfg.dialogue.session_gap_minutes)
        excluded = {q.row_key.split(":")[0] for q in quarantined}
        released = sorted(pid for pid in dialogues if pid not in excluded)
        dropped = dedup.dropped_questions(con)
        items = [i for i in read_records(con, "benchmark_items", BenchmarkItem)
                 if i.persona_id in released and i.item_id not in dropped]
        sft = [r for r in read_records(con, "sft_records", SFTRecord) if r.persona_id in released]
        rl = [r for r in read_records(con, "rl_records", RLRecord) if r.persona_id in released]
        turns = [t for pid in released for t in dialogues[pid].turns]
        con.execute("CREATE OR REPLACE TABLE release_personas AS SELECT unnest(?::VARCHAR[]) AS persona_id", [released])
        write_records(con, "release_turns", turns, {
            "turn_key": ("VARCHAR", lambda t: f"{t.persona_id}:{t.turn_index}"),
            "persona_id": ("VARCHAR", lambda t: t.persona_id), "time": ("VARCHAR", lambda t: t.time),
            "user_text": ("VARCHAR", lambda t: t.user), "assistant_text": ("VARCHAR", lambda t: t.assistant),
            "img_placeholders": ("INTEGER", lambda t: t.user.count("<img>") + t.assistant.count("<img>")),
            "has_image": ("INTEGER", lambda t: int(t.image_id is not None))})
        write_records(con, "release_benchmark", items, {
            "item_id": ("VARCHAR", lambda i: i.item_id), "persona_id": ("VARCHAR", lambda i: i.persona_id),
            "bucket": ("VARCHAR", lambda i: i.bucket), "type": ("VARCHAR", lambda i: i.type),
            "question_type": ("VARCHAR", lambda i: i.question_type), "query": ("VARCHAR", lambda i: i.query),
            "answer": ("VARCHAR", lambda i: i.answer), "n_choices": ("INTEGER", lambda i: len(i.choices)),
            "n_distinct_choices": ("INTEGER", lambda i: len({v.strip().lower() for v in i.choices.values()})),
            "n_evidence_turns": ("INTEGER", lambda i: len(i.evidence_turns))})
        write_records(con, "release_sft", sft, {
            "record_id": ("VARCHAR", lambda r: r.record_id), "task": ("VARCHAR", lambda r: r.task),
            "n_images": ("INTEGER", lambda r: len(r.image)), "n_turns": ("INTEGER", lambda r: len(r.conversations)),
            "n_image_tokens": ("INTEGER", lambda r: sum(c["value"].count("<image>") for c in r.conversations))})
        write_records(con, "release_rl", rl, {
            "record_id": ("VARCHAR", lambda r: r.record_id), "kind": ("VARCHAR", lambda r: r.kind),
            "solution": ("VARCHAR", lambda r: r.solution)})
        return finish(con, "release_splits", None, quarantined, personas=len(released),
                      excluded_personas=len(excluded), turns=len(turns), benchmark_items=len(items),
                      duplicate_questions_dropped=len(dropped), sft_records=len(sft), rl_records=len(rl))
