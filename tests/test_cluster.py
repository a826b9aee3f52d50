"""The tiny graph on a cluster: shard runs reach two Celery workers through Dagster's CeleryRunLauncher, with the
instance on Postgres, the working tables as Parquet on S3 and the shared response cache on Postgres (every server
on loopback, tests/cluster.py), against the schema-following fake teacher. One shard run's worker process is
killed with SIGKILL in the middle of its dialogues: that shard re-runs alone, nothing is stored twice, no answer
cached before the kill is asked again, and the published folders are byte-identical to a single-machine run. All of
it twice: retried by the daemon's run retries, and by the retry_missed_retries sensor when the daemon misses the
failure (its retry pass made to wait longer than the run)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest

from persona_factory import catalog as C
from persona_factory.stages.personas import shard_keys
from persona_factory.store import ParquetStore
from persona_factory.teacher.embedded import EMBEDDED_SERVED_NAME
from pipelines.resources import FactoryConfig
from pipelines.sensors import RETRY_OF
from tests.cluster import LocalCluster, retry_of
from tests.fake_openai import FakeOpenAI, Reply
from tests.fake_teacher import openai_responder

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
LATENCY_S = 0.1  # per request, so a shard's dialogues step lasts long enough to be killed in the middle
KILL_AFTER_S = 2.0  # into the dialogues step


class Recorder:
    """The fake teacher's answers with the time each was sent: (time, digest of the request body)."""

    def __init__(self) -> None:
        self.respond = openai_responder()
        self.answered: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> Reply:
        with self.lock:
            self.answered.append((time.time() + LATENCY_S, digest(body)))
        return Reply.ok(self.respond(body), delay_s=LATENCY_S)

    def reset(self) -> None:
        with self.lock:
            self.answered.clear()


def digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def portable(raw: str) -> dict:
    """A stored record without what says where this machine keeps a file (an image's local path)."""
    record = json.loads(raw)
    if "path" in record and "image_id" in record:
        record["path"] = Path(record["path"]).name
    return record


def field(record: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        record = record[part]
    return record


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def teacher():
    recorder = Recorder()
    with FakeOpenAI(EMBEDDED_SERVED_NAME, responder=recorder) as fake:
        yield fake, recorder


@pytest.fixture(scope="module")
def single_machine(graph_run) -> Path:
    """The same config on one machine (the graph tests' run): the DuckDB file, the SQLite cache, one run."""
    _, out, result, _ = graph_run
    assert result.success
    return out


@dataclass
class ClusterRun:
    cluster: LocalCluster
    shard_runs: list  # oldest first
    victim: Any  # the run whose worker process was killed
    killed_at: float
    answered_before: list[tuple[float, str]]  # the teacher's answers until the kill
    asked_after: list[str]  # digests of the requests the teacher received after the kill
    retried_by: str  # "daemon" (run retries) or "sensor" (the daemon missed the failure)


# the daemon's retry pass (Dagster's EventLogConsumerDaemon) runs once at its start, then after this interval
MISSED_BY_THE_DAEMON = {"DAGSTER_EVENT_LOG_CONSUMER_DAEMON_INTERVAL_SECONDS": str(24 * 3600)}


@pytest.fixture(scope="module", params=["daemon", "sensor"])
def cluster_run(request, single_machine, teacher, postgres_url, redis_url, s3_endpoint, tmp_path_factory):
    fake, recorder = teacher
    recorder.reset()
    work = tmp_path_factory.mktemp("cluster")
    with LocalCluster(work, postgres_url, redis_url, s3_endpoint, [fake.base_url], workers=2, max_runs=2,
                      env=MISSED_BY_THE_DAEMON if request.param == "sensor" else None) as cluster:
        cluster.launch("images_job")
        cluster.wait_for_runs("images_job")
        shards = shard_keys(FactoryConfig(preset="tiny").load())
        cluster.launch_shards("shard_job", shards)
        victim = cluster.wait(lambda: next((r for r in cluster.runs("shard_job")
                                            if cluster.step_started(r.run_id, "dialogues")), None),
                              "a shard run in its dialogues step", poll_s=0.2)
        time.sleep(KILL_AFTER_S)
        killed_at = time.time()
        cluster.kill_run_process(cluster.worker_of(victim))
        with recorder.lock:
            answered_before = list(recorder.answered)
        runs = cluster.wait_for_runs("shard_job", n=len(shards))
        asked_after = [d for t, d in recorder.answered if t - LATENCY_S > killed_at]
        cluster.launch("release_job")
        cluster.wait_for_runs("release_job")
        yield ClusterRun(cluster, runs, victim, killed_at, answered_before, asked_after, request.param)


def test_every_shard_ran_and_both_workers_took_shards(cluster_run):
    runs = cluster_run.shard_runs
    succeeded = [r for r in runs if r.status == dg.DagsterRunStatus.SUCCESS]
    assert sorted(r.tags["dagster/partition"] for r in succeeded) == shard_keys(FactoryConfig(preset="tiny").load())
    first_runs = [r for r in runs if retry_of(r) is None]
    assert {cluster_run.cluster.worker_of(r) for r in first_runs} == {0, 1}


def test_the_killed_shard_reran_alone(cluster_run):
    """Run monitoring saw the Celery task fail and marked the run failed; run retries started that shard, and only
    it, again from the step that did not finish (or, had the daemon missed it, the retry_missed_retries sensor
    started the shard again)."""
    runs, victim = cluster_run.shard_runs, cluster_run.victim
    retries = [r for r in runs if retry_of(r) is not None]
    assert [retry_of(r) for r in retries] == [victim.run_id]
    if cluster_run.retried_by == "sensor":
        assert retries[0].tags[RETRY_OF] == victim.run_id
    assert retries[0].tags["dagster/partition"] == victim.tags["dagster/partition"]
    assert retries[0].status == dg.DagsterRunStatus.SUCCESS
    assert cluster_run.cluster.instance.get_run_by_id(victim.run_id).status == dg.DagsterRunStatus.FAILURE


def test_no_answer_cached_before_the_kill_was_asked_again(cluster_run):
    cached = {d for t, d in cluster_run.answered_before if t < cluster_run.killed_at - 1.0}
    assert cached, "the kill came before any answer"
    assert cluster_run.asked_after, "the retry asked nothing: the kill came too late to test a resume"
    assert not cached & set(cluster_run.asked_after)


def test_the_working_tables_match_the_single_machine_run_without_duplicates(cluster_run, single_machine):
    cfg = FactoryConfig(config_path=str(cluster_run.cluster.config_path)).load()
    store = ParquetStore(cfg.storage.url, cfg.storage.options)
    with store.reader() as con, duckdb.connect(str(single_machine / "pipeline.duckdb"), read_only=True) as ref:
        for table in C.RECORD_TABLES.values():
            rows = [portable(r[0]) for r in con.execute(f"SELECT record FROM {table.name} ORDER BY rowid").fetchall()]
            assert rows == [portable(r[0]) for r in ref.execute(
                f"SELECT record FROM {table.name} ORDER BY rowid").fetchall()], table.name
            keys = [tuple(field(r, k) for k in table.key) for r in rows]
            assert len(keys) == len(set(keys)), f"{table.name} holds a row twice"


def test_the_published_folders_are_byte_identical_to_a_single_machine_run(cluster_run, single_machine):
    out = cluster_run.cluster.output
    for folder in ("hub", "native"):
        assert tree_digest(out / folder) == tree_digest(single_machine / folder), folder
