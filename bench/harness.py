"""Shared measuring code for the teacher benchmarks: raw vLLM paths written here, independent of the pipeline's
client, and a side-by-side comparison that alternates raw and pipeline passes."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from persona_factory.teacher.backends import response_format
from persona_factory.teacher.cache import ResponseCache
from persona_factory.teacher.client import Teacher
from persona_factory.teacher.types import TeacherRequest, TeacherStats


def timed(fn) -> tuple[int, float]:
    t0 = time.perf_counter()
    tokens = fn()
    return tokens, time.perf_counter() - t0


def via_teacher(backend, requests: list[TeacherRequest], passes: list[TeacherStats] | None = None) -> int:
    """One pipeline pass on an empty cache; its accounting is appended to `passes` (retries cost tokens too)."""
    with tempfile.TemporaryDirectory() as tmp:
        teacher = Teacher(backend, ResponseCache(Path(tmp) / "cache.sqlite"))
        stats = TeacherStats()
        teacher.generate(requests, stats)
        teacher.cache.close()
    if passes is not None:
        passes.append(stats)
    return stats.completion_tokens


def raw_offline(llm, requests: list[TeacherRequest]) -> int:
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    params = [SamplingParams(temperature=r.sampling.temperature, top_p=r.sampling.top_p,
                             max_tokens=r.sampling.max_tokens, seed=r.sampling.seed,
                             structured_outputs=StructuredOutputsParams(json=r.json_schema())) for r in requests]
    outs = llm.chat([[m.to_openai() for m in r.messages] for r in requests], params, use_tqdm=False)
    return sum(len(o.outputs[0].token_ids) for o in outs)


def raw_server(base_url: str, model: str, requests: list[TeacherRequest]) -> int:
    async def one(client: httpx.AsyncClient, r: TeacherRequest) -> int:
        body = {"model": model, "messages": [m.to_openai() for m in r.messages], "temperature": r.sampling.temperature,
                "top_p": r.sampling.top_p, "max_tokens": r.sampling.max_tokens, "seed": r.sampling.seed,
                "response_format": response_format(r)}
        resp = await client.post(f"{base_url}/chat/completions", json=body)
        return resp.json()["usage"]["completion_tokens"]

    async def run() -> int:
        async with httpx.AsyncClient(timeout=600) as client:
            return sum(await asyncio.gather(*(one(client, r) for r in requests)))

    return asyncio.run(run())


def compare(name: str, raw, pipeline, rounds: int, passes: list[TeacherStats] | None = None) -> dict:
    """Alternates raw and pipeline passes after a warm-up; `passes` collects the pipeline's accounting."""
    raw(), pipeline()  # warm-up: grammar compilation, prefix cache, first-request costs
    rates: dict[str, list[float]] = {"raw": [], "pipeline": []}
    for _ in range(rounds):
        for label, fn in (("raw", raw), ("pipeline", pipeline)):
            tokens, seconds = timed(fn)
            rates[label].append(tokens / seconds)
    raw_rate, pipe_rate = statistics.mean(rates["raw"]), statistics.mean(rates["pipeline"])
    row = {"backend": name, "raw_tok_s": round(raw_rate, 1), "pipeline_tok_s": round(pipe_rate, 1),
           "ratio": round(pipe_rate / raw_rate, 3), "rounds": rounds}
    if passes:
        last = passes[-1]
        row.update(requests=last.requests, sent=last.sent, retries=last.retries, failures=last.failures)
    print(f"{name:8s} raw {raw_rate:7.1f} tok/s   pipeline {pipe_rate:7.1f} tok/s   ratio {pipe_rate / raw_rate:.3f}"
          + (f"   (pipeline sent {row['sent']} for {row['requests']} requests)" if passes else ""), flush=True)
    return row
