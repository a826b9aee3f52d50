import os

import dagster as dg

from persona_factory.publish import export_hub_layout, export_native
from persona_factory.publish.push import hub_target, push_folder
from persona_factory.stages.common import provenance
from pipelines.checks import require_publishable
from pipelines.jobs import PUBLISH
from pipelines.resources import FactoryConfig, StoreResource, TeacherResource
from quality.release import release_bundle



def _load_release(settings: FactoryConfig, teacher: TeacherResource, store: StoreResource):
    """The config and the release bundle; its provenance names every prompt template (histories, supervision and
    benchmark all went into it)."""
    cfg = settings.load()
    with store.get().reader() as con:
        return cfg, release_bundle(con, provenance(cfg, teacher.model_name()))


@dg.asset(group_name=PUBLISH, deps=["release_splits"],
          description="Hub-layout folder (parquet with Image features, charts, dataset card) that load_dataset reads.")
def hub_dataset(context: dg.AssetExecutionContext, settings: FactoryConfig, teacher: TeacherResource,
                store: StoreResource) -> dg.MaterializeResult:
    require_publishable(context.instance)
    cfg, bundle = _load_release(settings, teacher, store)
    out = cfg.output_path / "hub"
    manifest = export_hub_layout(bundle, out, pretty_name=cfg.publish.pretty_name, license=cfg.publish.license)
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(out)),
        "rows": {cfg_name: {s: v["rows"] for s, v in splits.items()} for cfg_name, splits in manifest.items()}})


@dg.asset(group_name=PUBLISH, deps=["release_splits"],
          description="PersonaVLM release layout: data/Persona-MME/... and data/training/...")
def native_release(context: dg.AssetExecutionContext, settings: FactoryConfig, teacher: TeacherResource,
                   store: StoreResource) -> dg.MaterializeResult:
    require_publishable(context.instance)
    cfg, bundle = _load_release(settings, teacher, store)
    out = cfg.output_path / "native"
    manifest = export_native(bundle, out)
    return dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(str(out)), "manifest": manifest})


@dg.asset(group_name=PUBLISH, deps=["hub_dataset"],
          description="The Hub folder pushed to `publish.hub_repo` in one commit, tagged release-<run id>; "
                      "skipped when no repo is configured.")
def hub_push(context: dg.AssetExecutionContext, settings: FactoryConfig) -> dg.MaterializeResult:
    cfg = settings.load()
    target = hub_target(cfg.publish, os.environ)
    if target is None:
        return dg.MaterializeResult(metadata={"pushed": False, "why": "publish.hub_repo is not set"})
    require_publishable(context.instance)
    tag = f"release-{context.run.run_id[:8]}"
    result = push_folder(cfg.output_path / "hub", target, tag=tag,
                         message=f"Release {tag} (preset {cfg.preset}, seed {cfg.seed}, config {cfg.config_hash()})")
    context.log.info(f"pushed {result.files} files to {result.repo_id} as {result.commit}, tagged {result.tag}")
    return dg.MaterializeResult(metadata={"pushed": True, **result.as_metadata()})
