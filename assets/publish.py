import json

import dagster as dg
from dagster_duckdb import DuckDBResource

from persona_factory.publish import PublishBundle, export_hub_layout, export_native
from persona_factory.schema import BenchmarkItem, RLRecord, SFTRecord
from persona_factory.store import read_records
from pipelines.resources import FactoryConfig, TeacherResource
from quality import dedup

from .common import PUBLISH, load_histories, provenance
from .training import TEMPLATES


def release_bundle(con, cfg, teacher_model: str) -> PublishBundle:
    """The released rows only, plus the figures the card reports."""
    personas, _, dialogues, images = load_histories(con)
    released = [r[0] for r in con.execute("SELECT persona_id FROM release_personas ORDER BY 1").fetchall()]
    memory = {pid: json.loads(u) for pid, u in con.execute(
        "SELECT persona_id, user_data FROM memory_db WHERE split = 'train'").fetchall() if pid in released}
    quarantine = con.execute("SELECT asset, rule, count(*) FROM quarantine GROUP BY ALL ORDER BY ALL").fetchall()
    failures = con.execute("SELECT asset, split_part(reason, ':', 1), count(*) FROM teacher_failures "
                           "GROUP BY ALL ORDER BY ALL").fetchall()
    sections = {
        "Deduplication and leakage": _table(("reason", "pairs"), sorted(dedup.summary(con).items())),
        "Quarantine": _table(("asset", "rule", "rows"), quarantine),
        "Teacher failures (after retries)": _table(("asset", "kind", "requests"), failures),
    }
    return PublishBundle(
        personas=[personas[p] for p in released], dialogues=[dialogues[p] for p in released],
        images={i.image_id: i for i in images}, memory_dbs=memory,
        sft=read_records(con, "release_sft", SFTRecord), rl=read_records(con, "release_rl", RLRecord),
        benchmark=read_records(con, "release_benchmark", BenchmarkItem),
        provenance=provenance(cfg, teacher_model, *TEMPLATES), card_sections=sections)


def _table(header: tuple[str, ...], rows) -> str:
    if not rows:
        return "None."
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(v) for v in r) + " |" for r in rows])


@dg.asset(group_name=PUBLISH, deps=["release_splits"],
          description="Hub-layout folder (parquet with Image features + dataset card) that load_dataset reads.")
def hub_dataset(settings: FactoryConfig, teacher: TeacherResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    cfg = settings.load()
    with duckdb.get_connection() as con:
        bundle = release_bundle(con, cfg, teacher.model_name())
    out = cfg.output_path / "hub"
    manifest = export_hub_layout(bundle, out, pretty_name=cfg.publish.pretty_name, license=cfg.publish.license)
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(out)),
        "rows": {cfg_name: {s: v["rows"] for s, v in splits.items()} for cfg_name, splits in manifest.items()}})


@dg.asset(group_name=PUBLISH, deps=["release_splits"],
          description="PersonaVLM release layout: data/Persona-MME/... and data/training/...")
def native_release(settings: FactoryConfig, teacher: TeacherResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    cfg = settings.load()
    with duckdb.get_connection() as con:
        bundle = release_bundle(con, cfg, teacher.model_name())
    out = cfg.output_path / "native"
    manifest = export_native(bundle, out)
    return dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(str(out)), "manifest": manifest})
