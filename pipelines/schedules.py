"""Regeneration schedule: off by default; turn it on in the UI or with `dagster schedule start`."""

import dagster as dg

from .jobs import factory_job

weekly_regeneration = dg.ScheduleDefinition(
    name="weekly_regeneration", job=factory_job, cron_schedule="0 3 * * 1",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Rebuilds the whole graph; publishing still waits for the blocking quality checks.")
