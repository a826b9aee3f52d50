"""Image pool: real photographs with captions and labels, stored once as PNG by content hash.

Sources: the photographs bundled in installed wheels (scikit-image's and matplotlib's sample photos, and named
crops of them; the offline default), a local folder, or a Hub image dataset. Every photo
is read defensively: only regular files, EXIF orientation applied, 16-bit, alpha and palette modes converted
faithfully to 8-bit RGB, too small or unreadable ones quarantined with the reason; a pool too small to share
photos from is an error naming the setting.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Iterator

import imagehash
import numpy as np
import yaml
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from ..config import ConfigError, ImageSourceSettings, InputError, PipelineConfig
from ..schema import ImageRecord, QuarantineRow
from .plans import image_side

SKIMAGE_CAPTIONS = Path(__file__).resolve().parent.parent / "data" / "skimage_captions.yaml"
MAX_SIDE = 512  # keeps image tokens and parquet shards small; the teacher sees the same pixels
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
CAPTIONS_FILE = "captions.jsonl"
TABLE = "image_pool"
# full scale of modes wider than 8 bits per channel; "I" and "F" hold whatever range the writer chose
FULL_SCALE = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0}


def phash_int64(img: Image.Image) -> int:
    """64-bit perceptual hash as a signed BIGINT, so DuckDB can compute bit_count(xor(a, b))."""
    u = int(str(imagehash.phash(img)), 16)
    return u - (1 << 64) if u >= 1 << 63 else u


@dataclass
class Candidate:
    """One photo of the source, or why it cannot be read."""

    name: str
    image: Image.Image | None
    caption: str
    labels: list[str] = field(default_factory=list)
    details: dict[str, str] = field(default_factory=dict)
    problem: tuple[str, str] | None = None  # (rule, reason) when there is no image
    photograph: str | None = None  # the bundled photograph it shows, whole or cropped


Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]


class CaptionLine(BaseModel):
    """One line of a folder's captions.jsonl."""

    model_config = ConfigDict(extra="forbid")
    file: Text
    caption: Text | None = None
    labels: list[Text] = Field(default_factory=list)
    details: dict[Text, Text] = Field(default_factory=dict)  # visual question -> short answer


def image_files(source: ImageSourceSettings) -> list[Path]:
    """The files of an image folder with an image suffix, after checking the folder (cheap: nothing is decoded)."""
    folder = Path(source.path)
    if not folder.exists():
        raise ConfigError(f"image folder {str(folder)!r} (setting `image_source.path`) does not exist")
    if not folder.is_dir():
        raise ConfigError(f"image folder {str(folder)!r} (setting `image_source.path`) is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"image folder {str(folder)!r} (setting `image_source.path`) holds no "
                         f"{'/'.join(sorted(IMAGE_SUFFIXES))} file: add photos or point the setting elsewhere")
    return files


def _candidates(source: ImageSourceSettings, quarantined: list[QuarantineRow]) -> Iterator[Candidate]:
    if source.kind == "skimage":
        dirs = _bundled_photo_dirs()
        for name, meta in yaml.safe_load(SKIMAGE_CAPTIONS.read_text()).items():
            yield _bundled_photo(name, meta, dirs)
    elif source.kind == "folder":
        files = image_files(source)
        captions = _folder_captions(Path(source.path), {f.name for f in files}, quarantined)
        for f in files:
            meta = captions.get(f.name) or CaptionLine(file=f.name)
            yield _read(f, f.stem, meta.caption or f.stem.replace("_", " ").replace("-", " "), meta.labels,
                        meta.details)
    else:
        yield from _dataset_candidates(source)


def _bundled_photo_dirs() -> list[Path]:
    """Where installed wheels keep their sample photographs, searched in this order."""
    import matplotlib
    import skimage

    return [Path(skimage.__file__).parent / "data", Path(matplotlib.get_data_path()) / "sample_data"]


def _bundled_photo(name: str, meta: dict, dirs: list[Path]) -> Candidate:
    """The photo of one captions entry: the file named by the entry, or the `crop` region of its source file."""
    source, box = _crop_spec(name, meta["crop"]) if "crop" in meta else (name, None)
    files = [f for d in dirs for f in sorted(d.glob(f"{source}.*"))]
    caption, labels, details = meta["caption"], list(meta["labels"]), dict(meta.get("details", {}))
    if not files:
        return Candidate(name, None, caption, problem=("unreadable_image",
                                                          f"FileNotFoundError: no bundled photo named {source!r}"))
    photo = _read(files[0], name, caption, labels, details)
    photo.photograph = source
    if box is None or photo.image is None:
        return photo
    width, height = photo.image.size
    if not (0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height):
        raise ConfigError(f"{SKIMAGE_CAPTIONS.name}: `{name}.crop.box` {box} is not inside {source} "
                          f"({width}x{height} px)")
    photo.image = photo.image.crop(tuple(box))
    return photo


def _crop_spec(name: str, crop: object) -> tuple[str, list[int]]:
    if not (isinstance(crop, dict) and isinstance(crop.get("source"), str) and isinstance(crop.get("box"), list)
            and len(crop["box"]) == 4 and all(type(v) is int for v in crop["box"])):
        raise ConfigError(f"{SKIMAGE_CAPTIONS.name}: `{name}.crop` must be {{source: <photo>, box: [left, top, right, "
                          f"bottom]}} in pixels, got {crop!r}")
    return crop["source"], crop["box"]


def _dataset_candidates(source: ImageSourceSettings) -> Iterator[Candidate]:
    import datasets

    try:
        ds = datasets.load_dataset(source.path, split=source.split)
    except Exception as e:  # the datasets library raises many types for a missing or unreadable dataset
        raise InputError(f"image dataset {source.path!r} (setting `image_source.path`, split {source.split!r}) "
                         f"cannot be loaded: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
                         ) from None
    if source.image_column not in ds.column_names:
        raise ConfigError(f"dataset {source.path!r} has no column {source.image_column!r} (setting "
                          f"`image_source.image_column`); columns: {ds.column_names}")
    for i, row in enumerate(ds):
        name, image = f"{Path(source.path).name}-{i}", row[source.image_column]
        caption = str(row.get(source.caption_column) or f"image {i}")
        labels = [str(x) for x in row.get("labels") or []]
        if isinstance(image, Image.Image):
            yield _checked(name, lambda image=image: image, caption, labels, {})
        else:
            yield Candidate(name, None, caption, problem=("unreadable_image", f"column {source.image_column!r} "
                                                          f"holds a {type(image).__name__}, not an image"))


def _read(path: Path, name: str, caption: str, labels: list[str], details: dict[str, str]) -> Candidate:
    if not path.is_file():  # a FIFO would block the read forever; a folder or a dangling link is no photo
        return Candidate(name, None, caption, problem=("not_a_regular_file", f"{path.name} is not a regular file"))

    def open_file() -> Image.Image:
        img = Image.open(path)
        img.load()
        return img

    return _checked(name, open_file, caption, labels, details)


def _checked(name: str, load, caption: str, labels: list[str], details: dict[str, str]) -> Candidate:
    """The photo decoded, upright and in 8-bit RGB, or the reason it cannot be used."""
    try:
        with warnings.catch_warnings():
            # above Pillow's pixel limit a file is more likely a decompression bomb than a photo
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            rgb = to_rgb(load())
    except Exception as e:  # unreadable files become quarantine rows, not crashes
        return Candidate(name, None, caption, problem=("unreadable_image", f"{type(e).__name__}: {e}"))
    return Candidate(name, rgb, caption, labels, details)


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB as a viewer shows the file: EXIF rotation applied, wide modes scaled (not clipped), transparent
    areas on white."""
    img = ImageOps.exif_transpose(img)
    if img.mode in FULL_SCALE or img.mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        top = float(values.max()) if values.size else 0.0
        full = FULL_SCALE.get(img.mode) or next(s for s in (1.0, 255.0, 65535.0, top) if top <= s)
        img = Image.fromarray(np.clip(values / full * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _folder_captions(folder: Path, names: set[str], quarantined: list[QuarantineRow]) -> dict[str, CaptionLine]:
    """Optional captions.jsonl beside the images: {"file": ..., "caption": ..., "labels": [...],
    "details": {question: short answer}} per line. A line that cannot be used is quarantined, the rest apply."""
    f = folder / CAPTIONS_FILE
    if not f.exists():
        return {}
    if not f.is_file():
        raise InputError(f"{f} (captions beside `image_source.path`) is not a regular file")
    captions: dict[str, CaptionLine] = {}

    def bad(n: int, why: str) -> None:
        quarantined.append(QuarantineRow(table_name=TABLE, row_key=f"{CAPTIONS_FILE} line {n}",
                                         rule="bad_caption_line", value=why))

    for n, raw in enumerate(f.read_bytes().split(b"\n"), 1):
        try:
            text = raw.decode("utf-8-sig" if n == 1 else "utf-8").strip()
        except UnicodeDecodeError as e:
            bad(n, f"byte {e.start} is not UTF-8")
            continue
        if not text:
            continue
        try:
            line = CaptionLine.model_validate(json.loads(text))
        except json.JSONDecodeError as e:
            bad(n, f"not JSON ({e.msg}, column {e.colno})")
            continue
        except ValidationError as e:
            first = e.errors()[0]
            bad(n, f"{'.'.join(map(str, first['loc'])) or 'line'}: {first['msg']}")
            continue
        if line.file not in names:
            bad(n, f"{line.file!r} is not an image file of the folder")
        elif line.file in captions:
            bad(n, f"{line.file!r} is captioned twice; the first caption is used")
        else:
            captions[line.file] = line
    return captions


def load_image_pool(source: ImageSourceSettings, store: Path) -> tuple[list[ImageRecord], list[QuarantineRow]]:
    store.mkdir(parents=True, exist_ok=True)
    records: dict[str, ImageRecord] = {}
    quarantined: list[QuarantineRow] = []
    for c in _candidates(source, quarantined):
        if c.image is None:
            rule, why = c.problem or ("unreadable_image", "")
            quarantined.append(QuarantineRow(table_name=TABLE, row_key=c.name, rule=rule, value=why))
            continue
        if min(c.image.size) < source.min_side:
            quarantined.append(QuarantineRow(table_name=TABLE, row_key=c.name, rule="too_small",
                                             value=f"{c.image.width}x{c.image.height} pixels (setting "
                                                   f"`image_source.min_side` = {source.min_side})"))
            continue
        rgb = c.image
        rgb.thumbnail((MAX_SIDE, MAX_SIDE))
        buf = io.BytesIO()
        rgb.save(buf, format="PNG", optimize=False)
        png = buf.getvalue()
        image_id = hashlib.sha256(png).hexdigest()
        if image_id in records:
            quarantined.append(QuarantineRow(table_name=TABLE, row_key=c.name, rule="duplicate_image",
                                             value=records[image_id].name))
            continue
        path = store / f"{image_id}.png"
        if not path.exists():
            path.write_bytes(png)
        records[image_id] = ImageRecord(
            image_id=image_id, source=source.kind if source.kind == "skimage" else f"{source.kind}:{source.path}",
            name=c.name, caption=c.caption, labels=c.labels or [c.caption.split()[-1]], details=c.details,
            path=str(path), width=rgb.width, height=rgb.height, phash=phash_int64(rgb), photograph=c.photograph)
        if source.limit and len(records) >= source.limit:
            break
    return sorted(records.values(), key=lambda r: r.name), quarantined


def require_usable_pool(cfg: PipelineConfig, images: list[ImageRecord], quarantined: list[QuarantineRow]) -> None:
    """Histories share photos only when the pool can supply both halves (training and benchmark histories draw
    from disjoint halves, split by content hash); otherwise the run would silently make text-only histories."""
    if cfg.dialogue.image_turn_share == 0:
        return
    src = cfg.image_source
    where = "the bundled photos" if src.kind == "skimage" else f"{src.path!r} (setting `image_source.path`)"
    sides = Counter(image_side(i) for i in images)
    skipped = f" ({len(quarantined)} quarantined, e.g. {quarantined[0].row_key}: {quarantined[0].rule})" \
        if quarantined else ""
    if len(images) < src.min_images or len(sides) < 2:
        raise InputError(f"{where} gives {len(images)} usable photos{skipped}; a run needs at least "
                         f"{src.min_images} (setting `image_source.min_images`) falling on both the training and "
                         "the benchmark half: add photos, or set `dialogue.image_turn_share: 0` for text-only "
                         "histories")
