"""Small helpers every stage shares: seeded randomness, chat assembly, text normalisation."""

from __future__ import annotations

import hashlib
import random
import re
from datetime import datetime
from functools import lru_cache
from typing import Sequence

from pydantic import BaseModel, ConfigDict

from prompts import render, template_hashes

from ..config import PipelineConfig, code_version
from ..schema import BIG_FIVE_TRAITS, TIME_FORMAT, BigFive, Provenance
from ..teacher.types import ChatMessage, ImagePart, Sampling, answer_chars


def provenance(cfg: PipelineConfig, teacher_model: str, *templates: str) -> Provenance:
    """Where a row came from: enough to regenerate it."""
    return Provenance(teacher_model=teacher_model, prompt_templates=template_hashes(*templates), seed=cfg.seed,
                      code_version=code_version(), preset=cfg.preset, config_hash=cfg.config_hash(),
                      personality_skip_rule=cfg.supervision.personality_skip_rule)


def stable_id(prefix: str, *parts: object) -> str:
    return prefix + hashlib.sha1("\x1f".join(map(str, parts)).encode()).hexdigest()[:12]


def rng_for(seed: int, *parts: object) -> random.Random:
    """An independent, reproducible random stream per (run seed, purpose, entity)."""
    return random.Random(int(hashlib.sha256(f"{seed}\x1f{parts}".encode()).hexdigest()[:16], 16))


def request_seed(seed: int, *parts: object) -> int:
    return int(hashlib.sha256(f"{seed}\x1f{parts}".encode()).hexdigest()[:8], 16)


def sampling(cfg: PipelineConfig, *parts: object, schema: type[BaseModel] | None = None) -> Sampling:
    """Sampling for one request, seeded by its parts. With an output schema, max_tokens leaves room for the
    longest answer it admits down to 2 characters a token, so only a degenerate answer is cut short: the schema,
    not the budget, bounds a sound one."""
    t = cfg.teacher
    budget = max(t.max_tokens, answer_chars(schema) // 2 + 16) if schema is not None else t.max_tokens
    return Sampling(t.temperature, t.top_p, budget, request_seed(cfg.seed, *parts))


def chat(template: str, /, *, images: Sequence[bytes] = (), **context: object) -> tuple[ChatMessage, ...]:
    """The stable system prefix (so vLLM's prefix cache hits) plus one rendered user message; PNG images, if any,
    come before the text in the order the text refers to them."""
    text = render(template, **context)
    user = ChatMessage("user", (*(ImagePart(png) for png in images), text) if images else text)
    return (ChatMessage("system", render("system")), user)


@lru_cache(maxsize=1 << 16)  # timeline replays and turn checks normalize the same plan values over and over
def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def contains_phrase(text: str, phrase: str) -> bool:
    return f" {normalize(phrase)} " in f" {normalize(text)} "


# words that, just before a fact's phrase, may deny it ("t" is what normalization leaves of "don't", "can't" ...)
NEGATIONS = {"not", "no", "never", "t", "cannot", "hate", "hates", "stopped", "quit", "longer", "dislike"}


def negates(text: str, phrase: str) -> bool:
    """Whether a negation word stands within the three words before the phrase (a lexical cue, not a verdict)."""
    words, target = normalize(text).split(), normalize(phrase).split()
    for i in range(len(words) - len(target) + 1):
        if words[i:i + len(target)] == target and NEGATIONS & set(words[max(0, i - 3):i]):
            return True
    return False


def personality_text(big_five: BigFive | dict[str, float]) -> str:
    values = big_five.model_dump() if isinstance(big_five, BigFive) else big_five
    return ", ".join(f"{t} {values[t]:.1f}" for t in BIG_FIVE_TRAITS)


@lru_cache(maxsize=1 << 16)  # retrieval windows parse the same turn times at every probe; datetimes are immutable
def parse_time(value: str) -> datetime:
    return datetime.strptime(value, TIME_FORMAT)


ANY_RUN_MAX = 128  # the grammar backend (xgrammar) fails to compile `.{0,n}` for n above this
PHRASE_SEP = "[ ,.;:!?'-]"  # what may stand next to a required phrase


# the config of an answer schema that carries a phrase pattern. A run builds one such model per phrase set (thousands
# at scale, each prefetched and built again by its asset); Python's re compiles one in about a quarter of the CPU of
# pydantic's default Rust engine and ~12 KB instead of ~330 KB. The engine's grammar enforces the same pattern (re's
# `$` also admits one trailing newline, which a grammar-bound answer never has and the stages strip).
PHRASE_MODEL_CONFIG = ConfigDict(extra="forbid", regex_engine="python-re")


def phrase_pattern(phrases: tuple[str, ...], max_chars: int) -> str | None:
    """A regex that makes the teacher write every phrase as whole words (either order for two), case-free first
    letters, in a message of at most about `max_chars` characters. Each phrase stands between separators or the
    message's ends, so a phrase glued to other characters ("19:32:0Gardening", "bob_user") cannot be written:
    the checks, which look for whole words, would refuse it."""
    if not phrases or any('"' in p or "\\" in p for p in phrases):
        return None

    def lit(phrase: str) -> str:
        body = re.sub(r"([.^$*+?()\[\]{}|/-])", r"\\\1", phrase)
        first = body[0]
        return (f"[{first.upper()}{first.lower()}]" if first.isalpha() else first) + body[1:]

    room = max(20, max_chars - sum(len(p) for p in phrases))
    lead = room // 3
    gap = f"{PHRASE_SEP}(?:{_any(lead)}{PHRASE_SEP})?"
    a = [lit(p) for p in phrases]
    core = f"(?:{a[0]}{gap}{a[1]}|{a[1]}{gap}{a[0]})" if len(a) == 2 else gap.join(a)
    return f"^(?:{_any(lead)}{PHRASE_SEP})?{core}(?:{PHRASE_SEP}{_any(room - lead)})?$"


def _any(n: int) -> str:
    """Up to n characters, written as runs the grammar backend compiles."""
    runs = [ANY_RUN_MAX] * (n // ANY_RUN_MAX) + ([n % ANY_RUN_MAX] if n % ANY_RUN_MAX or not n else [])
    return "".join(f".{{0,{r}}}" for r in runs)
