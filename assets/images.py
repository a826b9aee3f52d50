import dagster as dg

from persona_factory.catalog import IMAGE_POOL
from persona_factory.stages.images import load_image_pool, require_usable_pool
from persona_factory.store import Batch
from pipelines.jobs import HISTORIES
from pipelines.resources import FactoryConfig, StoreResource

from .common import finish


@dg.asset(group_name=HISTORIES, description="Photographs with captions and labels, stored as PNG by content hash.")
def image_pool(settings: FactoryConfig, store: StoreResource) -> dg.MaterializeResult:
    cfg = settings.load()
    images, quarantined = load_image_pool(cfg.image_source, cfg.output_path / "images")
    require_usable_pool(cfg, images, quarantined)
    batch = Batch("image_pool")
    batch.add(IMAGE_POOL, images)
    return finish(store.get(), batch, None, quarantined, images=len(images), source=cfg.image_source.kind)
