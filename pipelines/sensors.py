"""Republishing: publish the latest release as soon as every blocking check has passed on it, once per release."""

from __future__ import annotations

import dagster as dg

from .checks import release_check_failures
from .jobs import PUBLISH
from .resources import FactoryConfig

PUBLISHED = dg.AssetKey("hub_dataset")

publish_job = dg.define_asset_job(
    "publish_job", selection=dg.AssetSelection.groups(PUBLISH), executor_def=dg.in_process_executor,
    description="Export the checked release (Hub folder, native layout) and push it when a Hub repo is configured.")


def republish_decision(instance: dg.DagsterInstance) -> dg.RunRequest | dg.SkipReason:
    release_id, reasons = release_check_failures(instance)
    if reasons:
        return dg.SkipReason("not publishing: " + "; ".join(reasons))
    published = instance.fetch_materializations(PUBLISHED, limit=1).records
    if published and published[0].storage_id > release_id:
        return dg.SkipReason(f"release {release_id} is already published")
    return dg.RunRequest(run_key=f"release-{release_id}")


def republish_sensor(settings: FactoryConfig) -> dg.SensorDefinition:
    enabled = settings.load().regeneration.enabled

    @dg.sensor(name="republish_when_checks_pass", job=publish_job, minimum_interval_seconds=300,
               default_status=dg.DefaultSensorStatus.RUNNING if enabled else dg.DefaultSensorStatus.STOPPED,
               description="Launches publish_job for a new release_splits materialization once all its blocking "
                           "checks passed; skips releases with a failed or missing check.")
    def republish_when_checks_pass(context: dg.SensorEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        return republish_decision(context.instance)

    return republish_when_checks_pass
