"""The teacher's request/response vocabulary, shared by both backends."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel


@dataclass(frozen=True)
class ImagePart:
    """An image inside a chat message; the cache key uses its content hash, the wire format its bytes."""

    png: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.png).hexdigest()

    def data_url(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode()


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str | tuple[str | ImagePart, ...]

    def parts(self) -> tuple[str | ImagePart, ...]:
        return (self.content,) if isinstance(self.content, str) else self.content

    def to_openai(self) -> dict[str, Any]:
        if isinstance(self.content, str):
            return {"role": self.role, "content": self.content}
        rendered = [
            {"type": "image_url", "image_url": {"url": p.data_url()}}
            if isinstance(p, ImagePart)
            else {"type": "text", "text": p}
            for p in self.content
        ]
        return {"role": self.role, "content": rendered}

    def to_key(self) -> dict[str, Any]:
        """Like to_openai, with image bytes replaced by their sha256 so keys stay small and exact."""
        return {
            "role": self.role,
            "content": [{"image_sha256": p.sha256} if isinstance(p, ImagePart) else {"text": p} for p in self.parts()],
        }


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 160
    seed: int = 0

    def with_seed(self, seed: int) -> "Sampling":
        return Sampling(self.temperature, self.top_p, self.max_tokens, seed)


@dataclass(frozen=True)
class TeacherRequest:
    messages: tuple[ChatMessage, ...]
    sampling: Sampling
    schema: type[BaseModel] | None = None  # structured output; None = free text
    tag: str = ""  # what the request is for (e.g. "persona:p_1a2b"), kept with failures
    # ask again after an invalid or truncated answer; False where the caller has a cheaper fallback of its own
    # (transport errors are retried either way)
    retry_answers: bool = True

    def json_schema(self) -> dict[str, Any] | None:
        return None if self.schema is None else grammar_schema(self.schema)

    @property
    def owner(self) -> str:
        return tag_owner(self.tag)


def tag_owner(tag: str) -> str:
    """Whom a request is for, from its tag "<kind>:<owner>[:...]" (a persona, or the seed it is made from);
    empty when the tag names none."""
    parts = tag.split(":")
    return parts[1] if len(parts) > 1 else ""


@lru_cache(maxsize=4096)
def _schema_json(model: type[BaseModel]) -> str:
    schema = model.model_json_schema()
    for path, node in _strings(schema, model.__name__):
        if ("pattern" in node or "format" in node) and ("minLength" in node or "maxLength" in node):
            raise ValueError(f"{path} combines a pattern with length bounds, which vLLM's xgrammar backend refuses; "
                             "put the bounds in the pattern")
    return json.dumps(schema)


@lru_cache(maxsize=4096)
def answer_chars(model: type[BaseModel]) -> int:
    """The longest JSON answer the model's schema admits, in characters (keys, quotes and commas included)."""
    return schema_chars(json.loads(_schema_json(model)))


def schema_chars(schema: dict[str, Any]) -> int:
    """The longest JSON answer a JSON schema (as pydantic writes them) admits, in characters."""
    defs = schema.get("$defs", {})

    def size(node: dict[str, Any]) -> int:
        if "$ref" in node:
            return size(defs[node["$ref"].split("/")[-1]])
        for key in ("anyOf", "oneOf"):
            if key in node:
                return max(size(n) for n in node[key])
        if "enum" in node:
            return max(len(json.dumps(v)) for v in node["enum"])
        kind = node.get("type")
        if kind == "object":
            props = node.get("properties", {})
            return 2 + sum(len(k) + 4 + size(v) for k, v in props.items())
        if kind == "array":
            if "prefixItems" in node:
                return 2 + sum(size(n) + 1 for n in node["prefixItems"])
            return 2 + node.get("maxItems", 8) * (size(node.get("items", {"type": "string"})) + 1)
        if kind == "string":
            pattern = node.get("pattern")
            if pattern:  # bounded runs plus the literal text around them
                return 2 + sum(int(n) for n in re.findall(r"\{\d+,(\d+)\}", pattern)) + len(pattern)
            return 2 + node.get("maxLength", 200)
        return 8  # numbers, booleans, null

    return size(schema)


def grammar_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema, checked once for combinations the structured-output grammar cannot compile."""
    return json.loads(_schema_json(model))


def _strings(node: Any, path: str):
    if isinstance(node, dict):
        if node.get("type") == "string":
            yield path, node
        for key, value in node.items():
            yield from _strings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, f"{path}[{i}]")


@dataclass
class RawCompletion:
    """What one backend call returned, before validation."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None  # transport/protocol problem or refusal; None when the backend answered
    retryable: bool = True
    unreachable: bool = False  # no connection could be made at all (endpoint down), as opposed to a bad answer
    refused: bool = False  # the server rejected this request as invalid (a 4xx such as a too-long prompt): final


# Why a request has no value, by the kind a failure reason starts with ("<kind>: <detail>"). Only an answer the
# model wrote says anything about the text asked for; the others are about the way there and never reach a prompt.
TRANSPORT = "transport"  # the request or its answer was lost (down, timeout, 5xx, malformed body): never cached
REFUSED = "refused"  # the server rejected the request itself (4xx): cached, a re-run asks again only to recover
ANSWER_FAILURES = ("truncated", "schema")  # the model answered, and the answer failed validation: cached


def failure_kind(reason: str) -> str:
    return reason.split(":", 1)[0]


def is_answer_failure(reason: str) -> bool:
    """Whether a failure reason is about what the model wrote (feedback a rewrite can use)."""
    return failure_kind(reason) in ANSWER_FAILURES


@dataclass
class TeacherResult:
    key: str
    tag: str
    value: BaseModel | str | None = None  # validated model instance (or text for free-text requests)
    failure: str | None = None  # why no value, after all attempts
    attempts: int = 0
    cached: bool = False
    unreachable: bool = False  # the last attempt could not connect to any endpoint

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass
class TeacherStats:
    """Per-asset accounting; attached to Dagster materializations as metadata."""

    requests: int = 0  # logical requests asked of the client
    cache_hits: int = 0
    sent: int = 0  # backend calls actually made (retries included)
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)
    first_failure: str | None = None  # the first recorded reason, for a clear error when nothing got through

    def count_failure(self, reason: str) -> None:
        self.failures += 1
        self.first_failure = self.first_failure or reason
        kind = failure_kind(reason)
        self.failure_reasons[kind] = self.failure_reasons.get(kind, 0) + 1

    def as_metadata(self, prefix: str = "") -> dict[str, int | dict[str, int]]:
        return {f"{prefix}{k}": v for k, v in {
            "teacher_requests": self.requests,
            "teacher_cache_hits": self.cache_hits,
            "teacher_calls_sent": self.sent,
            "teacher_retries": self.retries,
            "teacher_failures": self.failures,
            "teacher_prompt_tokens": self.prompt_tokens,
            "teacher_completion_tokens": self.completion_tokens,
            "teacher_failures_by_kind": dict(sorted(self.failure_reasons.items())),
        }.items()}
