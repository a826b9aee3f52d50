"""The Dagster code location (`dagster dev` at the repo root loads it through workspace.yaml)."""

from __future__ import annotations

import dagster as dg
from dagster_duckdb import DuckDBResource

from assets import alignment, benchmark, dialogues, images, memory, personas, plans, publish, quality, reasoning, training

from .checks import release_checks
from .jobs import factory_job
from .resources import FactoryConfig, TeacherResource, default_settings, duckdb_path
from .schedules import weekly_regeneration

ASSET_MODULES = [personas, plans, images, dialogues, memory, reasoning, alignment, benchmark, training, quality, publish]


def build_definitions(settings: FactoryConfig | None = None) -> dg.Definitions:
    settings = settings or default_settings()
    return dg.Definitions(
        assets=dg.load_assets_from_modules(ASSET_MODULES),
        asset_checks=release_checks,
        jobs=[factory_job],
        schedules=[weekly_regeneration],
        executor=dg.in_process_executor,
        resources={"settings": settings, "teacher": TeacherResource(settings=settings),
                   "duckdb": DuckDBResource(database=str(duckdb_path(settings)))},
    )


defs = build_definitions()
