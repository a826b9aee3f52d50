import dagster as dg

from persona_factory.catalog import DIALOGUE_TURNS, DIALOGUES, IMAGE_POOL, PERSONAS, TIMELINE_PLANS
from persona_factory.readers import read_shards
from persona_factory.stages.dialogues import write_dialogues
from persona_factory.stages.followups import Prefetch, ReasoningAhead
from persona_factory.store import read_records
from persona_factory.teacher.types import TeacherResult, TeacherStats
from pipelines.jobs import HISTORIES
from pipelines.partitions import SHARD_BACKFILL
from pipelines.resources import EmbedderResource, FactoryConfig, StoreResource, TeacherResource

from .common import answered, finish, run_assets, run_shards, shard_batch


def dialogues_asset(shards: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(name="dialogues", group_name=HISTORIES, partitions_def=shards, backfill_policy=SHARD_BACKFILL,
              deps=["timeline_plans", "image_pool"],
              description="Multi-session multimodal dialogues realizing each plan, each persona's sessions in order, "
                          "all personas at once; turns record the plan items they state. The supervision requests "
                          "about sessions already written, and the reasoning requests about finished training "
                          "histories, are asked meanwhile (prefetched_* in the metadata).")
    def dialogues(context: dg.AssetExecutionContext, settings: FactoryConfig, teacher: TeacherResource,
                  embedder: EmbedderResource, store: StoreResource) -> dg.MaterializeResult:
        cfg = settings.load()
        keys = run_shards(context, cfg)
        with store.get().reader() as con:
            people = read_shards(con, PERSONAS, keys)
            plans = read_shards(con, TIMELINE_PLANS, keys)
            images = read_records(con, IMAGE_POOL)
        stats, prefetched = TeacherStats(), TeacherStats()
        failures: list[TeacherResult] = []
        client = teacher.get()
        # the supervision assets of this run have their requests asked as the sessions they label are written
        text_embedder = embedder.get()
        prefetch = Prefetch(cfg, client, [k.to_user_string() for k in run_assets(context)], prefetched,
                            ReasoningAhead(people, plans, images, text_embedder))

        async def write() -> tuple:
            try:
                written = await write_dialogues(cfg, client, people, plans, images, stats, failures,
                                                prefetch.session_done)
                await prefetch.wait()
                return written
            finally:
                prefetch.close()

        rows, quarantined = client.run(write())
        for pid, why in sorted(prefetch.not_ahead.items()):
            context.log.warning(f"{pid}: reasoning not asked ahead ({why}); reasoning_trajectories prepares it")
        answered("dialogues", stats)
        turns = [t for d in rows for t in d.turns]
        shard_of = {p.persona_id: p.shard for p in people}
        batch = shard_batch("dialogues", keys, cfg)
        batch.add(DIALOGUES, rows, shard_of=shard_of)
        batch.add(DIALOGUE_TURNS, turns, shard_of=shard_of)
        return finish(store.get(), batch, stats, quarantined, failures, owner_shard=shard_of,
                      dialogues=len(rows), turns=len(turns), image_turns=sum(t.image_id is not None for t in turns),
                      realizing_turns=sum(bool(t.realizes) for t in turns), sessions=sum(len(d.sessions) for d in rows),
                      prefetched_texts_embedded=text_embedder.encoded,
                      reasoning_not_asked_ahead=len(prefetch.not_ahead),
                      **prefetched.as_metadata("prefetched_"))

    return dialogues
