"""The Dagster code location (`dagster dev` at the repo root loads it through workspace.yaml)."""

from __future__ import annotations

import dagster as dg
from dagster_duckdb import DuckDBResource

from assets import alignment, benchmark, images, memory, publish, quality, reasoning, training
from assets.dialogues import dialogues_asset
from assets.personas import personas_asset
from assets.plans import timeline_plans_asset

from .checks import release_checks
from .jobs import factory_job
from .partitions import persona_shards
from .resources import EmbedderResource, FactoryConfig, TeacherResource, default_settings, duckdb_path
from .schedules import regeneration_job, regeneration_schedule
from .sensors import publish_job, republish_sensor
from .supervision_checks import supervision_checks

ASSET_MODULES = [images, memory, reasoning, alignment, benchmark, training, quality, publish]


def build_definitions(settings: FactoryConfig | None = None) -> dg.Definitions:
    """Everything for one config: the shard partitions are sized from it, so build one per config."""
    settings = settings or default_settings()
    shards = persona_shards(settings.load())
    return dg.Definitions(
        assets=[personas_asset(shards), timeline_plans_asset(shards), dialogues_asset(shards),
                *dg.load_assets_from_modules(ASSET_MODULES)],
        asset_checks=[*release_checks, *supervision_checks],
        jobs=[factory_job, regeneration_job, publish_job],
        schedules=[regeneration_schedule(settings)],
        sensors=[republish_sensor(settings)],
        executor=dg.in_process_executor,
        resources={"settings": settings, "teacher": TeacherResource(settings=settings),
                   "embedder": EmbedderResource(settings=settings),
                   "duckdb": DuckDBResource(database=str(duckdb_path(settings)))},
    )


defs = build_definitions()
