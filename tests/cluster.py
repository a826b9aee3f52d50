"""A whole cluster on one machine, built from the shipped configuration: the Dagster instance of
deploy/celery/dagster.yaml on Postgres, Celery workers (Redis broker) started with `celery` itself, the Dagster
daemon that queues, launches, monitors and retries runs, Parquet working tables on S3 and the response cache on
Postgres. Every server listens on 127.0.0.1 (tests/servers.py). Used by tests/test_cluster.py and
bench/shard_workers.py.

    with LocalCluster(work, postgres_url, redis_url, s3_endpoint, teacher_url, workers=2) as cluster:
        cluster.launch("images_job"); cluster.wait_for_runs("images_job")
        cluster.launch_shards("shard_job", shards); cluster.wait_for_runs("shard_job", len(shards))
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import yaml

from pipelines.sensors import PARENT_RUN, RETRY_OF
from tests.servers import S3_ENV, create_database, free_port, listening, make_bucket, wait_until

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy" / "celery"
BIN = Path(sys.executable).parent


def retry_of(run) -> str | None:
    """The failed run a run retries: run retries tag it with its parent, the `retry_missed_retries` sensor (for a
    retry the daemon missed) with RETRY_OF."""
    return run.tags.get(PARENT_RUN) or run.tags.get(RETRY_OF)


class LocalCluster:
    def __init__(self, work: Path, postgres_url: str, redis_url: str, s3_endpoint: str, teacher_urls: list[str],
                 *, workers: int = 2, max_runs: int = 2, preset: str = "tiny", config: dict | None = None,
                 env: dict[str, str] | None = None):
        self.work = work
        self.workers = workers
        tag = uuid.uuid4().hex[:8]
        bucket = f"factory-{tag}"
        make_bucket(s3_endpoint, bucket)
        self.output = work / "output"
        self.home = work / "dagster_home"
        self.home.mkdir(parents=True)
        shutil.copy(DEPLOY / "dagster.yaml", self.home / "dagster.yaml")
        self.config_path = work / "factory.yaml"
        self.config_path.write_text(yaml.safe_dump({
            "preset": preset, "output_dir": str(self.output), "teacher": {"base_urls": teacher_urls},
            "storage": {"backend": "parquet", "url": f"s3://{bucket}/run", "options": {"endpoint_url": s3_endpoint}},
            "cache": {"backend": "postgres"}, **(config or {})}))
        broker = redis_url.rsplit("/", 1)[0]
        db = int(tag, 16) % 8 * 2  # a pair of Redis databases of its own
        self.env = {
            **os.environ, **S3_ENV,
            "DAGSTER_HOME": str(self.home),
            "DAGSTER_POSTGRES_URL": create_database(postgres_url, f"dagster_{tag}").replace(
                "postgresql://", "postgresql+psycopg2://"),
            "PERSONA_FACTORY_MAX_RUNS": str(max_runs),
            "CELERY_BROKER_URL": f"{broker}/{db}", "CELERY_RESULT_BACKEND": f"{broker}/{db + 1}",
            "PERSONA_FACTORY_CONFIG": str(self.config_path),
            "PERSONA_FACTORY_CACHE_URL": create_database(postgres_url, f"cache_{tag}"),
            "PYTHONPATH": os.pathsep.join([str(DEPLOY), str(REPO)]),
            "DAGSTER_DISABLE_TELEMETRY": "1",
            **(env or {}),
        }
        self.workspace = work / "workspace.yaml"
        self.code_port = free_port()
        self.workspace.write_text(yaml.safe_dump({"load_from": [{"grpc_server": {
            "host": "127.0.0.1", "port": self.code_port, "location_name": "persona_factory"}}]}))
        self.worker_procs: list[subprocess.Popen] = []
        self.code_server: subprocess.Popen | None = None
        self.daemon: subprocess.Popen | None = None
        self._instance = None

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def __enter__(self) -> "LocalCluster":
        subprocess.run([str(BIN / "dagster"), "instance", "migrate"], env=self.env, cwd=REPO, check=True,
                       capture_output=True)  # once, before any worker: concurrent schema creation races
        for i in range(self.workers):
            self.worker_procs.append(self._start([
                str(BIN / "celery"), "-A", "dagster_celery.app", "worker", "-Q", "dagster", "-n", f"w{i}@%h",
                "--concurrency=1", "--prefetch-multiplier=1", "--max-tasks-per-child=1", "--without-gossip",
                "--without-mingle", "--without-heartbeat", "-l", "INFO", f"--logfile={self.worker_log(i)}"],
                self.work / f"worker{i}.out"))
        # one code server for the code location, which the daemon and the CLI ask instead of loading it each
        self.code_server = self._start([str(BIN / "dagster"), "code-server", "start", "-m", "pipelines.definitions",
                                        "-h", "127.0.0.1", "-p", str(self.code_port)], self.work / "code_server.log")
        wait_until(lambda: listening(self.code_port), "the code server", timeout_s=180, proc=self.code_server)
        self.daemon = self._start([str(BIN / "dagster-daemon"), "run", "-w", str(self.workspace)],
                                  self.work / "daemon.log")
        return self

    def _start(self, cmd: list[str], log: Path) -> subprocess.Popen:
        with log.open("w") as out:
            # its own process group, so stopping it stops what it started (the daemon's code server)
            return subprocess.Popen(cmd, env=self.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def __exit__(self, *exc) -> None:
        procs = [p for p in [self.daemon, self.code_server, *self.worker_procs] if p is not None]
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        if self._instance is not None:
            self._instance.dispose()

    def worker_log(self, i: int) -> Path:
        return self.work / f"worker{i}.log"

    # -- driving it --------------------------------------------------------------------------------------------
    def cli(self, *args: str) -> str:
        done = subprocess.run([str(BIN / "dagster"), *args, "-w", str(self.workspace)], env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        if done.returncode:
            raise RuntimeError(f"dagster {' '.join(args)} failed: {done.stderr[-3000:]}")
        return done.stdout

    def launch(self, job: str) -> None:
        self.cli("job", "launch", "-j", job)

    def launch_shards(self, job: str, shards: list[str]) -> None:
        """One run per shard. (`dagster job backfill` would submit the same runs, but it marks its backfill
        complete at once, and the daemon does not retry runs of a completed backfill.)"""
        for shard in shards:
            self.cli("job", "launch", "-j", job, "--tags", json.dumps({"dagster/partition": shard}))

    @property
    def instance(self):
        if self._instance is None:
            saved = dict(os.environ)
            os.environ.update({k: self.env[k] for k in ("DAGSTER_POSTGRES_URL", "PERSONA_FACTORY_MAX_RUNS",
                                                        "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")})
            try:
                self._instance = dg.DagsterInstance.from_config(str(self.home))
            finally:
                os.environ.clear()
                os.environ.update(saved)
        return self._instance

    def runs(self, job: str) -> list:
        return list(reversed(self.instance.get_runs(dg.RunsFilter(job_name=job))))

    def wait(self, done, what: str, timeout_s: float = 900.0, poll_s: float = 1.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.daemon is not None and self.daemon.poll() is not None:
                raise RuntimeError(f"the dagster daemon exited: {(self.work / 'daemon.log').read_text()[-3000:]}")
            value = done()
            if value:
                return value
            time.sleep(poll_s)
        raise TimeoutError(f"{what} not done after {timeout_s:.0f} s; runs: {self.describe()}")

    def describe(self) -> str:
        return json.dumps([(r.job_name, r.tags.get("dagster/partition"), r.status.value) for r in self.runs_all()])

    def runs_all(self) -> list:
        return list(reversed(self.instance.get_runs()))

    def wait_for_runs(self, job: str, n: int = 1, timeout_s: float = 900.0) -> list:
        """The job's runs once `n` of them succeeded and none is still going; fails on a run that failed for
        good (no retry will follow)."""
        def done():
            runs = self.runs(job)
            if any(r.status == dg.DagsterRunStatus.FAILURE and not self._will_retry(r) for r in runs):
                raise RuntimeError(f"a {job} run failed: {self.describe()}\n{self.failure_of(runs)}")
            finished = [r for r in runs if r.status == dg.DagsterRunStatus.SUCCESS]
            return runs if len(finished) >= n and all(r.is_finished for r in runs) else None

        return self.wait(done, f"{n} successful {job} runs", timeout_s)

    def _will_retry(self, run) -> bool:
        """A failed run the daemon retries (it tags the failure with its decision, then launches the retry)."""
        retried = any(retry_of(r) == run.run_id for r in self.runs_all())
        tags = self.instance.get_run_by_id(run.run_id).tags
        return retried or tags.get("dagster/will_retry", "true") == "true"

    def failure_of(self, runs) -> str:
        out = []
        for r in runs:
            if r.status == dg.DagsterRunStatus.FAILURE:
                for record in self.instance.all_logs(r.run_id):
                    if record.is_dagster_event and record.dagster_event.is_failure:
                        out.append(f"{r.run_id}: {record.dagster_event.message}")
        return "\n".join(out[-5:])

    def step_started(self, run_id: str, step: str) -> bool:
        return any(r.dagster_event.step_key == step
                   for r in self.instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START))

    def worker_of(self, run) -> int:
        """Which worker took a run (the Celery task id the launcher tagged it with, in the worker's log)."""
        task = run.tags["dagster-celery/task_id"]
        for i in range(self.workers):
            if task in self.worker_log(i).read_text():
                return i
        raise LookupError(f"no worker log names task {task} of run {run.run_id}")

    def kill_run_process(self, worker: int) -> int:
        """kill -9 of the process running a worker's current task (its pool process); returns its pid."""
        import psutil

        children = psutil.Process(self.worker_procs[worker].pid).children()
        assert len(children) == 1, f"worker {worker} has {len(children)} pool processes"
        os.kill(children[0].pid, signal.SIGKILL)
        return children[0].pid
