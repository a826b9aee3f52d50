"""Image pool: real photographs with captions and labels, stored once as PNG by content hash.

Sources: the photographs bundled in installed wheels (scikit-image's and matplotlib's sample photos, and named
crops of them; the offline default), a local folder, or a Hub image dataset.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Iterator

import imagehash
import yaml
from PIL import Image

from ..config import ConfigError, ImageSourceSettings
from ..schema import ImageRecord, QuarantineRow

SKIMAGE_CAPTIONS = Path(__file__).resolve().parent.parent / "data" / "skimage_captions.yaml"
MAX_SIDE = 512  # keeps image tokens and parquet shards small; the teacher sees the same pixels


def phash_int64(img: Image.Image) -> int:
    """64-bit perceptual hash as a signed BIGINT, so DuckDB can compute bit_count(xor(a, b))."""
    u = int(str(imagehash.phash(img)), 16)
    return u - (1 << 64) if u >= 1 << 63 else u


def _candidates(source: ImageSourceSettings) -> Iterator[tuple[str, Image.Image | Exception, str, list[str],
                                                                dict[str, str]]]:
    """(name, image or why it cannot be read, caption, labels, details) per photo."""
    if source.kind == "skimage":
        dirs = _bundled_photo_dirs()
        for name, meta in yaml.safe_load(SKIMAGE_CAPTIONS.read_text()).items():
            yield (name, _bundled_photo(name, meta, dirs), meta["caption"], list(meta["labels"]),
                   dict(meta.get("details", {})))
    elif source.kind == "folder":
        folder = Path(source.path)
        if not folder.is_dir():
            raise ConfigError(f"image folder {str(folder)!r} (setting `image_source.path`) does not exist")
        captions = _folder_captions(folder)
        for f in sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"}):
            meta = captions.get(f.name, {})
            yield (f.stem, _open(f), meta.get("caption", f.stem.replace("_", " ").replace("-", " ")),
                   list(meta.get("labels", [])), dict(meta.get("details", {})))
    else:
        import datasets

        ds = datasets.load_dataset(source.path, split=source.split)
        for col in (source.image_column,):
            if col not in ds.column_names:
                raise ConfigError(f"dataset {source.path!r} has no column {col!r} (setting `image_source.image_column`)")
        for i, row in enumerate(ds):
            caption = str(row.get(source.caption_column) or f"image {i}")
            labels = row.get("labels") or []
            yield f"{Path(source.path).name}-{i}", row[source.image_column], caption, list(labels), {}


def _bundled_photo_dirs() -> list[Path]:
    """Where installed wheels keep their sample photographs, searched in this order."""
    import matplotlib
    import skimage

    return [Path(skimage.__file__).parent / "data", Path(matplotlib.get_data_path()) / "sample_data"]


def _bundled_photo(name: str, meta: dict, dirs: list[Path]) -> Image.Image | Exception:
    """The photo of one captions entry: the file named by the entry, or the `crop` region of its source file."""
    source, box = _crop_spec(name, meta["crop"]) if "crop" in meta else (name, None)
    files = [f for d in dirs for f in sorted(d.glob(f"{source}.*"))]
    img = _open(files[0]) if files else FileNotFoundError(f"no bundled photo named {source!r}")
    if box is None or isinstance(img, Exception):
        return img
    width, height = img.size
    if not (0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height):
        raise ConfigError(f"{SKIMAGE_CAPTIONS.name}: `{name}.crop.box` {box} is not inside {source} "
                          f"({width}x{height} px)")
    return img.crop(tuple(box))


def _crop_spec(name: str, crop: object) -> tuple[str, list[int]]:
    if not (isinstance(crop, dict) and isinstance(crop.get("source"), str) and isinstance(crop.get("box"), list)
            and len(crop["box"]) == 4 and all(type(v) is int for v in crop["box"])):
        raise ConfigError(f"{SKIMAGE_CAPTIONS.name}: `{name}.crop` must be {{source: <photo>, box: [left, top, right, "
                          f"bottom]}} in pixels, got {crop!r}")
    return crop["source"], crop["box"]


def _open(path: Path) -> Image.Image | Exception:
    try:
        img = Image.open(path)
        img.load()
        return img
    except Exception as e:  # unreadable files become quarantine rows, not crashes
        return e


def _folder_captions(folder: Path) -> dict[str, dict]:
    """Optional captions.jsonl beside the images: {"file": ..., "caption": ..., "labels": [...],
    "details": {question: short answer}} per line."""
    f = folder / "captions.jsonl"
    if not f.is_file():
        return {}
    return {row["file"]: row for row in map(json.loads, filter(str.strip, f.read_text().splitlines()))}


def load_image_pool(source: ImageSourceSettings, store: Path) -> tuple[list[ImageRecord], list[QuarantineRow]]:
    store.mkdir(parents=True, exist_ok=True)
    records: dict[str, ImageRecord] = {}
    quarantined = []
    for name, img, caption, labels, details in _candidates(source):
        if isinstance(img, Exception):
            quarantined.append(QuarantineRow(table_name="image_pool", row_key=name, rule="unreadable_image",
                                             value=f"{type(img).__name__}: {img}"))
            continue
        rgb = img.convert("RGB")
        rgb.thumbnail((MAX_SIDE, MAX_SIDE))
        buf = io.BytesIO()
        rgb.save(buf, format="PNG", optimize=False)
        png = buf.getvalue()
        image_id = hashlib.sha256(png).hexdigest()
        if image_id in records:
            quarantined.append(QuarantineRow(table_name="image_pool", row_key=name, rule="duplicate_image",
                                             value=records[image_id].name))
            continue
        path = store / f"{image_id}.png"
        if not path.exists():
            path.write_bytes(png)
        records[image_id] = ImageRecord(
            image_id=image_id, source=source.kind if source.kind == "skimage" else f"{source.kind}:{source.path}",
            name=name, caption=caption, labels=labels or [caption.split()[-1]], details=details, path=str(path),
            width=rgb.width, height=rgb.height, phash=phash_int64(rgb))
        if source.limit and len(records) >= source.limit:
            break
    return sorted(records.values(), key=lambda r: r.name), quarantined
