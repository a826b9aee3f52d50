"""The response cache every machine shares (Postgres on loopback) and the teacher fleet's routing: a persona's
requests stay on one endpoint and fail over when it is down."""

from __future__ import annotations

import time

import pytest

from persona_factory.config import ConfigError, load_config
from persona_factory.teacher.backends import ServerBackend
from persona_factory.teacher.cache import PostgresResponseCache, ResponseCache, open_cache
from persona_factory.teacher.client import Teacher
from persona_factory.teacher.types import ChatMessage, Sampling, TeacherRequest

try:
    from tests.fake_openai import FakeOpenAI
    from tests.servers import create_database, free_port
except ImportError:
    from fake_openai import FakeOpenAI
    from servers import create_database, free_port

MODEL = "m"


def request(text: str, owner: str = "") -> TeacherRequest:
    return TeacherRequest((ChatMessage("user", text),), Sampling(seed=1), tag=f"turn:{owner}:0" if owner else "")


def put(cache, key: str, *, payload=None, failure=None) -> None:
    cache.put(key, MODEL, "t", payload=payload, failure=failure, attempts=1, prompt_tokens=1, completion_tokens=1)


@pytest.fixture
def database(postgres_url):
    """A fresh database on the session's server."""
    return create_database(postgres_url, f"cache_{time.monotonic_ns()}")


def test_machines_share_answers_written_within_the_flush_interval(database):
    a, b = PostgresResponseCache(database, 0.2), PostgresResponseCache(database, 0.2)
    try:
        put(a, "k1", payload={"x": 1})
        assert a.get("k1")["payload"] == {"x": 1}  # its own answer, before it is written
        deadline = time.monotonic() + 1.0
        while b.get("k1") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b.get("k1") == {"ok": True, "payload": {"x": 1}, "failure": None, "attempts": 1}
        assert set(b.get_many(["k1", "k2"])) == {"k1"}
    finally:
        a.close()
        b.close()


def test_an_answer_replaces_only_a_recorded_failure(database):
    cache = PostgresResponseCache(database)
    try:
        put(cache, "bad", failure="schema: x")
        put(cache, "good", payload="yes")
        cache.flush()
        put(cache, "bad", payload="fixed")
        put(cache, "good", failure="schema: y")  # another machine's late failure for an answered request
        cache.flush()
        assert cache.get("bad")["payload"] == "fixed" and cache.get("good")["payload"] == "yes"
        assert cache.count() == 2
    finally:
        cache.close()


def test_a_teacher_on_the_shared_cache_never_asks_twice(database, tmp_path):
    with FakeOpenAI(MODEL, responder=lambda body: "an answer") as fake:
        for _ in range(2):
            t = Teacher(ServerBackend([fake.base_url], MODEL), PostgresResponseCache(database), max_retries=0)
            try:
                [r] = t.generate([request("hello")])
            finally:
                t.close()  # flushes what is still buffered
            assert r.ok and r.value == "an answer"
        assert fake.request_count == 1


def test_the_cache_settings_choose_the_backend(tmp_path, monkeypatch, database):
    assert isinstance(open_cache(load_config("tiny", overrides={"output_dir": str(tmp_path)})), ResponseCache)
    cfg = load_config("tiny", overrides={"cache": {"backend": "postgres", "url_env": "PF_TEST_CACHE"}})
    monkeypatch.delenv("PF_TEST_CACHE", raising=False)
    with pytest.raises(ConfigError, match="PF_TEST_CACHE"):
        open_cache(cfg)
    monkeypatch.setenv("PF_TEST_CACHE", f"postgresql://u:secret-pw@127.0.0.1:{free_port()}/x")
    with pytest.raises(ConfigError, match="cache.url_env") as err:
        open_cache(cfg)
    assert "secret-pw" not in str(err.value)
    monkeypatch.setenv("PF_TEST_CACHE", database)
    shared = open_cache(cfg)
    assert isinstance(shared, PostgresResponseCache)
    shared.close()


def test_a_personas_requests_stay_on_one_endpoint():
    with FakeOpenAI(MODEL, responder=lambda b: "ok") as a, FakeOpenAI(MODEL, responder=lambda b: "ok") as b:
        backend = ServerBackend([a.base_url, b.base_url], MODEL)
        owners = [f"p{i}" for i in range(8)]
        raws = backend.complete([request(f"{owner} turn {k}", owner) for owner in owners for k in range(3)])
        assert all(r.error is None for r in raws)
        served = {fake.base_url: sorted(body["messages"][0]["content"].split()[0] for body in fake.requests)
                  for fake in (a, b)}
        preferred = {o: backend.preference(o)[0] for o in owners}
        for url, seen in served.items():
            assert seen == sorted(o for o in owners for _ in range(3) if preferred[o] == url)
        assert all(served.values())  # both endpoints have personas


def test_a_down_endpoint_fails_over_to_the_personas_next_one(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with FakeOpenAI(MODEL, responder=lambda b: "ok") as live:
        backend = ServerBackend([dead, live.base_url], MODEL)
        owner = next(o for o in (f"p{i}" for i in range(50)) if backend.preference(o)[0] == dead)
        t = Teacher(backend, ResponseCache(tmp_path / "c.sqlite"), max_retries=1, backoff_s=0.0)
        try:
            first = t.generate([request("a", owner)])
            later = t.generate([request("b", owner), request("c", owner)])
        finally:
            t.close()
        assert all(r.ok for r in first + later)
        assert first[0].attempts == 2  # tried the dead one, then the next
        assert [r.attempts for r in later] == [1, 1]  # the dead one is passed over while it stays down
