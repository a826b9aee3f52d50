"""A schema-following stand-in for the teacher in fast tests: it answers every structured request with a value
that satisfies the request's JSON schema (phrase patterns included), so the stages and the Dagster graph run in
seconds. Its answers go through the real client validation (`validate_completion`), never around it.

    teacher = SchemaTeacher()                      # in process, for stage tests
    FakeOpenAI(responder=openai_responder())       # over loopback HTTP, for graph tests
"""

from __future__ import annotations

import json
import random
import re
from typing import Any, Callable, Sequence

from persona_factory.teacher.client import validate_completion
from persona_factory.teacher.types import RawCompletion, TeacherRequest, TeacherResult, TeacherStats

WORDS = ("sunny calm window garden morning coffee river quiet bright evening market friendly careful simple "
         "walk plan note music paper light").split()
NAMES = ("Maya", "Tom", "Priya", "Lucas", "Elena", "Omar")


def phrases_of(pattern: str) -> list[str]:
    """The literal phrases a realization pattern demands, in its first order (see stages.common.phrase_pattern)."""
    core = re.sub(r"^\^(\.\{0,\d+\})+", "", pattern)
    core = re.sub(r"(\.\{0,\d+\})+\$$", "", core)
    if core.startswith("(?:"):
        core = core[3:].split("|")[0]
    parts = re.split(r"(?:\.\{0,\d+\})+", core)
    return [re.sub(r"\\(.)", r"\1", re.sub(r"\[(\w)\w\]", r"\1", p)) for p in parts]


def _text(rng: random.Random, lo: int, hi: int, pattern: str | None) -> str:
    if pattern:
        text = "Honestly, " + " and ".join(phrases_of(pattern)) + " matter to me."
        if not re.fullmatch(pattern, text) and re.fullmatch(pattern, NAMES[0]):
            text = rng.choice([n for n in NAMES if re.fullmatch(pattern, n)])
        assert re.fullmatch(pattern, text), (pattern, text)
        return text[:hi]
    words = []
    while len(" ".join(words)) < max(lo, min(hi, 24)):
        words.append(rng.choice(WORDS))
    return " ".join(words)[:hi].strip().ljust(lo, "x")


def fill(schema: dict[str, Any], rng: random.Random, defs: dict[str, Any] | None = None) -> Any:
    """A value valid under this JSON schema (the subset pydantic emits for the project's models)."""
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return fill(defs[schema["$ref"].split("/")[-1]], rng, defs)
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return fill(next(s for s in schema[key] if s.get("type") != "null"), rng, defs)
    kind = schema.get("type")
    if kind == "object":
        return {k: fill(v, rng, defs) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        if "prefixItems" in schema:
            return [fill(s, rng, defs) for s in schema["prefixItems"]]
        n = max(schema.get("minItems", 0), min(schema.get("maxItems", 2), 2))
        item = schema.get("items", {"type": "string"})
        if item.get("pattern") and item.get("pattern").startswith("^[A-Z]"):
            return rng.sample(NAMES, k=n)
        return [fill(item, rng, defs) for _ in range(n)]
    if kind == "string":
        return _text(rng, schema.get("minLength", 1), schema.get("maxLength", 80), schema.get("pattern"))
    if kind == "integer":
        return rng.randint(schema.get("minimum", 1), min(schema.get("maximum", 5), schema.get("minimum", 1) + 4))
    if kind == "number":
        return float(schema.get("minimum", 1))
    if kind == "boolean":
        return True
    raise ValueError(f"schema the fake teacher cannot fill: {schema}")


def answer(schema: dict[str, Any] | None, seed: int) -> str:
    rng = random.Random(seed)
    return "A short helpful answer." if schema is None else json.dumps(fill(schema, rng))


class SchemaTeacher:
    """In-process TeacherLike. `override(request) -> str | None` can script a request's raw text."""

    model_id = "schema-teacher"

    def __init__(self, override: Callable[[TeacherRequest], str | None] | None = None):
        self.override = override
        self.requests: list[TeacherRequest] = []
        self.batches: list[list[str]] = []  # the tags of each generate call

    def generate(self, requests: Sequence[TeacherRequest], stats: TeacherStats | None = None) -> list[TeacherResult]:
        out = []
        self.batches.append([r.tag for r in requests])
        for req in requests:
            self.requests.append(req)
            text = self.override(req) if self.override else None
            raw = RawCompletion(text=text if text is not None else answer(req.json_schema(), req.sampling.seed),
                                finish_reason="stop")
            value, reason = validate_completion(req, raw)
            out.append(TeacherResult(key=str(len(self.requests)), tag=req.tag, value=value, failure=reason, attempts=1))
            if stats is not None:
                stats.requests += 1
                stats.sent += 1
                stats.failures += reason is not None
        return out


def openai_responder() -> Callable[[dict[str, Any]], str]:
    """For tests.fake_openai.FakeOpenAI: content for a chat-completions body, following its response_format."""

    def respond(body: dict[str, Any]) -> str:
        fmt = body.get("response_format") or {}
        schema = fmt.get("json_schema", {}).get("schema") if fmt.get("type") == "json_schema" else None
        return answer(schema, int(body.get("seed") or 0))

    return respond
