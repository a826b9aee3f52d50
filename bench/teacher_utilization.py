"""Does the pipeline's teacher keep the engine as busy as raw vLLM? The same structured requests go through raw vLLM
and through the pipeline's Teacher (cache, validation, retries, accounting), for both backends, in one run:

    .venv/bin/python bench/teacher_utilization.py [--requests 32] [--rounds 2]

Offline: one in-process `vllm.LLM`; raw = `llm.chat` with SamplingParams written here, pipeline = Teacher over
OfflineBackend on the same engine. Server: one embedded OpenAI-compatible server; raw = concurrent httpx posts
written here, pipeline = Teacher over ServerBackend. Each pipeline pass uses an empty response cache, so nothing is
served from it. Rounds alternate raw and pipeline; throughput = completion tokens / wall seconds. Target ratio >= 0.9.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import compare, raw_offline, raw_server, via_teacher  # noqa: E402
from persona_factory.config import load_config  # noqa: E402
from persona_factory.stages import personas as persona_stage  # noqa: E402
from persona_factory.teacher.backends import OfflineBackend, ServerBackend  # noqa: E402
from persona_factory.teacher.embedded import EmbeddedServer, apply_engine_env, resolve_model  # noqa: E402
from persona_factory.teacher.types import TeacherRequest  # noqa: E402


def pipeline_requests(n: int) -> list[TeacherRequest]:
    """Persona-enrichment requests exactly as the personas stage builds them (JSON-schema outputs)."""
    cfg = load_config("tiny")
    seeds = persona_stage.load_seeds(cfg.persona_source)[:n]
    return [persona_stage.enrichment_request(cfg, s, persona_stage.sample_big_five(cfg, s)) for s in seeds]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    settings = load_config("tiny").teacher
    requests = pipeline_requests(args.requests)
    path, model_id = resolve_model(settings)
    rows = []

    apply_engine_env(settings)
    backend = OfflineBackend(path, model_id, settings)
    passes: list = []
    rows.append(compare("offline", lambda: raw_offline(backend.llm, requests),
                        lambda: via_teacher(backend, requests, passes), args.rounds, passes))
    backend.close()
    gc.collect()

    with EmbeddedServer(settings, Path(tempfile.mkdtemp()) / "server.log") as server:
        backend = ServerBackend.from_settings(settings, [server.base_url], server.served_name)
        passes = []
        rows.append(compare("server", lambda: raw_server(server.base_url, server.served_name, requests),
                            lambda: via_teacher(backend, requests, passes), args.rounds, passes))
    print(json.dumps({"requests": len(requests), "results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
