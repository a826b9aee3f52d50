"""What every asset does around its domain call: load records, account for the teacher, write, describe."""

from __future__ import annotations

from typing import Sequence

import dagster as dg

from persona_factory.config import PipelineConfig, code_version
from persona_factory.schema import (
    Dialogue, ImageRecord, Persona, Provenance, QuarantineRow, TeacherFailure, TimelinePlan,
)
from persona_factory.store import read_records, replace_bookkeeping
from persona_factory.teacher.types import TeacherResult, TeacherStats
from prompts import template_hashes

HISTORIES = "histories"
SUPERVISION = "supervision"
BENCHMARK = "benchmark"
QUALITY = "quality"
PUBLISH = "publish"


def failures_of(asset: str, results: Sequence[TeacherResult]) -> list[TeacherFailure]:
    return [TeacherFailure(asset=asset, request_key=r.key, tag=r.tag, reason=r.failure, attempts=r.attempts)
            for r in results if not r.ok]


def finish(con, asset: str, stats: TeacherStats | None, quarantined: Sequence[QuarantineRow] = (),
           results: Sequence[TeacherResult] = (), **metadata) -> dg.MaterializeResult:
    """Records quarantine rows and teacher failures, and reports them with the teacher's accounting."""
    replace_bookkeeping(con, asset, quarantined, failures_of(asset, results))
    meta = dict(metadata)
    meta["quarantined_rows"] = len(quarantined)
    if stats is not None:
        meta.update(stats.as_metadata())
    return dg.MaterializeResult(metadata=meta)


def provenance(cfg: PipelineConfig, teacher_model: str, *templates: str) -> Provenance:
    return Provenance(teacher_model=teacher_model, prompt_templates=template_hashes(*templates), seed=cfg.seed,
                      code_version=code_version(), preset=cfg.preset, config_hash=cfg.config_hash())


def load_histories(con) -> tuple[dict[str, Persona], dict[str, TimelinePlan], dict[str, Dialogue], list[ImageRecord]]:
    personas = {p.persona_id: p for p in read_records(con, "personas", Persona)}
    plans = {p.persona_id: p for p in read_records(con, "timeline_plans", TimelinePlan)}
    dialogues = {d.persona_id: d for d in read_records(con, "dialogues", Dialogue)}
    return personas, plans, dialogues, read_records(con, "image_pool", ImageRecord)
