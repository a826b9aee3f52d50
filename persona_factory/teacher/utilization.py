"""How busy a run kept its teacher: the completion tokens it had generated, against what the engine generates in
the same time with every slot busy.

    utilization = completion tokens / (wall seconds x full-batch tokens per second)

The full-batch rate is measured on the run's own engine once the run's work is done (`full_batch_throughput`:
`max_num_seqs` requests at once, each made to write exactly `tokens` tokens), so it is the same engine on the same
machine under the same load; the probe's own seconds are not counted in the run's wall time.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import httpx

PROBE_TOKENS = 64  # per sequence: long enough that the decode steps, not the prompts, set the rate
COMPLETION_TOKEN_KEYS = ("teacher_completion_tokens", "prefetched_teacher_completion_tokens")


@dataclass(frozen=True)
class Throughput:
    """One full-batch probe of an engine, for the run `run_id`."""

    run_id: str
    sequences: int
    completion_tokens: int
    seconds: float
    prompt_tokens: int = 0  # over all sequences, as the server counted them

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path, run_id: str) -> "Throughput | None":
        """The probe recorded for `run_id`, if that run measured one (an older run's record does not count)."""
        try:
            probe = cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return probe if probe.run_id == run_id and probe.seconds > 0 else None


def probe_prompts(sequences: int, context: str = "") -> list[str]:
    """`sequences` prompts that share no prefix: each starts with its own line; `context`, if given, follows it,
    so prompts are longer and still reuse none of each other's cached blocks."""
    return [f"Count upwards from {i}.\n{context}".strip() for i in range(sequences)]


def full_batch_throughput(base_url: str, model: str, prompts: Sequence[str], run_id: str,
                          tokens: int = PROBE_TOKENS, timeout_s: float = 600.0) -> Throughput:
    """The prompts sent at once to an OpenAI-compatible vLLM server, one request each, each generating exactly
    `tokens` tokens (vLLM's `ignore_eos`); the completion tokens it reports over the wall seconds they took together."""
    def body(i: int) -> dict[str, Any]:
        return {"model": model, "messages": [{"role": "user", "content": prompts[i]}],
                "max_tokens": tokens, "ignore_eos": True, "temperature": 0.0, "seed": i}

    async def probe() -> tuple[int, int, float]:
        limits = httpx.Limits(max_connections=len(prompts), max_keepalive_connections=len(prompts))
        async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
            start = time.perf_counter()
            replies = await asyncio.gather(*(client.post(f"{base_url}/chat/completions", json=body(i))
                                             for i in range(len(prompts))))
            seconds = time.perf_counter() - start
        for reply in replies:
            reply.raise_for_status()
        usage = [r.json()["usage"] for r in replies]
        return sum(int(u["completion_tokens"]) for u in usage), sum(int(u["prompt_tokens"]) for u in usage), seconds

    completion_tokens, prompt_tokens, seconds = asyncio.run(probe())
    return Throughput(run_id, len(prompts), completion_tokens, seconds, prompt_tokens)


def run_completion_tokens(metadata_by_asset: Mapping[str, Mapping[str, Any]]) -> int:
    """Completion tokens the teacher generated for a run, from each asset's materialization metadata (one entry
    per asset: an asset materializing several shards reports the same figures for each): its own requests and
    those it asked ahead for later assets (which then find them in the cache and count none)."""
    return sum(int(meta.get(key, 0)) for meta in metadata_by_asset.values() for key in COMPLETION_TOKEN_KEYS)


def end_to_end_utilization(completion_tokens: int, wall_s: float, full_batch_tokens_s: float) -> float:
    if wall_s <= 0 or full_batch_tokens_s <= 0:
        raise ValueError(f"wall seconds ({wall_s}) and the full-batch rate ({full_batch_tokens_s}) must be positive")
    return completion_tokens / (wall_s * full_batch_tokens_s)
