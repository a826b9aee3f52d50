import dagster as dg
from dagster_duckdb import DuckDBResource

from pipelines.resources import EmbedderResource, FactoryConfig
from quality import dedup, release

from .common import QUALITY, finish


@dg.asset(group_name=QUALITY, deps=["personas", "dialogues", "benchmark_items", "training_records", "image_pool"],
          description="Exact and near duplicates (turns, sessions, questions by words and by MiniLM embedding, "
                      "images) and train/benchmark leakage, every pair with its reason.")
def dedup_decisions(settings: FactoryConfig, embedder: EmbedderResource,
                    duckdb: DuckDBResource) -> dg.MaterializeResult:
    cfg = settings.load()
    with duckdb.get_connection() as con:
        pairs = dedup.find_duplicates(con, cfg.quality, embedder.get())
        return dg.MaterializeResult(metadata={"pairs": pairs, "by_reason": dedup.summary(con)})


@dg.asset(group_name=QUALITY, deps=["dedup_decisions", "memory_db", "personality_trajectories"],
          description="What will be published: personas whose histories pass the structural rules, whose image "
                      "files are present and match their checksums, and who pass the dedup rules, with their items "
                      "and records. Blocking checks validate it before publishing.")
def release_splits(settings: FactoryConfig, duckdb: DuckDBResource) -> dg.MaterializeResult:
    cfg = settings.load()
    with duckdb.get_connection() as con:
        summary, quarantined = release.build_release(con, cfg)
        return finish(con, "release_splits", None, quarantined, **summary.as_metadata())
