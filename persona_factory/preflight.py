"""What a run checks before anything starts, so a mistake costs seconds, not an engine start-up: the seed source,
the image folder, the output folder and the files a run reopens there, the teacher model and the publish token.
Each problem is a UserError naming the setting or file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import duckdb

from .config import InputError, PipelineConfig
from .estimate import CostEstimate
from .publish.push import hub_target
from .schema import QuarantineRow
from .stages.images import image_files
from .stages.personas import assign_splits, read_seeds
from .teacher.cache import ResponseCache


def preflight(cfg: PipelineConfig, env: Mapping[str, str] = os.environ) -> list[QuarantineRow]:
    """Raises on the first problem; returns the seed lines the run will quarantine (and go on without)."""
    seeds, bad_seeds = read_seeds(cfg.persona_source)
    assign_splits(seeds, cfg)  # enough distinct seeds
    if cfg.image_source.kind == "folder":
        image_files(cfg.image_source)
    hub_target(cfg.publish, env)  # a configured push needs its token now, not after hours of generation
    _teacher_model(cfg)
    check_output_folder(cfg.output_path)
    _reopened_files(cfg)
    return bad_seeds


def check_output_folder(path: Path) -> None:
    where = f"output folder {str(path)!r} (setting `output_dir`, or --output)"
    if path.exists() and not path.is_dir():
        raise InputError(f"{where} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{where} cannot be created: {e.strerror} ({e.filename})") from None
    try:
        tempfile.TemporaryFile(dir=path).close()
    except OSError as e:
        raise InputError(f"{where} is not writable: {e.strerror}") from None


def _reopened_files(cfg: PipelineConfig) -> None:
    """The working database and the response cache a re-run reopens must be what they claim to be."""
    db = cfg.duckdb_path
    if db.exists():
        try:
            duckdb.connect(str(db)).close()
        except duckdb.Error as e:
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise InputError(f"working database {db} cannot be opened ({first}): another run may be using it, or "
                             "it is damaged (move it away to start afresh)") from None
    cache = cfg.output_path / "teacher_cache.sqlite"
    if cache.exists():
        ResponseCache(cache).close()


def _teacher_model(cfg: PipelineConfig) -> None:
    """A run that starts its own engine needs its model on disk (a configured endpoint is checked on first use)."""
    from .teacher.embedded import resolve_model

    if cfg.teacher.backend == "offline" or not cfg.teacher.base_urls:
        resolve_model(cfg.teacher)


def over_budget(cost: CostEstimate, budget: int) -> str | None:
    """Why a run's estimated requests exceed the budget, or None."""
    if cost.total_requests <= budget:
        return None
    return (f"this run would send ~{cost.total_requests:,} teacher requests, more than the budget of {budget:,} "
            "(setting `teacher.max_requests`, or --max-requests): check the sizes in the config "
            "(`personas.*`, `dialogue.turns_*`), raise the budget, or confirm with --yes")
