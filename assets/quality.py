import dagster as dg

from persona_factory.catalog import DEDUP_DECISIONS
from persona_factory.store import Batch
from pipelines.jobs import QUALITY
from pipelines.resources import EmbedderResource, FactoryConfig, StoreResource
from quality import dedup, release

from .common import finish


@dg.asset(group_name=QUALITY, deps=["personas", "dialogues", "benchmark_items", "training_records", "image_pool"],
          description="Exact and near duplicates (turns, sessions, questions by words and by MiniLM embedding, "
                      "images) and train/benchmark leakage, every pair with its reason.")
def dedup_decisions(settings: FactoryConfig, embedder: EmbedderResource, store: StoreResource) -> dg.MaterializeResult:
    cfg = settings.load()
    batch = Batch("dedup_decisions")
    with store.get().reader() as con:
        pairs = dedup.find_duplicates(con, cfg.quality, embedder.get())
        by_reason = dedup.summary(con)
        batch.add_arrow(DEDUP_DECISIONS, con.sql(f"SELECT * FROM {DEDUP_DECISIONS.name}").to_arrow_table())
    store.get().commit(batch)
    return dg.MaterializeResult(metadata={"pairs": pairs, "by_reason": by_reason})


@dg.asset(group_name=QUALITY, deps=["dedup_decisions", "memory_db", "personality_trajectories"],
          description="What will be published: personas whose histories pass the structural rules, whose image "
                      "files are present and match their checksums, and who pass the dedup rules, with their items "
                      "and records. Blocking checks validate it before publishing.")
def release_splits(settings: FactoryConfig, store: StoreResource) -> dg.MaterializeResult:
    cfg = settings.load()
    with store.get().reader() as con:
        summary, quarantined, batch = release.build_release(con, cfg)
    return finish(store.get(), batch, None, quarantined, **summary.as_metadata())
