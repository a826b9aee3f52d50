"""Dagster resources: the pipeline config, the working tables and the teacher (embedded CPU server by default)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import dagster as dg
import httpx
from pydantic import PrivateAttr

from persona_factory.config import PipelineConfig, load_config
from persona_factory.embeddings import TextEmbedder
from persona_factory.store import Store, open_store
from persona_factory.teacher.backends import OfflineBackend, ServerBackend
from persona_factory.teacher.cache import open_cache
from persona_factory.teacher.client import Backend, Teacher


class FactoryConfig(dg.ConfigurableResource):
    """Which preset, which YAML file, where outputs go (env: PERSONA_FACTORY_PRESET / _CONFIG / _OUTPUT)."""

    preset: str = "tiny"
    config_path: Optional[str] = None
    output_dir: Optional[str] = None
    teacher_base_urls: Optional[list[str]] = None  # shortcut for teacher.base_urls
    seed: Optional[int] = None  # replaces the config's seed (a scheduled regeneration sets a new one per run)
    # after the run, the embedded engine the run started measures its full-batch rate (the CLI's utilization line)
    measure_teacher: bool = False

    def load(self) -> PipelineConfig:
        overrides: dict = {}
        if self.seed is not None:
            overrides["seed"] = self.seed
        if self.output_dir:
            overrides["output_dir"] = self.output_dir
        if self.teacher_base_urls:
            overrides["teacher"] = {"base_urls": list(self.teacher_base_urls)}
        return load_config(self.preset, self.config_path, overrides)


class StoreResource(dg.ConfigurableResource):
    """The working tables (`storage.*`): a local DuckDB file by default, Parquet on shared storage for a cluster."""

    settings: FactoryConfig

    def get(self) -> Store:
        return open_store(self.settings.load())


class EmbedderResource(dg.ConfigurableResource):
    """One text embedder per run (retrieval, question dedup), its vectors cached in the output folder; the model
    loads on the first text the cache does not hold."""

    settings: FactoryConfig

    _embedder: Optional[TextEmbedder] = PrivateAttr(default=None)

    def get(self) -> TextEmbedder:
        if self._embedder is None:
            self._embedder = TextEmbedder(self.settings.load().output_path / "embeddings.sqlite")
        return self._embedder

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None


class TeacherResource(dg.ConfigurableResource):
    """One teacher per run. The embedded server (or the offline engine) starts on first use, not at import,
    so runs that need no teacher never pay its start-up; it stops when the run ends."""

    settings: FactoryConfig

    _teacher: Optional[Teacher] = PrivateAttr(default=None)
    _server: object = PrivateAttr(default=None)

    def get(self) -> Teacher:
        if self._teacher is None:
            self._teacher = self._build(self.settings.load())
        return self._teacher

    def model_name(self) -> str:
        """The teacher's model id for provenance, without starting an engine."""
        from persona_factory.teacher.embedded import model_id

        return self._teacher.model_id if self._teacher is not None else model_id(self.settings.load().teacher)

    def _build(self, cfg: PipelineConfig) -> Teacher:
        t = cfg.teacher
        cache = open_cache(cfg)
        return Teacher(lambda: self._connect(cfg), cache, model_id=self.model_name(), max_retries=t.max_retries,
                       retry_cached_failures=t.retry_cached_failures)

    def _connect(self, cfg: PipelineConfig) -> Backend:
        """Called on the first request the cache cannot answer: a configured endpoint, the in-process engine, an
        embedded server already running on `teacher.embedded_port` (e.g. `make serve-teacher`), or a new one."""
        from persona_factory.teacher.embedded import EmbeddedServer, apply_engine_env, resolve_model, running_server

        t = cfg.teacher
        if t.backend == "server" and t.base_urls:
            backend = ServerBackend.from_settings(t, t.base_urls, self.model_name())
            backend.check()
            return backend
        if t.backend == "offline":
            path, model_id = resolve_model(t)
            apply_engine_env(t)
            return OfflineBackend(path, model_id, t, seed=cfg.seed)
        url = running_server(t, self.model_name())
        if url is None:
            logs = cfg.output_path / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            self._server = EmbeddedServer(t, logs / "teacher_server.log").start()
            url = self._server.base_url
        return ServerBackend.from_settings(t, [url], self.model_name(), batch=t.max_num_seqs)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._teacher is not None:
            self._teacher.close()
            self._teacher = None
        if self._server is not None:
            if self.settings.measure_teacher:
                self._measure(context.run_id)
            self._server.stop()
            self._server = None

    def _measure(self, run_id: str) -> None:
        """The started engine's full-batch rate, recorded next to its log for the run's utilization line."""
        from persona_factory.teacher.utilization import full_batch_throughput, probe_prompts

        cfg = self.settings.load()
        try:
            probe = full_batch_throughput(self._server.base_url, self._server.served_name,
                                          probe_prompts(cfg.teacher.max_num_seqs), run_id)
        except (httpx.HTTPError, KeyError, ValueError) as e:  # the run's data is written: only the figure is lost
            print(f"[embedded] full-batch rate not measured: {type(e).__name__}: {e}", flush=True)
            return
        probe.save(throughput_path(cfg))


def throughput_path(cfg: PipelineConfig) -> Path:
    return cfg.output_path / "logs" / "teacher_throughput.json"


def default_settings() -> FactoryConfig:
    env = os.environ
    urls = [u for u in env.get("PERSONA_FACTORY_TEACHER_URLS", "").split(",") if u]
    return FactoryConfig(preset=env.get("PERSONA_FACTORY_PRESET", "tiny"),
                         config_path=env.get("PERSONA_FACTORY_CONFIG") or None,
                         output_dir=env.get("PERSONA_FACTORY_OUTPUT") or None,
                         teacher_base_urls=urls or None)

