"""A benchmark build large enough to audit: N benchmark personas with 40-90-turn histories written by the
schema-following test teacher with a varied vocabulary (tests/fake_teacher.py: plausible hobbies, events, names,
routines ... and a tenth of the proposals ones the plan must refuse), the real plan, dialogue and benchmark stages,
the native Persona-MME export, and the model-free shortcut audit over it.

    .venv/bin/python bench/benchmark_audit.py --personas 30 [--out /tmp/audit-release] [--json audit.json]

No model runs: the schema teacher writes every turn with exactly the plan's phrases, so this measures what the
generator lets a program recover without reading, not text quality.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fake_teacher import SchemaTeacher, varied_answers  # noqa: E402

from persona_factory.config import PipelineConfig, load_config  # noqa: E402
from persona_factory.publish import PublishBundle, export_native  # noqa: E402
from persona_factory.schema import Provenance  # noqa: E402
from persona_factory.stages import dialogues as D  # noqa: E402
from persona_factory.stages import personas as P  # noqa: E402
from persona_factory.stages import plans as PL  # noqa: E402
from persona_factory.stages.benchmark_build import BenchmarkBuild, build_benchmark  # noqa: E402
from persona_factory.stages.images import load_image_pool  # noqa: E402
from persona_factory.teacher.types import TeacherStats  # noqa: E402
from quality import audit  # noqa: E402


def audit_config(personas: int) -> PipelineConfig:
    """Benchmark personas only (32k split, buckets 50 and 100), 40-90 turns, plans with several items of each kind
    so every task has told-but-wrong values to draw on."""
    return load_config("tiny", overrides={
        "personas": {"train": 0, "bench_32k": personas, "bench_128k": 0, "per_shard": 8},
        "dialogue": {"turns_32k": {"min": 40, "max": 90}},
        "plan": {"preferences": 3, "dislikes": 2, "people": 4, "person_events": 4, "goals": 2, "routines": 3,
                 "events": 4, "skills": 2, "styles": 2}})


def build_release(cfg: PipelineConfig, out: Path) -> BenchmarkBuild:
    """Histories and benchmark on the varied schema teacher, exported in PersonaVLM's layout under `out`."""
    images, _ = load_image_pool(cfg.image_source, out / "image-store")
    teacher = SchemaTeacher(override=varied_answers)
    assigned = P.assign_splits(P.load_seeds(cfg.persona_source), cfg)
    personas, _ = P.build_personas(cfg, assigned, teacher.generate(
        [P.enrichment_request(cfg, a.seed, P.sample_big_five(cfg, a.seed)) for a in assigned]))
    plans, _ = PL.build_plans(cfg, personas, teacher.generate([PL.plan_request(cfg, p) for p in personas]), images)
    dialogues, _ = D.generate_dialogues(cfg, teacher, personas, plans, images, TeacherStats())
    build = build_benchmark(cfg, teacher, {"teacher": teacher}, {p.persona_id: p for p in personas},
                            {p.persona_id: p for p in plans}, {d.persona_id: d for d in dialogues}, images,
                            TeacherStats())
    export_native(PublishBundle(
        personas=personas, dialogues=dialogues, images={i.image_id: i for i in images}, memory_dbs={}, sft=[], rl=[],
        benchmark=build.items, provenance=Provenance(teacher_model=teacher.model_id, seed=cfg.seed,
                                                     code_version="bench", preset="tiny", config_hash="bench")),
        out / "native")
    return build


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--personas", type=int, default=30)
    ap.add_argument("--out", type=Path, default=None, help="keep the release here (default: a temp folder)")
    ap.add_argument("--json", type=Path, default=None, help="write the audit report as JSON here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        t0 = time.perf_counter()
        build = build_release(audit_config(args.personas), out)
        print(f"built {len(build.items)} items over {args.personas} personas in {time.perf_counter() - t0:.0f} s; "
              f"tasks present: {build.summary()['tasks_present']}\n")
        report = audit.run_audit(audit.load_audit_input(out / "native"))
        print(report.markdown())
        if args.json:
            args.json.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
