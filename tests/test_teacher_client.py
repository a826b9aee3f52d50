"""The real Teacher + ServerBackend against a scripted OpenAI-compatible fake on 127.0.0.1 (no engine)."""

from __future__ import annotations

import base64
import json
import threading
import socket
import sqlite3
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from persona_factory.config import ConfigError, canonical_json, load_config
from persona_factory.teacher.backends import ServerBackend
from persona_factory.teacher.cache import ResponseCache, request_key
from persona_factory.teacher.client import Teacher, TeacherUnavailable
from persona_factory.teacher.types import ChatMessage, ImagePart, Sampling, TeacherRequest, TeacherStats

try:
    from tests.fake_openai import FakeOpenAI, InFlight, Reply
except ImportError:  # tests/ on sys.path instead of the repo root
    from fake_openai import FakeOpenAI, InFlight, Reply

pytestmark = pytest.mark.timeout(60)

MODEL = "fake/teacher-7b"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


class Answer(BaseModel):
    text: str
    score: int


class OtherAnswer(BaseModel):
    text: str
    score: float


def good(text: str = "hi", score: int = 1) -> str:
    return json.dumps({"text": text, "score": score})


def req(text: str = "hello", *, schema: type[BaseModel] | None = Answer, seed: int = 5, tag: str = "",
        image: bytes | None = None, **sampling: float) -> TeacherRequest:
    content: str | tuple = text if image is None else (text, ImagePart(image))
    return TeacherRequest(
        messages=(ChatMessage("system", "You are a teacher."), ChatMessage("user", content)),
        sampling=Sampling(seed=seed, **sampling),
        schema=schema,
        tag=tag or text,
    )


def user_text(body: dict) -> str:
    content = body["messages"][-1]["content"]
    return content if isinstance(content, str) else next(p["text"] for p in content if p["type"] == "text")


@pytest.fixture
def fake():
    with FakeOpenAI(model=MODEL) as f:
        yield f


@pytest.fixture
def make_teacher(tmp_path: Path):
    """Teacher over ServerBackend; closes every teacher it made."""
    made: list[Teacher] = []

    def make(*urls: str, cache: str = "cache.sqlite", max_retries: int = 2, timeout_s: float = 10.0,
             max_concurrency: int = 16, retry_cached_failures: bool = False) -> Teacher:
        backend = ServerBackend(list(urls), MODEL, max_concurrency=max_concurrency, request_timeout_s=timeout_s,
                                connect_timeout_s=2.0)
        t = Teacher(backend, ResponseCache(tmp_path / cache), max_retries=max_retries,
                    retry_cached_failures=retry_cached_failures, backoff_s=0.0)
        made.append(t)
        return t

    yield make
    for t in made:
        try:
            t.close()
        except sqlite3.ProgrammingError:
            pass


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# -- cache keys ------------------------------------------------------------------------------------------------

def test_request_key_is_stable_for_identical_inputs():
    a = req("hello", image=PNG)
    b = req("hello", image=bytes(PNG))  # equal bytes, distinct objects
    assert request_key(MODEL, a) == request_key(MODEL, b)
    assert len(request_key(MODEL, a)) == 64


@pytest.mark.parametrize("change", [
    "model", "system_text", "user_text", "role", "image_bytes", "image_added",
    "temperature", "top_p", "max_tokens", "seed", "schema", "schema_removed",
])
def test_request_key_changes_with_every_input(change: str):
    base_model, base = MODEL, req("hello", image=PNG, temperature=0.7, top_p=0.95, max_tokens=160)
    model, other = base_model, base
    if change == "model":
        model = "fake/teacher-8b"
    elif change == "system_text":
        other = TeacherRequest((ChatMessage("system", "You are a tutor."), base.messages[1]), base.sampling,
                               base.schema)
    elif change == "user_text":
        other = req("hellO", image=PNG)
    elif change == "role":
        other = TeacherRequest((ChatMessage("user", "You are a teacher."), base.messages[1]), base.sampling,
                               base.schema)
    elif change == "image_bytes":
        other = req("hello", image=PNG[:-1] + b"\x00")
    elif change == "image_added":
        base = req("hello")
        other = req("hello", image=PNG)
    elif change == "temperature":
        other = req("hello", image=PNG, temperature=0.71)
    elif change == "top_p":
        other = req("hello", image=PNG, top_p=0.9)
    elif change == "max_tokens":
        other = req("hello", image=PNG, max_tokens=161)
    elif change == "seed":
        other = req("hello", image=PNG, seed=6)
    elif change == "schema":
        other = req("hello", image=PNG, schema=OtherAnswer)
    elif change == "schema_removed":
        other = req("hello", image=PNG, schema=None)
    assert request_key(base_model, base) != request_key(model, other)


def test_request_key_tag_is_not_part_of_the_key():
    assert request_key(MODEL, req("hello", tag="a")) == request_key(MODEL, req("hello", tag="b"))


def test_image_bytes_are_hashed_not_embedded_in_the_key():
    big = bytes(range(256)) * 4096  # 1 MiB
    msgs = req("look", image=big).messages
    keyed = canonical_json([m.to_key() for m in msgs])
    assert len(keyed) < 500
    assert ImagePart(big).sha256 in keyed
    assert base64.b64encode(big[:300]).decode()[:100] not in keyed


# -- wire format -----------------------------------------------------------------------------------------------

def test_request_body_carries_model_messages_sampling_and_schema(fake, make_teacher):
    fake.responder = lambda body: good() if "response_format" in body else "free text"
    t = make_teacher(fake.base_url)
    res = t.generate([req("q1", seed=42, temperature=0.3, top_p=0.8, max_tokens=99), req("q2", schema=None)])
    assert [r.value for r in res] == [Answer(text="hi", score=1), "free text"]
    structured, free = sorted(fake.requests, key=user_text)
    assert structured["model"] == MODEL
    assert structured["messages"] == [{"role": "system", "content": "You are a teacher."},
                                      {"role": "user", "content": "q1"}]
    assert (structured["seed"], structured["temperature"], structured["top_p"], structured["max_tokens"]) == \
        (42, 0.3, 0.8, 99)
    fmt = structured["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "Answer"
    assert fmt["json_schema"]["schema"] == Answer.model_json_schema()
    assert "response_format" not in free


def test_image_part_is_sent_as_png_data_url(fake, make_teacher):
    fake.responder = lambda body: good()
    t = make_teacher(fake.base_url)
    [res] = t.generate([req("what is this?", image=PNG)])
    assert res.ok
    [body] = fake.requests
    parts = body["messages"][-1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url"]
    assert parts[0]["text"] == "what is this?"
    url = parts[1]["image_url"]["url"]
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    assert base64.b64decode(url[len(prefix):]) == PNG


# -- cache persistence -----------------------------------------------------------------------------------------

def test_second_teacher_on_same_cache_sends_nothing(fake, make_teacher):
    fake.responder = lambda body: good(user_text(body)) if "response_format" in body else "plain " + user_text(body)
    requests = [req(f"q{i}") for i in range(4)] + [req("free", schema=None), req("pic", image=PNG)]
    first = make_teacher(fake.base_url)
    s1 = TeacherStats()
    r1 = first.generate(requests, s1)
    assert all(r.ok and not r.cached for r in r1)
    assert (s1.requests, s1.cache_hits, s1.sent) == (6, 0, 6)
    assert fake.request_count == 6
    first.close()

    second = make_teacher(fake.base_url)
    s2 = TeacherStats()
    r2 = second.generate(requests, s2)
    assert fake.request_count == 6  # nothing new on the wire
    assert (s2.requests, s2.cache_hits, s2.sent, s2.prompt_tokens) == (6, 6, 0, 0)
    assert all(r.cached for r in r2)
    assert [r.value for r in r2] == [r.value for r in r1]
    assert isinstance(r2[0].value, Answer) and r2[4].value == "plain free"
    assert [r.key for r in r2] == [r.key for r in r1]


def test_cache_is_keyed_by_model(fake, make_teacher, tmp_path):
    fake.responder = lambda body: good()
    make_teacher(fake.base_url).generate([req("q")])
    other = Teacher(ServerBackend([fake.base_url], "another/model"), ResponseCache(tmp_path / "cache.sqlite"),
                    backoff_s=0.0)
    try:
        [res] = other.generate([req("q")])
    finally:
        other.close()
    assert not res.cached
    assert [b["model"] for b in fake.requests] == [MODEL, "another/model"]


# -- retries and failures --------------------------------------------------------------------------------------

@pytest.mark.parametrize("code", [500, 503, 429])
def test_retryable_status_then_success(fake, make_teacher, code):
    fake.script(Reply.status(code), Reply.ok(good("second")))
    stats = TeacherStats()
    [res] = make_teacher(fake.base_url).generate([req("q")], stats)
    assert res.ok and res.value == Answer(text="second", score=1)
    assert res.attempts == 2
    assert (stats.sent, stats.retries, stats.failures) == (2, 1, 0)
    assert fake.request_count == 2
    # a transport retry repeats the same request (same seed)
    assert [b["seed"] for b in fake.requests] == [5, 5]


def test_http_400_is_refused_for_good_recorded_with_its_reason_and_not_retried(fake, make_teacher):
    fake.script(Reply.status(400), Reply.ok(good()))
    stats = TeacherStats()
    [res] = make_teacher(fake.base_url).generate([req("q")], stats)
    assert not res.ok and res.value is None
    assert res.failure == "refused: HTTP 400: fake error 400"  # the server's own message, no endpoint URL
    assert res.attempts == 1
    assert fake.request_count == 1
    assert (stats.sent, stats.retries, stats.failures) == (1, 0, 1)
    assert stats.failure_reasons == {"refused": 1}


@pytest.mark.parametrize("code,kind,cached", [(400, "refused", True), (413, "refused", True), (422, "refused", True),
                                              (401, "transport", False), (404, "transport", False),
                                              (408, "transport", False)])
def test_which_client_errors_are_the_requests_own(fake, make_teacher, code, kind, cached):
    """A 4xx refuses the request itself (cached, never re-sent) unless it is about the endpoint's set-up
    (401/403/404: fixed, the same request must be asked again) or says to retry (408/429)."""
    fake.responder = lambda body: Reply.status(code)
    [res] = make_teacher(fake.base_url, max_retries=0).generate([req("q")])
    assert res.failure.startswith(f"{kind}: HTTP {code}")
    assert (make_teacher(fake.base_url).cache.get(res.key) is not None) == cached


def test_timeout_is_retried_then_recorded(fake, make_teacher):
    fake.responder = lambda body: Reply.sleep(5.0, good())
    stats = TeacherStats()
    t0 = time.monotonic()
    [res] = make_teacher(fake.base_url, timeout_s=0.3, max_retries=2).generate([req("q")], stats)
    elapsed = time.monotonic() - t0
    assert not res.ok
    assert res.failure.startswith("transport: timeout")
    assert res.attempts == 3
    assert fake.request_count == 3
    assert (stats.sent, stats.retries, stats.failures) == (3, 2, 1)
    assert elapsed < 5.0  # the client gave up each time; it did not wait for even one slow answer (5 s)


def test_timeout_then_success(fake, make_teacher):
    fake.script(Reply.sleep(5.0, good("late")), Reply.ok(good("fast")))
    [res] = make_teacher(fake.base_url, timeout_s=0.3).generate([req("q")])
    assert res.ok and res.value.text == "fast" and res.attempts == 2


@pytest.mark.parametrize("bad", [Reply.not_json, Reply.no_choices], ids=["not_json", "no_choices"])
def test_malformed_body_is_retried_then_recorded(fake, make_teacher, bad):
    fake.responder = lambda body: bad()
    stats = TeacherStats()
    [res] = make_teacher(fake.base_url, max_retries=1).generate([req("q")], stats)
    assert not res.ok
    assert res.failure.startswith("transport: malformed response")
    assert res.attempts == 2 and fake.request_count == 2
    assert stats.failure_reasons == {"transport": 1}


def test_malformed_body_then_success(fake, make_teacher):
    fake.script(Reply.not_json(), Reply.ok(good("fine")))
    [res] = make_teacher(fake.base_url).generate([req("q")])
    assert res.ok and res.value.text == "fine" and res.attempts == 2


def test_schema_invalid_then_valid_moves_the_seed(fake, make_teacher):
    fake.script(Reply.ok('{"text": "no score"}'), Reply.ok(good("fixed", 3)))
    stats = TeacherStats()
    [res] = make_teacher(fake.base_url).generate([req("q", seed=5)], stats)
    assert res.ok and res.value == Answer(text="fixed", score=3)
    assert res.attempts == 2 and stats.retries == 1
    seeds = [b["seed"] for b in fake.requests]
    assert seeds[0] == 5 and seeds[1] != 5
    # the retry is otherwise the same request
    assert {k: v for k, v in fake.requests[0].items() if k != "seed"} == \
        {k: v for k, v in fake.requests[1].items() if k != "seed"}


@pytest.mark.parametrize("content,detail", [
    ('{"text": "no score"}', "score"),
    ('{"text": "x", "score": "many"}', "score"),
    ("not json at all", "not JSON"),
])
def test_persistent_schema_invalid_is_recorded(fake, make_teacher, content, detail):
    fake.responder = lambda body: content
    stats = TeacherStats()
    [res] = make_teacher(fake.base_url, max_retries=2).generate([req("q")], stats)
    assert not res.ok and res.value is None
    assert res.failure.startswith("schema:") and detail in res.failure
    assert res.attempts == 3 and fake.request_count == 3
    assert len({b["seed"] for b in fake.requests}) == 3  # every retry tried a new seed
    assert stats.failure_reasons == {"schema": 1}


def test_finish_reason_length_is_truncated(fake, make_teacher):
    fake.responder = lambda body: Reply.truncated()
    [res] = make_teacher(fake.base_url, max_retries=1).generate([req("q")])
    assert not res.ok and res.failure.startswith("truncated")
    assert res.attempts == 2


def test_free_text_truncation_is_a_failure_too(fake, make_teacher):
    fake.responder = lambda body: Reply.truncated("a long rambling answ")
    [res] = make_teacher(fake.base_url, max_retries=0).generate([req("q", schema=None)])
    assert not res.ok and res.failure.startswith("truncated") and res.attempts == 1


def test_mixed_batch_never_raises_and_keeps_request_order(fake, make_teacher):
    behaviours = {
        "ok-slow": lambda: Reply.ok(good("ok-slow"), delay_s=0.3),
        "ok-fast": lambda: Reply.ok(good("ok-fast")),
        "e500": lambda: Reply.status(500),
        "e400": lambda: Reply.status(400),
        "garbage": Reply.not_json,
        "nochoices": Reply.no_choices,
        "invalid": lambda: Reply.ok('{"text": 1}'),
        "length": Reply.truncated,
        "slow": lambda: Reply.sleep(5.0),
        "free": lambda: Reply.ok("free answer", delay_s=0.1),
    }
    fake.responder = lambda body: behaviours[user_text(body)]()
    names = list(behaviours)
    requests = [req(n, schema=None if n == "free" else Answer) for n in names]
    stats = TeacherStats()
    results = make_teacher(fake.base_url, timeout_s=1.5, max_retries=1).generate(requests, stats)
    assert [r.tag for r in results] == names
    by = dict(zip(names, results))
    assert by["ok-slow"].value.text == "ok-slow" and by["ok-fast"].value.text == "ok-fast"
    assert by["free"].value == "free answer"
    assert by["e500"].failure.startswith("transport: HTTP 500")
    assert by["e400"].failure.startswith("refused: HTTP 400") and by["e400"].attempts == 1
    assert by["garbage"].failure.startswith("transport: malformed")
    assert by["nochoices"].failure.startswith("transport: malformed")
    assert by["invalid"].failure.startswith("schema:")
    assert by["length"].failure.startswith("truncated")
    assert by["slow"].failure.startswith("transport: timeout")
    assert stats.failures == 7
    # every request but the 400 and the three good ones was retried once
    assert (stats.requests, stats.retries, stats.sent) == (10, 6, 16)
    assert stats.failure_reasons == {"transport": 4, "refused": 1, "schema": 1, "truncated": 1}
    assert all(r.key == request_key(MODEL, q) for r, q in zip(results, requests))


def test_results_keep_order_when_answers_arrive_reversed(fake, make_teacher):
    n = 6
    fake.responder = lambda body: Reply.ok(good(user_text(body)), delay_s=0.05 * (n - int(user_text(body)[1:])))
    results = make_teacher(fake.base_url).generate([req(f"q{i}") for i in range(n)])
    assert [r.value.text for r in results] == [f"q{i}" for i in range(n)]


def test_model_failures_and_refusals_are_cached_transport_failures_are_not(fake, make_teacher):
    answers = {"invalid": lambda: Reply.ok("{}"), "length": Reply.truncated, "refused": lambda: Reply.status(400),
               "down": lambda: Reply.status(503)}
    fake.responder = lambda body: answers[user_text(body)]()
    requests = [req(n) for n in answers]
    r1 = make_teacher(fake.base_url, max_retries=1).generate(requests)
    assert all(not r.ok for r in r1)
    first_wave = fake.request_count
    assert first_wave == 2 + 2 + 1 + 2

    s2 = TeacherStats()
    r2 = make_teacher(fake.base_url, max_retries=1).generate(requests, s2)
    asked_again = [user_text(b) for b in fake.requests[first_wave:]]
    assert sorted(set(asked_again)) == ["down"]  # only transport failures are asked again
    assert [r.cached for r in r2] == [True, True, True, False]
    assert [r.failure for r in r2[:3]] == [r.failure for r in r1[:3]]
    assert r2[0].attempts == 2  # what the recorded attempt took
    assert s2.cache_hits == 3 and s2.failures == 4

    # the recovery switch asks the cached failures again
    before = fake.request_count
    make_teacher(fake.base_url, max_retries=0, retry_cached_failures=True).generate(requests)
    assert sorted(user_text(b) for b in fake.requests[before:]) == sorted(answers)


def test_retry_cached_failures_asks_again(fake, make_teacher):
    fake.script(Reply.ok("{}"), Reply.ok("{}"), Reply.ok(good("now")))
    r1 = make_teacher(fake.base_url, max_retries=1).generate([req("q")])
    assert r1[0].failure.startswith("schema:")
    [again] = make_teacher(fake.base_url, max_retries=1).generate([req("q")])
    assert again.cached and fake.request_count == 2
    [fixed] = make_teacher(fake.base_url, retry_cached_failures=True).generate([req("q")])
    assert fixed.ok and not fixed.cached and fixed.value.text == "now"
    [after] = make_teacher(fake.base_url).generate([req("q")])
    assert after.cached and after.ok and fake.request_count == 3


# -- several endpoints, concurrency ----------------------------------------------------------------------------

def test_requests_are_spread_over_base_urls():
    with FakeOpenAI(MODEL, responder=lambda b: good()) as a, FakeOpenAI(MODEL, responder=lambda b: good()) as b:
        backend = ServerBackend([a.base_url, b.base_url + "/"], MODEL)
        raws = backend.complete([req(f"q{i}") for i in range(8)])
        assert all(r.error is None for r in raws)
        assert (a.request_count, b.request_count) == (4, 4)


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("dead_first", [True, False])
def test_transport_retry_goes_to_another_endpoint(tmp_path, n, dead_first):
    """One endpoint down: a retried request must not be pinned to the dead one (one retry is enough)."""
    with FakeOpenAI(MODEL, responder=lambda b: Reply.status(503)) as down, \
            FakeOpenAI(MODEL, responder=lambda b: good(user_text(b))) as up:
        urls = [down.base_url, up.base_url] if dead_first else [up.base_url, down.base_url]
        t = Teacher(ServerBackend(urls, MODEL), ResponseCache(tmp_path / "c.sqlite"), max_retries=1, backoff_s=0.0)
        try:
            results = t.generate([req(f"q{i}") for i in range(n)])
        finally:
            t.close()
        assert [r.value.text if r.ok else r.failure for r in results] == [f"q{i}" for i in range(n)]
        assert up.request_count == n  # each request answered once, by the live endpoint
        assert down.request_count == ((n + 1) // 2 if dead_first else n // 2)  # and each tried the dead one once


@pytest.mark.parametrize("limit", [1, 2])
def test_concurrency_is_bounded(fake, make_teacher, limit):
    fake.responder = lambda body: Reply.ok(good(), delay_s=0.1)
    results = make_teacher(fake.base_url, max_concurrency=limit).generate([req(f"q{i}") for i in range(8)])
    assert all(r.ok for r in results)
    assert fake.request_count == 8
    assert fake.max_in_flight == limit


def test_an_engine_the_pipeline_starts_gets_no_more_requests_than_its_batch(fake, tmp_path):
    """Requests past the engine's batch wait in the client (where the priority queue orders them), not in the
    engine's queue, where their timeout would count the wait."""
    from persona_factory.config import TeacherSettings

    fake.responder = lambda body: Reply.ok(good(), delay_s=0.1)
    settings = TeacherSettings(max_concurrency=64, max_num_seqs=3)
    backend = ServerBackend.from_settings(settings, [fake.base_url], MODEL, batch=settings.max_num_seqs)
    teacher = Teacher(backend, ResponseCache(tmp_path / "c.sqlite"))
    try:
        assert all(r.ok for r in teacher.generate([req(f"q{i}") for i in range(12)]))
    finally:
        teacher.close()
    assert fake.max_in_flight == 3
    assert ServerBackend.from_settings(settings, [fake.base_url], MODEL).max_concurrency == 64  # remote: as set


def test_fake_sees_parallel_requests_when_allowed(fake, make_teacher):
    """Guards the concurrency test: the fake's in-flight count does register overlap."""
    fake.responder = lambda body: Reply.ok(good(), delay_s=0.1)
    make_teacher(fake.base_url, max_concurrency=8).generate([req(f"q{i}") for i in range(8)])
    assert fake.max_in_flight > 2


def test_concurrency_bound_holds_per_call_across_two_endpoints(make_teacher):
    slow = lambda body: Reply.ok(good(), delay_s=0.1)  # noqa: E731
    both = InFlight()
    with FakeOpenAI(MODEL, responder=slow, shared_in_flight=both) as a, \
            FakeOpenAI(MODEL, responder=slow, shared_in_flight=both) as b:
        results = make_teacher(a.base_url, b.base_url, max_concurrency=2).generate([req(f"q{i}") for i in range(8)])
        assert all(r.ok for r in results)
        assert (a.request_count, b.request_count) == (4, 4)
        assert both.max == 2


# -- token accounting ------------------------------------------------------------------------------------------

def test_tokens_are_summed_including_retries(fake, make_teacher, tmp_path):
    fake.script(
        Reply.ok('{"text": "x"}', prompt_tokens=100, completion_tokens=10),  # schema miss, retried
        Reply.ok(good(), prompt_tokens=100, completion_tokens=12),
        Reply.status(500),  # no usage
        Reply.ok(good(), prompt_tokens=50, completion_tokens=5),
    )
    stats = TeacherStats()
    t = make_teacher(fake.base_url, max_concurrency=1)  # one at a time: the script is consumed in order
    results = t.generate([req("a")], stats)
    results += t.generate([req("b")], stats)
    assert all(r.ok for r in results)
    assert (stats.prompt_tokens, stats.completion_tokens) == (250, 27)
    assert (stats.requests, stats.sent, stats.retries) == (2, 4, 2)
    meta = stats.as_metadata()
    assert meta["teacher_prompt_tokens"] == 250 and meta["teacher_completion_tokens"] == 27
    t.cache.close()
    con = sqlite3.connect(tmp_path / "cache.sqlite")
    rows = con.execute("SELECT tag, attempts, prompt_tokens, completion_tokens FROM responses ORDER BY tag").fetchall()
    con.close()
    assert rows == [("a", 2, 200, 22), ("b", 2, 50, 5)]


def test_cache_hits_cost_no_tokens(fake, make_teacher):
    fake.responder = lambda body: Reply.ok(good(), prompt_tokens=30, completion_tokens=3)
    make_teacher(fake.base_url).generate([req("q")])
    stats = TeacherStats()
    make_teacher(fake.base_url).generate([req("q")], stats)
    assert (stats.cache_hits, stats.prompt_tokens, stats.completion_tokens, stats.sent) == (1, 0, 0, 0)


# -- ServerBackend.check ---------------------------------------------------------------------------------------

def test_check_passes_when_model_is_served(fake):
    ServerBackend([fake.base_url], MODEL).check()
    assert fake.model_listings == 1


def test_check_unreachable_url_names_base_urls_fast():
    url = f"http://127.0.0.1:{closed_port()}/v1"
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as err:
        ServerBackend([url], MODEL).check()
    assert time.monotonic() - t0 < 10
    assert "teacher.base_urls" in str(err.value) and url in str(err.value)


def test_check_second_url_unreachable(fake):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    with pytest.raises(ConfigError, match="teacher.base_urls"):
        ServerBackend([fake.base_url, url], MODEL).check()


def test_check_model_not_served_names_teacher_model():
    with FakeOpenAI("some/other-model") as other:
        with pytest.raises(ConfigError) as err:
            ServerBackend([other.base_url], MODEL).check()
    msg = str(err.value)
    assert "teacher.model" in msg and MODEL in msg and "some/other-model" in msg


def test_check_not_openai_compatible_names_base_urls(fake):
    # a server that answers, but not under /v1 (e.g. base URL without the /v1 suffix)
    with pytest.raises(ConfigError, match="teacher.base_urls"):
        ServerBackend([fake.base_url[: -len("/v1")]], MODEL).check()


def test_server_backend_needs_a_base_url():
    with pytest.raises(ConfigError, match="teacher.base_urls"):
        ServerBackend([], MODEL)


def test_unreachable_endpoint_at_generate_fails_the_call(make_teacher, tmp_path):
    """An endpoint that accepts no connection is infrastructure, not a bad answer: the call raises (naming the
    setting) instead of returning a batch of empty rows, and nothing is cached, so a re-run asks again."""
    t = make_teacher(f"http://127.0.0.1:{closed_port()}/v1", max_retries=1)
    stats = TeacherStats()
    with pytest.raises(TeacherUnavailable, match="teacher.base_urls"):
        t.generate([req("q"), req("r")], stats)
    assert stats.sent == 4 and t.cache.count() == 0


def test_one_dead_endpoint_among_live_ones_is_routed_around(fake, make_teacher):
    fake.responder = lambda body: good()
    t = make_teacher(f"http://127.0.0.1:{closed_port()}/v1", fake.base_url, max_retries=1)
    results = t.generate([req(f"q{i}") for i in range(4)])
    assert all(r.ok for r in results)


# -- schemas the grammar backend can compile ----------------------------------------------------------------------


def test_a_pattern_with_length_bounds_is_refused_before_sending():
    """vLLM's xgrammar backend answers 400 to a string with both a pattern and length bounds; the request fails
    where it is built, naming the field, instead of at the server."""
    from typing import Annotated

    from pydantic import BaseModel, StringConstraints

    class Bounded(BaseModel):
        name: Annotated[str, StringConstraints(pattern=r"^[A-Z][a-z]+$", max_length=20)]

    class InPattern(BaseModel):
        name: Annotated[str, StringConstraints(pattern=r"^[A-Z][a-z]{1,19}$")]

    with pytest.raises(ValueError, match="Bounded.properties.name"):
        TeacherRequest((ChatMessage("user", "x"),), Sampling(), Bounded).json_schema()
    assert TeacherRequest((ChatMessage("user", "x"),), Sampling(), InPattern).json_schema()["properties"]["name"]


def test_the_first_failure_reason_is_kept_for_the_report(fake, make_teacher):
    fake.script(Reply.status(400), Reply.status(400))
    stats = TeacherStats()
    make_teacher(fake.base_url).generate([req("q1"), req("q2")], stats)
    assert stats.failures == 2 and stats.first_failure.startswith("refused: HTTP 400")


# -- the shared embedded server ---------------------------------------------------------------------------------


def test_runs_find_a_shared_server_only_when_it_serves_their_model():
    from persona_factory.config import TeacherSettings
    from persona_factory.teacher.embedded import running_server

    with FakeOpenAI("SmolLM2-135M-Instruct") as shared:
        settings = TeacherSettings(embedded_port=shared.port)
        assert running_server(settings, "SmolLM2-135M-Instruct") == shared.base_url.rstrip("/")
        assert running_server(settings, "another-model") is None
    assert running_server(TeacherSettings(embedded_port=closed_port()), "SmolLM2-135M-Instruct") is None


def test_a_bad_answer_is_asked_again_while_slower_requests_still_run(fake, make_teacher):
    """Over HTTP each request retries on its own: the retry of a failed answer goes out while the other requests
    of the call are still being answered, so the engine does not wait for a round's slowest request."""
    retried = threading.Event()
    waited: list[bool] = []

    def respond(body):
        if body["messages"][-1]["content"] == "q0":
            if body["seed"] == 5:
                return Reply.ok("this is not json")
            retried.set()
            return good("retried")
        waited.append(retried.wait(10))  # the slow requests answer only once the retry has arrived
        return good()

    fake.responder = respond
    results = make_teacher(fake.base_url).generate([req(f"q{i}") for i in range(4)])
    assert all(r.ok for r in results) and results[0].value.text == "retried" and results[0].attempts == 2
    assert waited == [True, True, True]


def test_the_engine_gets_a_block_size_only_when_one_is_set():
    """`teacher.block_size` reaches the engine's command line; unset, the engine keeps its own default."""
    from persona_factory.config import TeacherSettings
    from persona_factory.teacher.embedded import EmbeddedServer

    def command(settings: TeacherSettings) -> list[str]:
        server = EmbeddedServer(settings, Path("server.log"))
        server.model_path, server.served_name = "model-folder", "model"
        return server.command()

    with_blocks = command(TeacherSettings(block_size=32))
    assert with_blocks[with_blocks.index("--block-size") + 1] == "32"
    assert "--block-size" not in command(TeacherSettings())
    assert load_config("tiny").teacher.block_size == 32  # the demo's CPU engine shares its prompts' starts
    with pytest.raises(ConfigError, match=r"teacher\.block_size = 48: .*multiple of 32"):
        command(TeacherSettings(block_size=48))  # this machine's CPU build refuses it before an engine starts


def test_the_model_id_is_known_without_preparing_anything(tmp_path):
    from persona_factory.config import TeacherSettings
    from persona_factory.teacher.embedded import EMBEDDED_SERVED_NAME, model_id

    folder = tmp_path / "my-teacher"
    folder.mkdir()
    assert model_id(TeacherSettings()) == EMBEDDED_SERVED_NAME
    assert model_id(TeacherSettings(model=f"{folder}/../my-teacher/.")) == "my-teacher"
    assert model_id(TeacherSettings(model="Qwen/Qwen2.5-VL-7B-Instruct")) == "Qwen/Qwen2.5-VL-7B-Instruct"


# ---------------------------------------------------------------------------------------------- utilization


def test_full_batch_probe_sends_every_sequence_at_once_and_counts_reported_tokens():
    from persona_factory.teacher.utilization import full_batch_throughput, probe_prompts

    with FakeOpenAI(MODEL, responder=lambda body: Reply.ok("1 2 3", completion_tokens=body["max_tokens"],
                                                            delay_s=0.2)) as fake:
        probe = full_batch_throughput(fake.base_url, MODEL, probe_prompts(8), "run-1", tokens=40)
        bodies = fake.requests
    assert fake.max_in_flight == 8  # the batch is full: all sequences in flight together
    assert all(b["ignore_eos"] and b["max_tokens"] == 40 for b in bodies)  # each writes exactly `tokens`
    assert probe.completion_tokens == 8 * 40 and probe.sequences == 8
    assert probe.seconds >= 0.2  # timed from the first request to the last answer (concurrency: max_in_flight)
    assert probe.tokens_per_s == pytest.approx(320 / probe.seconds)
    assert probe.prompt_tokens == 8 * 11  # as the server counted them
    assert sorted(b["messages"][0]["content"] for b in bodies)[:2] == ["Count upwards from 0.",
                                                                        "Count upwards from 1."]
    with FakeOpenAI(MODEL, responder=lambda body: Reply.ok("1 2 3", completion_tokens=body["max_tokens"])) as fake:
        full_batch_throughput(fake.base_url, MODEL, probe_prompts(2, "Maria is a nurse."), "run-1", tokens=40)
        bodies = fake.requests
    # a longer prompt whose first line differs per sequence, so none reuses another's cached prefix
    assert sorted(b["messages"][0]["content"] for b in bodies) == ["Count upwards from 0.\nMaria is a nurse.",
                                                                    "Count upwards from 1.\nMaria is a nurse."]


def test_utilization_is_the_runs_tokens_over_what_a_full_batch_makes_in_its_wall_time(tmp_path):
    from persona_factory.teacher.utilization import Throughput, end_to_end_utilization, run_completion_tokens

    metadata = {"personas": {"teacher_completion_tokens": 1000, "teacher_requests": 4},
                "dialogues": {"teacher_completion_tokens": 20000, "prefetched_teacher_completion_tokens": 9000},
                "memory_targets": {"teacher_completion_tokens": 0, "teacher_cache_hits": 300},
                "quality_report": {"rows": 12}}
    tokens = run_completion_tokens(metadata)
    assert tokens == 30000
    assert end_to_end_utilization(tokens, 500.0, 100.0) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        end_to_end_utilization(tokens, 0.0, 100.0)
    probe = Throughput("run-1", 32, 2048, 16.0)
    assert probe.tokens_per_s == 128.0
    path = tmp_path / "logs" / "teacher_throughput.json"
    probe.save(path)
    assert Throughput.load(path, "run-1") == probe
    assert Throughput.load(path, "run-2") is None  # an earlier run's probe says nothing about this one
    assert Throughput.load(tmp_path / "missing.json", "run-1") is None
