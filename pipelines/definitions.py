"""The Dagster code location (`dagster dev` at the repo root loads it through workspace.yaml)."""

from __future__ import annotations

import dagster as dg

from assets import benchmark, images, publish, quality
from assets.alignment import alignment_asset
from assets.dialogues import dialogues_asset
from assets.memory import memory_assets
from assets.personas import personas_asset
from assets.plans import timeline_plans_asset
from assets.reasoning import reasoning_asset
from assets.training import training_asset

from .checks import release_checks
from .jobs import factory_job, images_job, release_job, shard_job
from .partitions import persona_shards
from .resources import EmbedderResource, FactoryConfig, StoreResource, TeacherResource, default_settings
from .schedules import regeneration_job, regeneration_schedule
from .sensors import missed_retry_sensor, publish_job, republish_sensor
from .supervision_checks import supervision_checks

ASSET_MODULES = [images, benchmark, quality, publish]


def build_definitions(settings: FactoryConfig | None = None) -> dg.Definitions:
    """Everything for one config: the shard partitions are sized from it, so build one per config."""
    settings = settings or default_settings()
    shards = persona_shards(settings.load())
    jobs = [factory_job, images_job, shard_job, release_job, regeneration_job, publish_job]
    per_shard = [personas_asset(shards), timeline_plans_asset(shards), dialogues_asset(shards),
                 *memory_assets(shards), reasoning_asset(shards), alignment_asset(shards), training_asset(shards)]
    return dg.Definitions(
        assets=[*per_shard, *dg.load_assets_from_modules(ASSET_MODULES)],
        asset_checks=[*release_checks, *supervision_checks(shards)],
        jobs=jobs,
        schedules=[regeneration_schedule(settings)],
        sensors=[republish_sensor(settings), missed_retry_sensor(jobs)],
        executor=dg.in_process_executor,
        resources={"settings": settings, "teacher": TeacherResource(settings=settings),
                   "embedder": EmbedderResource(settings=settings), "store": StoreResource(settings=settings)},
    )


defs = build_definitions()
