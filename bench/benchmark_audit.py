"""Build a benchmark on the schema-following test teacher and audit it for shortcuts.

    .venv/bin/python bench/benchmark_audit.py [--personas 32] [--out DIR]

Benchmark personas only (half 32k, half 128k), histories of 40-60 and 60-90 turns, everything else as the tiny
preset; the real persona, plan, dialogue and benchmark stages run, with tests/fake_teacher.py's SchemaTeacher
answering every request (each answer follows the request's JSON schema), persona and plan requests with varied
values (`varied_answers`: names, hobbies, routines, events, goals, skills, a tenth of the lists carrying a value
the plan checks must refuse). The release is exported in the native layout under --out and audited with `python -m quality.audit`,
whose table and rules are printed; the exit status is the audit's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from persona_factory.config import load_config  # noqa: E402
from persona_factory.publish import PublishBundle, export_native  # noqa: E402
from persona_factory.schema import Provenance  # noqa: E402
from persona_factory.stages import dialogues as dialogue_stage  # noqa: E402
from persona_factory.stages.benchmark_build import build_benchmark  # noqa: E402
from persona_factory.stages.images import load_image_pool  # noqa: E402
from persona_factory.teacher.types import TeacherStats  # noqa: E402
from quality import audit  # noqa: E402
from tests.fake_teacher import SchemaTeacher, varied_answers  # noqa: E402
from tests.test_histories import histories  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--personas", type=int, default=32, help="benchmark personas (default 32)")
    parser.add_argument("--out", type=Path, help="where the release goes (default: a temporary folder)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="benchmark-audit-"))
    half = args.personas // 2
    cfg = load_config("tiny", overrides={
        "personas": {"train": 0, "bench_32k": half, "bench_128k": args.personas - half, "per_shard": 8},
        "dialogue": {"turns_32k": {"min": 40, "max": 60}, "turns_128k": {"min": 60, "max": 90}}})
    start = time.time()
    images, _ = load_image_pool(cfg.image_source, out / "images")
    teacher = SchemaTeacher(varied_answers)
    personas, plans = histories(cfg, images, teacher)
    dialogues, _ = dialogue_stage.generate_dialogues(cfg, teacher, personas, plans, images, TeacherStats())
    build = build_benchmark(cfg, teacher, {"teacher": teacher, "second": SchemaTeacher()},
                            {p.persona_id: p for p in personas}, {p.persona_id: p for p in plans},
                            {d.persona_id: d for d in dialogues}, images, TeacherStats())
    bundle = PublishBundle(personas=personas, dialogues=dialogues, images={i.image_id: i for i in images},
                           memory_dbs={}, sft=[], rl=[], benchmark=build.items,
                           provenance=Provenance(teacher_model="schema-teacher", seed=cfg.seed, code_version="bench",
                                                 preset="tiny", config_hash=cfg.config_hash()))
    export_native(bundle, out / "native")
    print(f"built {len(build.items)} items over {args.personas} personas in {time.time() - start:.0f} s; "
          f"release at {out / 'native'}\n", flush=True)
    return audit.main([str(out / "native")])


if __name__ == "__main__":
    sys.exit(main())
