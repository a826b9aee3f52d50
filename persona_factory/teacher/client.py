"""The one teacher client: cache, bounded retries, schema validation and accounting over any backend."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from typing import Awaitable, Callable, Protocol, Sequence, TypeVar

from pydantic import ValidationError

from ..config import ConfigError, UserError
from .cache import PostgresResponseCache, ResponseCache, request_key
from .types import REFUSED, TRANSPORT, RawCompletion, TeacherRequest, TeacherResult, TeacherStats, failure_kind


T = TypeVar("T")


class TeacherUnavailable(UserError):
    """No request of a call could even connect, or every request of an asset failed: the endpoint or the teacher
    settings are wrong (not one bad answer), so the asset fails instead of producing empty data; a re-run resumes
    from the cache."""


class Backend(Protocol):
    """Sends requests to a model. A backend that also offers `session()` (an async context yielding
    `call(request)`, as the HTTP backend does) answers each request on its own, so a request is sent the moment it
    is asked and retried the moment its answer fails; a batch backend (the in-process engine) gets together the
    requests asked while the others wait, and sends them as one batch."""

    model_id: str

    def complete(self, requests: Sequence[TeacherRequest]) -> list[RawCompletion]: ...

    def close(self) -> None: ...


Call = Callable[[TeacherRequest, int], Awaitable[RawCompletion]]  # (request, priority: lower goes first)


class Batcher:
    """A per-request `call` over a batch backend: what every task of the event loop asks before they all wait is
    sent as one `complete` batch; what they ask meanwhile goes in the next one, retries included."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self._pending: list[tuple[TeacherRequest, asyncio.Future]] = []
        self._sending: asyncio.Task | None = None

    async def call(self, request: TeacherRequest, priority: int = 0) -> RawCompletion:
        """A batch has no order to keep: the priority does not matter here."""
        answer = asyncio.get_running_loop().create_future()
        self._pending.append((request, answer))
        if self._sending is None:
            self._sending = asyncio.create_task(self._send())
        return await answer

    async def _send(self) -> None:
        try:
            while self._pending:
                asked = -1
                while asked != len(self._pending):  # until every ready task has asked what it will ask
                    asked = len(self._pending)
                    await asyncio.sleep(0)
                batch, self._pending = self._pending, []
                # the engine call blocks the loop: every task is waiting for an answer of this batch or the next
                for (_, answer), raw in zip(batch, self.backend.complete([r for r, _ in batch])):
                    answer.set_result(raw)
        except BaseException as e:
            for _, answer in self._pending:
                answer.set_exception(e)
            raise
        finally:
            self._sending = None


@dataclasses.dataclass
class _Pending:
    """An uncached request on its way to a value or a recorded failure."""

    request: TeacherRequest
    result: TeacherResult
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reason: str = ""  # why the last attempt failed
    done: bool = False

    def attempt(self, n: int) -> TeacherRequest:
        """What attempt n sends: the same request after a transport error (so it is routed elsewhere), else, since
        a bad answer under the same seed would repeat itself, the request with a moved seed."""
        if n == 0 or failure_kind(self.reason) == TRANSPORT:
            return self.request
        return dataclasses.replace(self.request, sampling=self.request.sampling.with_seed(
            self.request.sampling.seed + 7919 * n))


def validate_completion(request: TeacherRequest, raw: RawCompletion) -> tuple[object | None, str | None]:
    """(value, None) when the completion is usable, else (None, reason)."""
    if raw.error is not None:
        return None, f"{REFUSED if raw.refused else TRANSPORT}: {raw.error}"
    if raw.finish_reason == "length":
        return None, "truncated: output hit max_tokens"
    if request.schema is None:
        return raw.text, None
    try:
        return request.schema.model_validate(json.loads(raw.text)), None
    except json.JSONDecodeError as e:
        return None, f"schema: output is not JSON ({e.msg})"
    except ValidationError as e:
        first = e.errors()[0]
        return None, f"schema: {'.'.join(map(str, first['loc'])) or '<root>'}: {first['msg']}"


class Teacher:
    """generate() never raises for a bad answer: every request comes back with a value or a recorded failure.

    The backend may be given as a connect function: it is called on the first cache miss, so a run whose every
    request is already answered never starts an engine.
    """

    def __init__(self, backend: Backend | Callable[[], Backend], cache: ResponseCache | PostgresResponseCache, *,
                 model_id: str | None = None, max_retries: int = 2, retry_cached_failures: bool = False,
                 backoff_s: float = 0.5):
        if callable(backend):
            if model_id is None:
                raise ValueError("a teacher connected lazily needs its model_id up front (cache keys use it)")
            self._connect, self._backend = backend, None
        else:
            self._connect, self._backend = None, backend
        self._model_id = model_id or backend.model_id  # type: ignore[union-attr]
        self.cache = cache
        self.max_retries = max_retries
        self.retry_cached_failures = retry_cached_failures
        self.backoff_s = backoff_s
        # the event loop whose connection to the backend is open, and that connection (see `run`)
        self._opened: tuple[asyncio.AbstractEventLoop, asyncio.Task[Call]] | None = None
        self._exit: contextlib.AsyncExitStack | None = None

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = self._connect()  # type: ignore[misc]
            if self._backend.model_id != self._model_id:
                raise ConfigError(f"the teacher serves {self._backend.model_id!r}, not the configured "
                                  f"{self._model_id!r} (setting `teacher.model`)")
        return self._backend

    def generate(self, requests: Sequence[TeacherRequest], stats: TeacherStats | None = None) -> list[TeacherResult]:
        """Every request's result, in order (blocking)."""
        return self.run(self.agenerate(requests, stats))

    def run(self, main: Awaitable[T]) -> T:
        """Runs `main`, whose tasks may call `agenerate` concurrently, in one event loop: they share one connection
        pool and one concurrency bound, so the engine sees all of them at once."""
        async def scoped() -> T:
            try:
                return await main
            finally:
                await self._close_transport()

        return asyncio.run(scoped())

    async def agenerate(self, requests: Sequence[TeacherRequest], stats: TeacherStats | None = None,
                        priority: int = 0) -> list[TeacherResult]:
        """Like `generate`, inside `run`. The results are keyed by request: the order answers arrive in never
        changes them. When more requests wait than may be in flight, lower `priority` values are sent first."""
        stats = stats if stats is not None else TeacherStats()
        results: list[TeacherResult] = []
        todo: list[_Pending] = []
        stats.requests += len(requests)
        keys = [request_key(self.model_id, req) for req in requests]
        cached = self.cache.get_many(keys)  # one look-up per call: the cache may be a remote database
        for req, key in zip(requests, keys):
            hit = cached.get(key)
            if hit is not None and (hit["ok"] or not self.retry_cached_failures):
                stats.cache_hits += 1
                value = None
                if hit["ok"]:
                    value = req.schema.model_validate(hit["payload"]) if req.schema else hit["payload"]
                else:
                    stats.count_failure(hit["failure"])
                results.append(TeacherResult(key, req.tag, value, hit["failure"], hit["attempts"], cached=True))
            else:
                results.append(TeacherResult(key, req.tag))
                todo.append(_Pending(req, results[-1]))
        if todo:
            call = await self._transport()
            await asyncio.gather(*(self._settle(p, call, stats, priority) for p in todo))
        if results and all(r.unreachable and not r.ok for r in results):
            raise TeacherUnavailable(f"the teacher was unreachable for all {len(results)} requests: {results[0].failure} "
                                     "(check `teacher.base_urls` / the embedded server log)")
        return results

    async def _transport(self) -> Call:
        """The running event loop's way to the backend, opened once, on its first uncached request."""
        loop = asyncio.get_running_loop()
        if self._opened is None or self._opened[0] is not loop:
            self._opened = (loop, loop.create_task(self._open()))
        return await self._opened[1]

    async def _open(self) -> Call:
        backend = self.backend
        if not hasattr(backend, "session"):
            return Batcher(backend).call
        self._exit = contextlib.AsyncExitStack()
        return await self._exit.enter_async_context(backend.session())  # type: ignore[attr-defined]

    async def _close_transport(self) -> None:
        exit_stack, self._exit, self._opened = self._exit, None, None
        if exit_stack is not None:
            await exit_stack.aclose()

    async def _settle(self, p: _Pending, call: Call, stats: TeacherStats, priority: int) -> None:
        """Sends a request until it has a value or a final failure, each retry as soon as the answer before failed."""
        for n in range(self.max_retries + 1):
            if n:
                stats.retries += 1
                if failure_kind(p.reason) == TRANSPORT:
                    await asyncio.sleep(self.backoff_s * 2 ** (n - 1))
            self._absorb(p, await call(p.attempt(n), priority), n, stats)
            if p.done:
                return

    def _absorb(self, p: _Pending, raw: RawCompletion, n: int, stats: TeacherStats) -> None:
        """Accounts for attempt n's answer: a value is cached, a final failure recorded, anything else retried."""
        res = p.result
        res.attempts, res.unreachable = n + 1, raw.unreachable
        p.prompt_tokens += raw.prompt_tokens
        p.completion_tokens += raw.completion_tokens
        stats.sent += 1
        stats.prompt_tokens += raw.prompt_tokens
        stats.completion_tokens += raw.completion_tokens
        value, reason = validate_completion(p.request, raw)
        if reason is None:
            res.value, p.done = value, True
            payload = value.model_dump(mode="json") if p.request.schema else value  # type: ignore[union-attr]
            self.cache.put(res.key, self.model_id, res.tag, payload=payload, attempts=res.attempts,
                           prompt_tokens=p.prompt_tokens, completion_tokens=p.completion_tokens)
            return
        p.reason = reason
        if (raw.error is not None and not raw.retryable or raw.error is None and not p.request.retry_answers
                or n == self.max_retries):
            p.done = True
            self._record_failure(res, reason, p.prompt_tokens, p.completion_tokens, stats)

    def _record_failure(self, res: TeacherResult, reason: str, prompt_tokens: int, completion_tokens: int,
                        stats: TeacherStats) -> None:
        res.failure = reason
        stats.count_failure(reason)
        if failure_kind(reason) == TRANSPORT:
            return  # lost on the way, not an answer nor a refusal: a later run asks again
        self.cache.put(res.key, self.model_id, res.tag, failure=reason, attempts=res.attempts,
                       prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
        self.cache.close()
