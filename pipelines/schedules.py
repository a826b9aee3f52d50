"""Periodic regeneration, driven by the config's `regeneration` section and stopped unless it says `enabled`.

A scheduled run rebuilds everything up to the release and its blocking checks, not the published outputs: the
republish sensor (pipelines/sensors.py) publishes a rebuilt release once every check has passed on it.
"""

from __future__ import annotations

from datetime import datetime

import dagster as dg

from .jobs import PUBLISH
from .partitions import all_shards_tags
from .resources import FactoryConfig

SEED_TAG = "persona_factory/seed"

regeneration_job = dg.define_asset_job(
    "regeneration_job", selection=dg.AssetSelection.all() - dg.AssetSelection.groups(PUBLISH),
    executor_def=dg.in_process_executor,
    description="Rebuild histories, supervision, benchmark and the release with its blocking checks; no publishing.")


def tick_seed(when: datetime) -> int:
    """A new seed per scheduled tick, the same for retries of that tick: its time as YYYYMMDDHHMM."""
    return int(when.strftime("%Y%m%d%H%M"))


def regeneration_schedule(settings: FactoryConfig) -> dg.ScheduleDefinition:
    cfg = settings.load()

    @dg.schedule(name="regeneration", job=regeneration_job, cron_schedule=cfg.regeneration.cron,
                 default_status=dg.DefaultScheduleStatus.RUNNING if cfg.regeneration.enabled
                 else dg.DefaultScheduleStatus.STOPPED,
                 description="Rebuild the dataset (a new seed per run unless regeneration.seed is fixed); "
                             "the republish sensor publishes it once its checks pass.")
    def regeneration(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        current = settings.load()
        tags = all_shards_tags(current)
        if current.regeneration.seed == "fixed":
            return dg.RunRequest(tags={**tags, SEED_TAG: str(current.seed)})
        seed = tick_seed(context.scheduled_execution_time)
        run_settings = {**settings.model_dump(exclude_none=True), "seed": seed}
        return dg.RunRequest(run_key=f"seed-{seed}", tags={**tags, SEED_TAG: str(seed)},
                             run_config={"resources": {"settings": {"config": run_settings}}})

    return regeneration
