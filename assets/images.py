import dagster as dg
from dagster_duckdb import DuckDBResource

from persona_factory.stages.images import load_image_pool, require_usable_pool
from persona_factory.store import write_records
from pipelines.resources import FactoryConfig

from .common import HISTORIES, finish


@dg.asset(group_name=HISTORIES, description="Photographs with captions and labels, stored as PNG by content hash.")
def image_pool(settings: FactoryConfig, duckdb: DuckDBResource) -> dg.MaterializeResult:
    cfg = settings.load()
    images, quarantined = load_image_pool(cfg.image_source, cfg.output_path / "images")
    require_usable_pool(cfg, images, quarantined)
    with duckdb.get_connection() as con:
        write_records(con, "image_pool", images, {"image_id": ("VARCHAR", lambda i: i.image_id),
                                                  "name": ("VARCHAR", lambda i: i.name),
                                                  "phash": ("BIGINT", lambda i: i.phash)})
        return finish(con, "image_pool", None, quarantined, images=len(images), source=cfg.image_source.kind)
