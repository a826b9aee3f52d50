"""Validation: schema checks of every stored record, the great-expectations suites, structural rules, and the
Dagster gate: blocking checks stop publishing (the previous folder stays as it was), the sensor republishes only a
release whose checks all passed, and the regeneration schedule follows the config."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import dagster as dg  # noqa: E402
import datasets  # noqa: E402
import duckdb  # noqa: E402
import huggingface_hub  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from persona_factory.catalog import TABLES  # noqa: E402
from persona_factory.config import load_config  # noqa: E402
from persona_factory.embeddings import TextEmbedder  # noqa: E402
from persona_factory.publish import export_hub_layout, export_native  # noqa: E402
from persona_factory.schema import ReasoningStep, ReasoningTrajectory, RetrieveCall, SFTRecord  # noqa: E402
from persona_factory.store import Batch, apply_batch  # noqa: E402
from pipelines.definitions import build_definitions  # noqa: E402
from prompts import TEMPLATES  # noqa: E402
from pipelines.resources import FactoryConfig  # noqa: E402
from pipelines.schedules import SEED_TAG  # noqa: E402
from pipelines.sensors import republish_decision  # noqa: E402
from quality import dedup, release, validate  # noqa: E402
from tests.curation_world import (  # noqa: E402
    CURATION, PROVENANCE, clean_world, curate, make_item, materialize, write_world,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def released_db(world, tmp_path: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(write_world(world, tmp_path / "w.duckdb")))
    curate(con, load_config("tiny"), TextEmbedder())
    return con


def suite_on(con, suite: str) -> validate.SuiteResult:
    return validate.run_suite(suite, con.execute(f"SELECT {', '.join(TABLES[suite].flat_names)} FROM {suite}").df())


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------- suites and schemas


def test_every_suite_passes_on_a_clean_release(tmp_path):
    con = released_db(clean_world(tmp_path / "images"), tmp_path)
    for suite in validate.SUITES:
        result = suite_on(con, suite)
        assert result.success and result.rows > 0 and not result.quarantined, (suite, result.failed_expectations)


def _bad_sft(world):
    world.sft.append(SFTRecord(record_id="sft-bad", persona_id="ptrain1", task="reasoning", image=[],
                               conversations=[{"from": "human", "value": "<image>why?"}, {"from": "gpt", "value": "x"}],
                               provenance=PROVENANCE))


def _bad_item(world):
    world.items.append(make_item("q9", "pbench2", "200", "Which trail did I hike with my cousin?", "chestnut")
                       .model_copy(update={"answer": "(e)"}))


def _empty_solution(world):
    world.rl[0] = world.rl[0].model_copy(update={"solution": ""})


@pytest.mark.parametrize("plant, suite, rule, key, value", [
    (_bad_sft, "release_sft", "expect_column_pair_values_to_be_equal(n_images,n_image_tokens)", "sft-bad",
     "n_images=0; n_image_tokens=1"),
    (_bad_item, "release_benchmark", "expect_column_values_to_be_in_set(answer)", "q9", "answer='(e)'"),
    (_empty_solution, "release_rl", "expect_column_value_lengths_to_be_between(solution)", "rl-ptrain1",
     "solution=''"),
])
def test_a_row_breaking_a_suite_rule_fails_it_with_the_rule_and_the_value(tmp_path, plant, suite, rule, key, value):
    world = clean_world(tmp_path / "images")
    plant(world)
    result = suite_on(released_db(world, tmp_path), suite)
    assert not result.success
    assert (key, rule, value) in [(q.row_key, q.rule, q.value) for q in result.quarantined]


def test_the_history_length_rule_is_also_a_suite_rule():
    frame = pd.DataFrame({"persona_id": ["p1", "p2"], "split": ["train", "train"], "n_turns": [1, 6],
                          "n_sessions": [1, 0]})
    result = validate.run_suite("release_personas", frame)
    assert not result.success
    assert {(q.row_key, q.rule, q.value) for q in result.quarantined} == {
        ("p1", "expect_column_values_to_be_between(n_turns)", "n_turns=1"),
        ("p2", "expect_column_values_to_be_between(n_sessions)", "n_sessions=0")}


@pytest.mark.parametrize("sessions, value", [(1, "1 turns in 1 sessions"), (0, "0 turns in 0 sessions")])
def test_a_short_history_is_left_out_and_the_rest_is_released(tmp_path, sessions, value):
    world = clean_world(tmp_path / "images")
    d = world.dialogues["pbench2"]
    world.dialogues["pbench2"] = d.model_copy(update={"sessions": [
        d.sessions[0].model_copy(update={"turns": d.sessions[0].turns[:1]})][:sessions]})
    con = duckdb.connect(str(write_world(world, tmp_path / "w.duckdb")))
    summary, quarantined = curate(con, load_config("tiny"), TextEmbedder())
    assert ("dialogues", "pbench2", "short_history", value) in [
        (q.table_name, q.row_key, q.rule, q.value) for q in quarantined]
    assert con.execute("SELECT key, reason FROM release_exclusions WHERE unit = 'persona'").fetchall() == [
        ("pbench2", "structural:short_history")]
    assert summary.personas == {"train": 2, "bench_32k": 1} and summary.excluded_personas == {
        "structural:short_history": 1}
    assert "| persona | structural:short_history | 1 |" in release.curation_sections(con)["Deduplication and leakage"]
    for suite in validate.SUITES:
        assert suite_on(con, suite).success, suite


def test_a_history_with_a_missing_or_altered_image_is_left_out_and_the_rest_publishes(tmp_path):
    world = clean_world(tmp_path / "images")
    missing, altered, unused = (world.image(f"shape{n}") for n in (2, 0, 5))  # pbench1, ptrain1, no history
    Path(missing.path).unlink()
    Path(unused.path).unlink()
    Image.open(altered.path).rotate(90).save(altered.path)
    world.sft.append(world.sft[1].model_copy(update={"record_id": "sft-ghost", "image": ["f" * 64]}))
    con = duckdb.connect(str(write_world(world, tmp_path / "w.duckdb")))
    summary, quarantined = curate(con, load_config("tiny"), TextEmbedder())

    rows = {(q.table_name, q.row_key, q.rule): q.value for q in quarantined}
    assert rows[("dialogue_turns", "pbench1:1", "image_file_missing")] == \
        f"image {missing.image_id}: no file at {missing.path}"
    assert rows[("dialogue_turns", "ptrain1:1", "image_checksum")].startswith(
        f"image {altered.image_id}: {altered.path} has sha256 ")
    assert {k for k in rows if k[0] == "image_pool"} == {
        ("image_pool", missing.image_id, "image_file_missing"), ("image_pool", unused.image_id, "image_file_missing"),
        ("image_pool", altered.image_id, "image_checksum")}
    checksum = rows[("dialogue_turns", "ptrain1:1", "image_checksum")]
    assert con.execute("SELECT unit, key, reason, cause FROM release_exclusions ORDER BY key").fetchall() == [
        ("persona", "pbench1", "image:image_file_missing", f"pbench1:1: image {missing.image_id}: no file at "
                                                            f"{missing.path}"),
        ("persona", "ptrain1", "image:image_checksum", f"ptrain1:1: {checksum}"),
        ("record", "sft-ghost", "image:image_not_in_pool", f"image {'f' * 64}: no image_pool record")]
    assert summary.personas == {"train": 1, "bench_128k": 1} and summary.dropped_records == {
        "image:image_not_in_pool": 1}
    assert con.execute("SELECT record_id FROM release_sft").fetchall() == [("sft-ptrain2",)]
    for suite in validate.SUITES:
        assert suite_on(con, suite).success, suite

    bundle = release.release_bundle(con, PROVENANCE)
    manifest = export_hub_layout(bundle, tmp_path / "hub", pretty_name="T", license="mit")
    assert {split: v["rows"] for split, v in manifest["histories"].items()} == {"train": 1, "bench_128k": 1}
    assert export_native(bundle, tmp_path / "native")["persona_mme"]["samples"] == 1


def test_a_record_breaking_its_schema_is_reported_and_not_released(tmp_path):
    world = clean_world(tmp_path / "images")
    bad = world.sft[0].model_dump(mode="json") | {"record_id": "sft-dancing", "task": "dancing"}
    world.extra_rows.append(("sft_records", json.dumps(bad)))
    world.extra_rows.append(("personas", json.dumps({"split": "train"})))  # no persona_id: named by rowid
    con = duckdb.connect(str(write_world(world, tmp_path / "w.duckdb")))
    summary, _ = curate(con, load_config("tiny"), TextEmbedder())
    assert summary.unparsed_records == 2
    violations, checked, _ = validate.schema_violations(con)
    found = {(q.table_name, q.row_key, q.rule) for q in violations}
    assert ("sft_records", "sft-dancing", "schema:SFTRecord") in found
    assert any(t == "personas" and k.startswith("rowid") and r == "schema:Persona" for t, k, r in found)
    assert "task" in next(q.value for q in violations if q.row_key == "sft-dancing")
    assert checked["sft_records"] == 3 and checked["release_sft"] == 2
    assert "sft-dancing" not in {r[0] for r in con.execute("SELECT record_id FROM release_sft").fetchall()}


def test_an_unreadable_turn_time_is_a_structural_violation_not_a_crash(tmp_path):
    world = clean_world(tmp_path / "images")
    d = world.dialogues["ptrain1"]
    broken = d.sessions[1].turns[1].model_copy(update={"time": "Tuesday afternoon"})
    sessions = list(d.sessions)
    sessions[1] = d.sessions[1].model_copy(update={"turns": [d.sessions[1].turns[0], broken,
                                                             d.sessions[1].turns[2]]})
    world.dialogues["ptrain1"] = d.model_copy(update={"sessions": sessions})
    con = released_db(world, tmp_path)
    assert con.execute("SELECT reason FROM release_exclusions WHERE key = 'ptrain1'").fetchall() == [
        ("structural:time_format",)]


# ---------------------------------------------------------------------------------------------- the Dagster gate


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A clean world run through curation and publishing once, in its own Dagster instance."""
    out = tmp_path_factory.mktemp("curation")
    world = clean_world(out / "images")
    write_world(world, out / "pipeline.duckdb")
    settings = FactoryConfig(preset="tiny", output_dir=str(out))
    with dg.instance_for_test() as instance:
        result = materialize(settings, instance)
        yield world, settings, instance, result, out


def test_a_clean_release_passes_every_check_and_publishes(published):
    _, _, instance, result, out = published
    assert result.success
    assert {c.check_name for c in result.get_asset_check_evaluations() if c.passed} == {
        "record_schemas", "release_dedup", "shortcut_audit", *(f"{s}_suite" for s in validate.SUITES)}
    assert (out / "hub" / "README.md").is_file() and (out / "native" / "data").is_dir()
    assert isinstance(republish_decision(instance), dg.SkipReason)  # already published


def test_every_published_config_loads_back(published, tmp_path):
    _, _, _, _, out = published
    hub = str(out / "hub")
    configs = datasets.get_dataset_config_names(hub)
    assert set(configs) == {"sft", "rl", "histories", "memory_db", "benchmark_32k", "benchmark_128k"}
    rows = {c: {s: len(d) for s, d in datasets.load_dataset(hub, c, cache_dir=str(tmp_path)).items()}
            for c in configs}
    with duckdb.connect(str(out / "pipeline.duckdb"), read_only=True) as con:
        count = lambda sql: con.execute(sql).fetchone()[0]  # noqa: E731
        assert rows["sft"] == {"train": count("SELECT count(*) FROM release_sft")}
        assert rows["rl"] == {"train": count("SELECT count(*) FROM release_rl")}
        assert rows["histories"] == {"train": 2, "bench_32k": 1, "bench_128k": 1}
        assert rows["benchmark_32k"] == {"test": count("SELECT count(*) FROM release_benchmark WHERE bucket = '50'")}


def test_the_card_reports_provenance_curation_and_charts(published):
    _, _, _, _, out = published
    card = (out / "hub" / "README.md").read_text()
    assert all(f"`{name}`" in card for name in TEMPLATES.values())  # every prompt template with its hash
    for needle in ("Teacher model:", "Seed: `0`", "Code version:", "Preset: `tiny`",
                   "## Deduplication and leakage", "## Quarantine", "## Benchmark gates", "## Retrieval",
                   "## Shortcut audit", "| letters_unpredictable | pass |", "## Charts",
                   "| sft | train | 2 |", "| semantic_memory | 2 |"):
        assert needle in card, needle
    figures = [line.split("](")[1].rstrip(")") for line in card.splitlines() if line.startswith("![")]
    assert len(figures) == 3
    for rel in figures:
        with Image.open(out / "hub" / rel) as img:
            assert img.format == "PNG" and img.width > 300


def test_the_card_compares_the_retrievers_answer_hits_on_the_same_probes():
    def trajectory(n: int, hits: dict[str, bool]) -> ReasoningTrajectory:
        steps = [ReasoningStep(think="I should search.", action="retrieve", retrieve=RetrieveCall(keywords="k"))]
        return ReasoningTrajectory(
            probe_id=f"r_{n}", persona_id="p", question_kind="relationship", mode="retrieve" if hits else "direct",
            probe_turn_index=3, probe_time="2024-05-02 10:00", query="q?", gold_item_id="i", gold_value="sister",
            evidence_turns=[0], distractors=[], steps=steps if hits else [], verdict="verified", retriever="embedding",
            answer_hits=hits)
    rows = [trajectory(0, {"embedding": True, "keyword": False}), trajectory(1, {"embedding": True, "keyword": True}),
            trajectory(2, {"embedding": False, "keyword": True}), trajectory(3, {"embedding": True, "keyword": False}),
            trajectory(4, {})]  # a direct probe searches nothing
    con = duckdb.connect()
    assert release.retrieval_hits(con) == "None."
    batch = Batch("reasoning_trajectories", ("shard-000",))
    batch.add(TABLES["reasoning_trajectories"], rows, shard_of={"p": "shard-000"})
    apply_batch(con, batch)
    table = release.retrieval_hits(con).split("\n\n")[1]
    assert table.splitlines()[2:] == ["| embedding | yes | 4 | 3 | 75.0% |", "| keyword | no | 4 | 2 | 50.0% |"]


def test_a_schema_violation_blocks_publishing_and_keeps_the_published_folder(published):
    world, settings, instance, _, out = published
    before = digest(out / "hub"), digest(out / "native")
    bad = world.sft[0].model_dump(mode="json") | {"record_id": "sft-dancing", "task": "dancing"}
    with duckdb.connect(str(out / "pipeline.duckdb")) as con:
        con.execute("INSERT INTO sft_records (record) VALUES (?)", [json.dumps(bad)])
    result = materialize(settings, instance)
    assert not result.success
    failed = {c.check_name for c in result.get_asset_check_evaluations() if not c.passed}
    assert failed == {"record_schemas"}
    assert {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()} == set(CURATION)
    assert (digest(out / "hub"), digest(out / "native")) == before
    with duckdb.connect(str(out / "pipeline.duckdb"), read_only=True) as con:
        assert con.execute("SELECT table_name, row_key, rule FROM quarantine WHERE asset = 'check:record_schemas'"
                           ).fetchall() == [("sft_records", "sft-dancing", "schema:SFTRecord")]
    decision = republish_decision(instance)
    assert isinstance(decision, dg.SkipReason) and "record_schemas failed" in decision.skip_message

    # fixed and rebuilt without publishing (what a scheduled regeneration does): the sensor publishes it once
    with duckdb.connect(str(out / "pipeline.duckdb")) as con:
        con.execute("DELETE FROM sft_records WHERE record->>'$.record_id' = 'sft-dancing'")
    assert materialize(settings, instance, CURATION).success
    decision = republish_decision(instance)
    assert isinstance(decision, dg.RunRequest) and decision.run_key.startswith("release-")
    assert materialize(settings, instance, ("hub_dataset", "native_release", "hub_push")).success
    assert isinstance(republish_decision(instance), dg.SkipReason)


def test_publishing_alone_refuses_a_release_whose_checks_did_not_pass(tmp_path):
    world = clean_world(tmp_path / "images")
    write_world(world, tmp_path / "pipeline.duckdb")
    settings = FactoryConfig(preset="tiny", output_dir=str(tmp_path))
    with dg.instance_for_test() as instance:
        result = materialize(settings, instance, ("hub_dataset",))
    assert not result.success and not (tmp_path / "hub").exists()


# ---------------------------------------------------------------------------------------------- schedule and sensor


def _settings(tmp_path: Path, **regeneration) -> FactoryConfig:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"regeneration": regeneration}))
    return FactoryConfig(preset="tiny", config_path=str(path), output_dir=str(tmp_path / "out"))


def test_regeneration_and_republishing_are_off_by_default(tmp_path):
    defs = build_definitions(_settings(tmp_path))
    assert defs.resolve_schedule_def("regeneration").default_status == dg.DefaultScheduleStatus.STOPPED
    assert defs.resolve_sensor_def("republish_when_checks_pass").default_status == dg.DefaultSensorStatus.STOPPED


def test_a_scheduled_regeneration_runs_with_a_new_seed_and_without_publishing(tmp_path):
    settings = _settings(tmp_path, enabled=True, cron="0 4 * * *")
    defs = build_definitions(settings)
    schedule = defs.resolve_schedule_def("regeneration")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING and schedule.cron_schedule == "0 4 * * *"
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=datetime(2026, 3, 2, 4, 0))
        [request] = schedule.evaluate_tick(context).run_requests
    assert request.tags[SEED_TAG] == "202603020400"
    run_settings = request.run_config["resources"]["settings"]["config"]
    assert run_settings["output_dir"] == settings.output_dir
    cfg = FactoryConfig(**run_settings).load()
    assert cfg.seed == 202603020400 and cfg.regeneration.enabled and cfg.preset == "tiny"
    job = defs.resolve_job_def("regeneration_job")
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} >= set(CURATION)
    assert not {"hub_dataset", "hub_push"} & {k.to_user_string() for k in job.asset_layer.executable_asset_keys}


def test_a_fixed_seed_regeneration_keeps_the_config(tmp_path):
    defs = build_definitions(_settings(tmp_path, enabled=True, seed="fixed"))
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=datetime(2026, 3, 2, 4, 0))
        [request] = defs.resolve_schedule_def("regeneration").evaluate_tick(context).run_requests
    assert request.tags[SEED_TAG] == "0" and not request.run_config
