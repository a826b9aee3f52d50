"""A scriptable OpenAI-compatible chat-completions server on 127.0.0.1, speaking the protocol the way vLLM does.

Real HTTP over loopback (stdlib ThreadingHTTPServer in a thread), so the real client code — httpx, timeouts,
status codes, JSON parsing — is what gets exercised.

    with FakeOpenAI(model="m", responder=lambda body: '{"a": 1}') as fake:
        fake.script(Reply.status(503), Reply.ok("{...}"))   # consumed by the next requests, in order
        backend = ServerBackend([fake.base_url], "m")
        ...
        fake.requests        # every chat-completions body received (parsed JSON), in arrival order
        fake.max_in_flight   # the most requests it was handling at the same time (InFlight can be shared)

Each POST /v1/chat/completions takes the next scripted `Reply` from the plan; when the plan is empty it asks
`responder(body)`, which returns either the content string (answered OK) or a `Reply` (so a test can key any
behaviour on the request's content). With neither, the request gets HTTP 500 and is counted in `unscripted`.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


class _Server(ThreadingHTTPServer):
    # the client opens up to max_concurrency connections at once; the stdlib's listen backlog of 5 would reset
    # the rest (uvicorn, which vllm serve runs on, listens with a backlog of 2048)
    request_queue_size = 2048
    daemon_threads = True


@dataclass(frozen=True)
class Reply:
    """One scripted behaviour of the fake for one request."""

    kind: str = "ok"  # ok | status | sleep | not_json | no_choices
    content: str = ""
    finish_reason: str = "stop"
    status_code: int = 200
    prompt_tokens: int = 11
    completion_tokens: int = 7
    delay_s: float = 0.0  # wait before answering (any kind)

    @classmethod
    def ok(cls, content: str, *, prompt_tokens: int = 11, completion_tokens: int = 7,
           delay_s: float = 0.0) -> "Reply":
        return cls("ok", content, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, delay_s=delay_s)

    @classmethod
    def truncated(cls, content: str = '{"text": "cut sho', *, prompt_tokens: int = 11,
                  completion_tokens: int = 7) -> "Reply":
        """finish_reason "length": the output hit max_tokens."""
        return cls("ok", content, finish_reason="length", prompt_tokens=prompt_tokens,
                   completion_tokens=completion_tokens)

    @classmethod
    def status(cls, code: int) -> "Reply":
        """An HTTP error (500/503/429/400...) with an OpenAI-style error body."""
        return cls("status", status_code=code)

    @classmethod
    def sleep(cls, seconds: float, content: str = "too late") -> "Reply":
        """Answer OK, but only after `seconds` (longer than the client's timeout)."""
        return cls("ok", content, delay_s=seconds)

    @classmethod
    def not_json(cls) -> "Reply":
        """HTTP 200 with a body that is not JSON."""
        return cls("not_json")

    @classmethod
    def no_choices(cls) -> "Reply":
        """HTTP 200, valid JSON, but no `choices`."""
        return cls("no_choices")


Responder = Callable[[dict[str, Any]], "str | Reply"]


class InFlight:
    """Counts requests being handled at once; one instance can be shared by several fakes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.max = 0

    def enter(self) -> None:
        with self._lock:
            self.now += 1
            self.max = max(self.max, self.now)

    def leave(self) -> None:
        with self._lock:
            self.now -= 1


class FakeOpenAI:
    def __init__(self, model: str = "fake-model", responder: Responder | None = None,
                 served_models: list[str] | None = None, shared_in_flight: InFlight | None = None,
                 api_key: str | None = None):
        self.model = model
        self.api_key = api_key  # when set, requests without `Authorization: Bearer <api_key>` get HTTP 401
        self.served_models = served_models if served_models is not None else [model]
        self.responder = responder
        self.requests: list[dict[str, Any]] = []  # chat-completions bodies, in arrival order
        self.model_listings = 0  # GET /v1/models calls
        self.unscripted = 0
        self._flight = InFlight()
        self._shared_flight = shared_in_flight  # also counted there (concurrency over several endpoints)
        self._plan: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- scripting ---------------------------------------------------------------------------------------------
    def script(self, *replies: Reply) -> "FakeOpenAI":
        with self._lock:
            self._plan.extend(replies)
        return self

    @property
    def pending_script(self) -> int:
        with self._lock:
            return len(self._plan)

    @property
    def in_flight(self) -> int:
        return self._flight.now

    @property
    def max_in_flight(self) -> int:
        """The most requests this fake was handling at the same time (received, not yet answered)."""
        return self._flight.max

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def reset_stats(self) -> None:
        with self._lock:
            self.requests.clear()
            self.model_listings = 0
            self.unscripted = 0
        self._flight.max = self._flight.now

    # -- lifecycle ---------------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "FakeOpenAI":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                fake._get(self)

            def do_POST(self) -> None:
                fake._post(self)

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fake-openai-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes handlers that are sleeping past the client's timeout
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- protocol ----------------------------------------------------------------------------------------------
    def _refused_key(self, h: BaseHTTPRequestHandler) -> bool:
        if self.api_key is None or h.headers.get("Authorization") == f"Bearer {self.api_key}":
            return False
        _send(h, 401, {"error": {"message": "Unauthorized", "type": "AuthenticationError", "code": 401}})
        return True

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        if self._refused_key(h):
            return
        if h.path.rstrip("/") == "/v1/models":
            with self._lock:
                self.model_listings += 1
            _send(h, 200, {"object": "list", "data": [
                {"id": m, "object": "model", "owned_by": "vllm"} for m in self.served_models]})
        else:
            _send(h, 404, {"error": {"message": f"no route {h.path}", "type": "NotFoundError", "code": 404}})

    def _post(self, h: BaseHTTPRequestHandler) -> None:
        if self._refused_key(h):
            return
        if h.path.rstrip("/") != "/v1/chat/completions":
            _send(h, 404, {"error": {"message": f"no route {h.path}", "type": "NotFoundError", "code": 404}})
            return
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            _send(h, 400, {"error": {"message": "request body is not JSON", "type": "BadRequestError"}})
            return
        flights = [f for f in (self._flight, self._shared_flight) if f is not None]
        with self._lock:
            self.requests.append(body)
            reply = self._plan.popleft() if self._plan else None
        for f in flights:
            f.enter()
        try:
            if reply is None:
                reply = self._from_responder(body)
            if reply.delay_s:
                self._stop.wait(reply.delay_s)
        finally:
            # leave before answering: once the client has the answer it may send the next request at once
            for f in flights:
                f.leave()
        try:
            self._answer(h, body, reply)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout) before the answer came

    def _from_responder(self, body: dict[str, Any]) -> Reply:
        if self.responder is None:
            with self._lock:
                self.unscripted += 1
            return Reply.status(500)
        out = self.responder(body)
        return out if isinstance(out, Reply) else Reply.ok(out)

    def _answer(self, h: BaseHTTPRequestHandler, body: dict[str, Any], reply: Reply) -> None:
        if reply.kind == "status":
            _send(h, reply.status_code, {"object": "error", "message": f"fake error {reply.status_code}",
                                         "type": "BadRequestError" if reply.status_code == 400 else "ServerError",
                                         "code": reply.status_code})
        elif reply.kind == "not_json":
            _send_raw(h, 200, b"<html>502 upstream hiccup</html>", "application/json")
        elif reply.kind == "no_choices":
            _send(h, 200, {"id": "chatcmpl-fake", "object": "chat.completion", "model": body.get("model"),
                           "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": 0}})
        else:
            _send(h, 200, {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.content},
                             "logprobs": None, "finish_reason": reply.finish_reason}],
                "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                          "total_tokens": reply.prompt_tokens + reply.completion_tokens},
            })


def _send(h: BaseHTTPRequestHandler, code: int, obj: Any) -> None:
    _send_raw(h, code, json.dumps(obj).encode(), "application/json")


def _send_raw(h: BaseHTTPRequestHandler, code: int, data: bytes, content_type: str) -> None:
    h.send_response(code)
    h.send_header("Content-Type", content_type)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)
    h.wfile.flush()
