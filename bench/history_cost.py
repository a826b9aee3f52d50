"""Does generating a long history cost more per turn than a short one, and does the dialogue stage keep the engine
as busy as raw vLLM?

    .venv/bin/python bench/history_cost.py [--short 20] [--long 500] [--sample 24]

1. One short and one long history are generated together by the real dialogue stage on the
   embedded teacher; teacher prompt tokens per kept turn are read from the response cache for each persona and
   their ratio printed (target <= 1.5: session prompts carry a bounded state, never the transcript). Both use the
   same per-turn budgets, kept small so the long history finishes in minutes on a CPU, and one session in flight
   (with n, the first n sessions of a history carry no earlier text, which makes a 3-session history cheap per
   turn, not a long one costly).
2. A sample of the first-draft requests the stage sent is replayed through raw vLLM (concurrent HTTP posts written
   here) and through the pipeline's Teacher on the same server; generated tokens/s and the ratio are printed.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import compare, raw_server, via_teacher  # noqa: E402
from persona_factory.config import load_config  # noqa: E402
from persona_factory.stages import dialogues as dialogue_stage  # noqa: E402
from persona_factory.stages import personas as persona_stage  # noqa: E402
from persona_factory.stages import plans as plan_stage  # noqa: E402
from persona_factory.stages.images import load_image_pool  # noqa: E402
from persona_factory.teacher.backends import ServerBackend  # noqa: E402
from persona_factory.teacher.cache import ResponseCache  # noqa: E402
from persona_factory.teacher.client import Teacher  # noqa: E402
from persona_factory.teacher.embedded import EmbeddedServer  # noqa: E402
from persona_factory.teacher.types import TeacherRequest, TeacherStats  # noqa: E402


class Recording:
    """Passes requests to the teacher and keeps the first drafts (sessions or turns) for the replay."""

    def __init__(self, teacher: Teacher):
        self.teacher = teacher
        self.drafts: list[TeacherRequest] = []

    async def agenerate(self, requests, stats=None, priority=0):
        self.drafts += [r for r in requests if r.tag.startswith(("session:", "turn:"))]
        return await self.teacher.agenerate(requests, stats, priority)

    def run(self, main):
        return self.teacher.run(main)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--short", type=int, default=20)
    parser.add_argument("--long", type=int, default=500)
    parser.add_argument("--sample", type=int, default=24)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="history-cost-"))
    cfg = load_config("tiny", overrides={
        "output_dir": str(work),
        "personas": {"train": 1, "bench_32k": 0, "bench_128k": 1},
        "dialogue": {"turns_train": {"min": args.short, "max": args.short},
                     "turns_128k": {"min": args.long, "max": args.long},
                     "turns_per_session": {"min": 5, "max": 8},
                     "max_user_chars": 100, "max_assistant_chars": 120, "sessions_in_flight": 1},
        "plan": {"preferences": 3, "people": 3, "person_events": 6, "goals": 2, "routines": 2, "events": 8,
                 "skills": 2, "styles": 2}})
    images, _ = load_image_pool(cfg.image_source, work / "images")
    with EmbeddedServer(cfg.teacher, work / "server.log") as server:
        backend = ServerBackend.from_settings(cfg.teacher, [server.base_url], server.served_name)
        teacher = Teacher(backend, ResponseCache(work / "cache.sqlite"))
        assigned = persona_stage.assign_splits(persona_stage.load_seeds(cfg.persona_source), cfg)
        personas, _ = persona_stage.build_personas(cfg, assigned, teacher.generate(
            [persona_stage.enrichment_request(cfg, a.seed, persona_stage.sample_big_five(cfg, a.seed))
             for a in assigned]))
        plans, _ = plan_stage.build_plans(cfg, personas, teacher.generate(
            [plan_stage.plan_request(cfg, p) for p in personas]), images)
        recording = Recording(teacher)
        t0 = time.perf_counter()
        dialogues, quarantined = dialogue_stage.generate_dialogues(cfg, recording, personas, plans, images,
                                                                   TeacherStats())
        seconds = time.perf_counter() - t0

        rows = {}
        with sqlite3.connect(work / "cache.sqlite") as con:
            for d in dialogues:
                prompt, completion, n = con.execute(
                    "SELECT sum(prompt_tokens), sum(completion_tokens), count(*) FROM responses "
                    "WHERE substr(tag, 1, instr(tag, ':') - 1) IN ('session', 'turn', 'repair', 'judge') "
                    "AND tag LIKE '%:' || ? || ':%'", [d.persona_id]).fetchone()
                rows[len(d.turns)] = {"turns": len(d.turns), "sessions": len(d.sessions), "requests": n,
                                      "prompt_tokens": prompt, "completion_tokens": completion,
                                      "prompt_tokens_per_turn": round(prompt / len(d.turns), 1)}
        short, long = rows[min(rows)], rows[max(rows)]
        ratio = long["prompt_tokens_per_turn"] / short["prompt_tokens_per_turn"]
        for row in (short, long):
            print(f"{row['turns']:4d} turns in {row['sessions']:3d} sessions: {row['requests']:4d} requests, "
                  f"{row['prompt_tokens_per_turn']:7.1f} prompt tokens per kept turn")
        print(f"prompt tokens per turn, long / short: {ratio:.3f}  (dialogue stage wall time {seconds:.0f} s, "
              f"{len(quarantined)} quarantine rows)", flush=True)

        sample = random.Random(0).sample(recording.drafts, k=min(args.sample, len(recording.drafts)))
        passes: list = []
        replay = compare("server", lambda: raw_server(server.base_url, server.served_name, sample),
                         lambda: via_teacher(backend, sample, passes), rounds=2, passes=passes)
    print(json.dumps({"short": short, "long": long, "prompt_per_turn_ratio": round(ratio, 3),
                      "dialogue_stage_seconds": round(seconds), "replay": replay}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
