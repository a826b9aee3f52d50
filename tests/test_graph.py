"""The whole Dagster graph on a schema-following teacher served over loopback HTTP: every asset materializes, a
second run asks the teacher nothing and writes identical outputs (its embeddings encoded afresh), one shard re-runs
alone, and setup mistakes fail fast naming the setting to fix."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from persona_factory.config import load_config
from persona_factory.stages.personas import shard_keys
from pipelines import cli
from pipelines.definitions import build_definitions
from pipelines.partitions import all_shards_tags
from pipelines.resources import FactoryConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
TEACHER_ASSETS = ("personas", "timeline_plans", "dialogues", "memory_targets", "personality_trajectories",
                  "reasoning_trajectories", "alignment_pairs", "benchmark_items")


def run_all(settings: FactoryConfig, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    defs = build_definitions(settings)
    return defs.resolve_job_def("factory_job").execute_in_process(
        instance=instance, tags=all_shards_tags(settings.load()), raise_on_error=False)


def materialization_metadata(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    return {e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()}


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_asset_materializes(graph_run):
    settings, out, result, requests = graph_run
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    graph = build_definitions(settings).resolve_asset_graph()
    expected = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert set(materialization_metadata(result)) == expected
    checks = result.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks)
    assert requests > 0
    for path in ("pipeline.duckdb", "hub/README.md", "native/data/Persona-MME/Persona-MME.json",
                 "teacher_cache.sqlite", "embeddings.sqlite"):
        assert (out / path).exists(), path


def test_supervision_of_written_sessions_and_histories_is_asked_while_histories_are_still_written(graph_run):
    """The supervision assets' requests were asked during the dialogues step (labels session by session, reasoning
    answers once a training history and its labels were done), so the assets found every answer in the cache: the
    same requests, built by the same functions."""
    _, _, result, _ = graph_run
    meta = materialization_metadata(result)
    asked_ahead = ("memory_targets", "personality_trajectories", "alignment_pairs", "reasoning_trajectories")
    for asset in asked_ahead:
        assert meta[asset]["teacher_requests"] > 0
        assert meta[asset]["teacher_calls_sent"] == 0, asset
        assert meta[asset]["teacher_cache_hits"] == meta[asset]["teacher_requests"], asset
    assert meta["dialogues"]["prefetched_teacher_requests"] == sum(meta[a]["teacher_requests"] for a in asked_ahead)


def test_trajectories_retrieve_with_embeddings_and_the_card_compares_both_retrievers(graph_run):
    _, out, result, _ = graph_run
    meta = materialization_metadata(result)["reasoning_trajectories"]
    assert meta["retriever"] == "embedding" and set(meta["answer_hit_share"]) == {"embedding", "keyword"}
    with duckdb.connect(str(out / "pipeline.duckdb"), read_only=True) as con:
        assert con.execute("SELECT DISTINCT record->>'retriever' FROM reasoning_trajectories").fetchall() == [
            ("embedding",)]
    card = (out / "hub" / "README.md").read_text()
    section = card.split("## Retrieval")[1].split("\n## ")[0]
    assert "| embedding | yes |" in section and "| keyword | no |" in section


def test_published_configs_load_back(graph_run):
    from datasets import get_dataset_config_names, load_dataset

    _, out, _, _ = graph_run
    configs = get_dataset_config_names(str(out / "hub"))
    assert {"sft", "rl", "histories", "memory_db"} <= set(configs)
    for config in configs:
        assert all(len(split) > 0 for split in load_dataset(str(out / "hub"), config).values()), config


def test_every_persona_shard_is_written(graph_run):
    settings, out, _, _ = graph_run
    with duckdb.connect(str(out / "pipeline.duckdb"), read_only=True) as con:
        shards = {r[0] for r in con.execute("SELECT DISTINCT shard FROM dialogues").fetchall()}
    assert shards == set(shard_keys(settings.load()))


def test_second_run_asks_the_teacher_nothing_and_writes_the_same(graph_run, schema_teacher, graph_instance):
    settings, out, _, _ = graph_run
    before = tree_digest(out / "hub"), tree_digest(out / "native")
    with duckdb.connect(str(out / "pipeline.duckdb"), read_only=True) as con:
        turns = con.execute("SELECT record FROM dialogue_turns ORDER BY rowid").fetchall()
    with sqlite3.connect(out / "embeddings.sqlite") as con:
        vectors = con.execute("SELECT count(*) FROM embeddings").fetchone()[0]
    (out / "embeddings.sqlite").unlink()  # re-encoded afresh: the vectors, so the trajectories, come out the same
    schema_teacher.reset_stats()
    result = run_all(settings, graph_instance)
    assert result.success
    assert schema_teacher.request_count == 0
    meta = materialization_metadata(result)
    with sqlite3.connect(out / "embeddings.sqlite") as con:  # every vector the run used was encoded again
        assert con.execute("SELECT count(*) FROM embeddings").fetchone()[0] == vectors > 0
    for asset in TEACHER_ASSETS:
        assert meta[asset]["teacher_calls_sent"] == 0, asset
        assert meta[asset]["teacher_cache_hits"] == meta[asset]["teacher_requests"], asset
    assert sum(meta[a]["teacher_cache_hits"] for a in TEACHER_ASSETS) > 0
    after = tree_digest(out / "hub"), tree_digest(out / "native")
    assert [sorted({k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}) for a, b in zip(after, before)] \
        == [[], []]  # names the files that changed
    with duckdb.connect(str(out / "pipeline.duckdb"), read_only=True) as con:
        assert con.execute("SELECT record FROM dialogue_turns ORDER BY rowid").fetchall() == turns


def test_one_shard_reruns_alone(graph_run, schema_teacher, graph_instance):
    settings, out, _, _ = graph_run
    keys = shard_keys(settings.load())
    with duckdb.connect(str(out / "pipeline.duckdb"), read_only=True) as con:
        before = con.execute("SELECT shard, count(*) FROM dialogue_turns GROUP BY 1 ORDER BY 1").fetchall()
    defs = build_definitions(settings)
    schema_teacher.reset_stats()
    result = dg.materialize(
        [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)],
        selection=["personas", "timeline_plans", "dialogues"], partition_key=keys[-1], instance=graph_instance,
        resources=defs.resources)
    assert result.success
    assert schema_teacher.request_count == 0
    with duckdb.connect(str(out / "pipeline.duckdb"), read_only=True) as con:
        assert con.execute("SELECT shard, count(*) FROM dialogue_turns GROUP BY 1 ORDER BY 1").fetchall() == before


def test_an_unreachable_teacher_fails_fast_naming_the_setting(tmp_path, capsys):
    rc = cli.main(["materialize", "--preset", "tiny", "--output", str(tmp_path),
                   "--teacher-url", "http://127.0.0.1:9/v1"])
    assert rc == 1
    assert "teacher.base_urls" in capsys.readouterr().err


def test_a_bad_preset_fails_fast_naming_the_setting(tmp_path, capsys):
    rc = cli.main(["materialize", "--preset", "huge", "--output", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "preset" in err and "tiny" in err


def test_the_paper_preset_prints_its_cost_before_it_starts(tmp_path, capsys):
    rc = cli.main(["materialize", "--preset", "paper", "--output", str(tmp_path), "--estimate-only"])
    assert rc == 0
    out = capsys.readouterr().out
    cfg = load_config("paper")
    assert "personas" in out and f"{cfg.personas.total}" in out and "tokens" in out
