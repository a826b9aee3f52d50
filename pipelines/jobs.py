"""Asset groups and the jobs that select them.

One process per run: the teacher engine (or its embedded server) starts once and serves every stage of the run. On
one machine `factory_job` runs everything; on a cluster the same graph runs as `images_job` once, `shard_job` once
per persona shard (a backfill: the run launcher sends each run to a worker) and `release_job` once all shards are in.
"""

import dagster as dg

HISTORIES = "histories"
SUPERVISION = "supervision"
BENCHMARK = "benchmark"
QUALITY = "quality"
PUBLISH = "publish"

IMAGES = dg.AssetSelection.assets("image_pool")
# every asset partitioned by persona shard: a shard's histories and their supervision
PER_SHARD = dg.AssetSelection.groups(HISTORIES, SUPERVISION) - IMAGES

factory_job = dg.define_asset_job("factory_job", selection=dg.AssetSelection.all(),
                                  executor_def=dg.in_process_executor,
                                  description="Materialize the whole graph: histories -> supervision -> benchmark -> "
                                              "quality -> publish.")
images_job = dg.define_asset_job("images_job", selection=IMAGES, executor_def=dg.in_process_executor,
                                 description="The image pool every shard draws photos from (run it first).")
shard_job = dg.define_asset_job("shard_job", selection=PER_SHARD, executor_def=dg.in_process_executor,
                                description="One persona shard: personas, plans, dialogues and their supervision "
                                            "(backfill it: one run per shard).")
release_job = dg.define_asset_job("release_job", selection=dg.AssetSelection.all() - PER_SHARD - IMAGES,
                                  executor_def=dg.in_process_executor,
                                  description="What needs every shard: benchmark, dedup, release with its blocking "
                                              "checks, publishing.")
