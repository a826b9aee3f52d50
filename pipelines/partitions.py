"""Histories are materialized per persona shard: a static set of shard ids sized from the config
(`personas.per_shard`), not one partition per user."""

from __future__ import annotations

import warnings

import dagster as dg

from persona_factory.config import PipelineConfig
from persona_factory.stages.personas import shard_keys

# backfill policies are a beta API in this Dagster release; the multi-run policy is the one the product relies on
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")
# so are partitioned asset checks, which let each shard run check its own shards only
warnings.filterwarnings("ignore", category=dg.PreviewWarning, message=".*partitions_def on an AssetCheckSpec.*")
# a backfill launches one run per shard: shards run in parallel and a failed shard re-runs alone
SHARD_BACKFILL = dg.BackfillPolicy.multi_run(max_partitions_per_run=1)


def persona_shards(cfg: PipelineConfig) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(shard_keys(cfg))


def all_shards_tags(cfg: PipelineConfig) -> dict[str, str]:
    """Run tags that make one run cover every shard (what `make demo` does: one engine start, one wavefront)."""
    keys = shard_keys(cfg)
    return {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
