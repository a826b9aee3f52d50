"""Republishing: publish the latest release as soon as every blocking check has passed on it, once per release.
Missed retries: start again a failed run that Dagster's run retries marked for a retry but never retried."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timezone

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


RETRY_OF = "persona_factory/retry_of"
WILL_RETRY = "dagster/will_retry"
RETRIED_BY = "dagster/auto_retry_run_id"
PARENT_RUN = "dagster/parent_run_id"
PARTITION = "dagster/partition"
# what a run was launched with, as opposed to the tags Dagster keeps about its state (failure, retries, run key)
LAUNCH_TAGS = {"dagster/asset_partition_range_start", "dagster/asset_partition_range_end",
               "dagster/priority", "dagster/max_retries", "dagster/retry_on_asset_or_op_failure"}
# The daemon's retry consumer reads new failure events every 5 s, and passes over one whose run does not say FAILURE
# yet (the event is stored before the run's status); such a run is marked for a retry that never comes.
MISSED_AFTER_S = 60.0
LOOK_BACK_S = 24 * 3600.0


def missed_retries(instance: dg.DagsterInstance, now: float) -> list[dg.RunRequest]:
    """One run request per run marked `dagster/will_retry=true` that has no retry `MISSED_AFTER_S` after it failed:
    the same job, partition, config and launch tags, keyed by the failed run so it is started once. The response
    cache and the idempotent stores make it ask and write only what the failed run had not finished. A run that is
    itself such a retry (or a retry of one) is left to the daemon, so this never loops."""
    since = datetime.fromtimestamp(now - LOOK_BACK_S, tz=timezone.utc)
    requests = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE],
                                                         tags={WILL_RETRY: "true"}, updated_after=since)):
        run = record.dagster_run
        failed_at = record.end_time or record.update_timestamp.timestamp()
        if (now - failed_at < MISSED_AFTER_S or RETRIED_BY in run.tags or RETRY_OF in run.tags
                or any(instance.get_run_ids(dg.RunsFilter(tags={tag: run.run_id}), limit=1)
                       for tag in (PARENT_RUN, RETRY_OF))):
            continue
        tags = {k: v for k, v in run.tags.items() if k in LAUNCH_TAGS or not k.startswith("dagster")}
        requests.append(dg.RunRequest(run_key=f"retry-{run.run_id}", job_name=run.job_name, run_config=run.run_config,
                                      partition_key=run.tags.get(PARTITION), tags={**tags, RETRY_OF: run.run_id}))
    return requests


def missed_retry_sensor(jobs: Sequence[dg.UnresolvedAssetJobDefinition]) -> dg.SensorDefinition:
    @dg.sensor(name="retry_missed_retries", jobs=list(jobs), minimum_interval_seconds=30,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Starts again a failed run that run retries marked for a retry but did not retry "
                           f"within {MISSED_AFTER_S:.0f} s (tagged {RETRY_OF}); idle unless run retries are on.")
    def retry_missed_retries(context: dg.SensorEvaluationContext):
        if not context.instance.run_retries_enabled:
            return dg.SkipReason("run retries are off in this instance")
        return missed_retries(context.instance, time.time()) or dg.SkipReason("no missed retry")

    return retry_missed_retries
