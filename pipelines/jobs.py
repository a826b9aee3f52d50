import dagster as dg

# One process per run: the teacher engine (or its embedded server) starts once and serves every stage.
factory_job = dg.define_asset_job("factory_job", selection=dg.AssetSelection.all(),
                                  executor_def=dg.in_process_executor,
                                  description="Materialize the whole graph: histories -> supervision -> benchmark -> "
                                              "quality -> publish.")
