import dagster as dg

from persona_factory.catalog import ALIGNMENT_PAIRS
from persona_factory.readers import load_histories
from persona_factory.stages import alignment as stage
from persona_factory.teacher.types import TeacherStats
from pipelines.jobs import SUPERVISION
from pipelines.partitions import SHARD_BACKFILL
from pipelines.resources import FactoryConfig, StoreResource, TeacherResource

from .common import answered, finish, generate_batched, run_shards, shard_batch


def alignment_asset(shards: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(group_name=SUPERVISION, deps=["dialogues"], partitions_def=shards, backfill_policy=SHARD_BACKFILL,
              description="Training personas' in-situ queries with a chosen reply (fits the planned personality at "
                          "that moment) and a rejected one (half generic, half written for a different Big Five "
                          "profile); the benchmark writes its own pairs for its items.")
    def alignment_pairs(context: dg.AssetExecutionContext, settings: FactoryConfig, teacher: TeacherResource,
                        store: StoreResource) -> dg.MaterializeResult:
        cfg = settings.load()
        keys = run_shards(context, cfg)
        with store.get().reader() as con:
            personas, plans, dialogues, _ = load_histories(con, keys)
        specs = {pid: stage.pair_specs(cfg, personas[pid], plans[pid], dialogues[pid])
                 for pid in sorted(dialogues) if pid in personas and pid in plans and personas[pid].split == "train"}
        stats = TeacherStats()
        res = generate_batched(teacher.get(), stats, {pid: stage.reply_requests(cfg, s) for pid, s in specs.items()})
        answered("alignment_pairs", stats)
        rows, quarantined = [], []
        for pid in specs:
            pairs, dropped = stage.build_pairs(cfg, specs[pid], res[pid])
            rows += pairs
            quarantined += dropped
        shard_of = {pid: p.shard for pid, p in personas.items()}
        batch = shard_batch("alignment_pairs", keys, cfg)
        batch.add(ALIGNMENT_PAIRS, rows, shard_of=shard_of)
        return finish(store.get(), batch, stats, quarantined, [r for rs in res.values() for r in rs],
                      owner_shard=shard_of, pairs=len(rows),
                      generic_rejected=sum(p.rejected_kind == "generic" for p in rows),
                      other_profile_rejected=sum(p.rejected_kind == "other_profile" for p in rows))

    return alignment_pairs
