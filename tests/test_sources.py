"""Where personas and photos come from: the bundled defaults, a local file or folder, or a Hub dataset (tested with
a local dataset folder, the same code path `load_dataset` takes for a repo id)."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from itertools import combinations

import pytest
import yaml
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage

from persona_factory.config import ConfigError, ImageSourceSettings, QualitySettings, SourceSettings, load_config
from persona_factory.stages import images as image_stage
from persona_factory.stages.images import SKIMAGE_CAPTIONS, load_image_pool
from persona_factory.stages.personas import BUNDLED_SEEDS, assign_splits, load_seeds


def test_bundled_seeds_are_distinct_stable_and_enough_for_the_paper_preset():
    seeds = load_seeds(SourceSettings())
    written = [line.strip() for line in BUNDLED_SEEDS.read_text().splitlines() if line.strip()]
    assert [s.text for s in seeds[:len(written)]] == written  # the hand-written ones first
    assert len({s.seed_id for s in seeds}) == len(seeds) >= load_config("paper").personas.total
    assert [s.seed_id for s in load_seeds(SourceSettings())] == [s.seed_id for s in seeds]


def test_benchmark_personas_fill_both_buckets_of_their_config_equally():
    assigned = assign_splits(load_seeds(SourceSettings()), load_config("paper"))
    counts = Counter((a.split, a.bucket) for a in assigned)
    assert counts == {("train", None): 500, ("bench_32k", "50"): 50, ("bench_32k", "100"): 50,
                      ("bench_128k", "200"): 50, ("bench_128k", "500"): 50}


def test_too_few_seeds_fail_before_a_run_starts(tmp_path, capsys):
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("A beekeeper.\nA nurse.\n")
    config = tmp_path / "run.yaml"
    config.write_text(f"persona_source: {{kind: file, path: {seeds}}}\n")
    from pipelines.cli import main

    assert main(["materialize", "--preset", "tiny", "--config", str(config), "--estimate-only"]) == 2
    assert "4 personas" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", ["txt", "jsonl", "csv"])
def test_seeds_from_a_file(tmp_path, suffix):
    texts = ["A beekeeper in Lyon.", "A night nurse who bakes.", "A beekeeper in Lyon."]
    path = tmp_path / f"seeds.{suffix}"
    if suffix == "txt":
        path.write_text("\n".join(texts) + "\n\n")
    elif suffix == "jsonl":
        path.write_text("\n".join(json.dumps({"persona": t}) for t in texts))
    else:
        path.write_text("persona\n" + "\n".join(f'"{t}"' for t in texts))
    seeds = load_seeds(SourceSettings(kind="file", path=str(path)))
    assert [s.text for s in seeds] == texts[:2]  # exact duplicates would make identical personas
    assert all(s.source == f"file:{path}" for s in seeds)


def test_a_missing_seed_file_names_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="persona_source.path"):
        load_seeds(SourceSettings(kind="file", path=str(tmp_path / "nope.txt")))


def test_seeds_from_a_dataset_folder(tmp_path):
    folder = tmp_path / "personahub-sample"
    folder.mkdir()
    Dataset.from_dict({"persona": ["A ferry captain.", "A chess coach."], "id": [1, 2]}).to_parquet(
        str(folder / "train.parquet"))
    seeds = load_seeds(SourceSettings(kind="hub", path=str(folder)))
    assert [s.text for s in seeds] == ["A ferry captain.", "A chess coach."]
    with pytest.raises(ConfigError, match="persona_source.column"):
        load_seeds(SourceSettings(kind="hub", path=str(folder), column="description"))


BUNDLED = yaml.safe_load(SKIMAGE_CAPTIONS.read_text())
CROPS = {name: meta["crop"] for name, meta in BUNDLED.items() if "crop" in meta}
MIN_CROP_SIDE = 160  # pixels of the original photo: a smaller region is too blurred to read details off


@pytest.fixture(scope="module")
def bundled_pool(tmp_path_factory):
    store = tmp_path_factory.mktemp("pool")
    return store, *load_image_pool(ImageSourceSettings(), store)


def test_bundled_photos_carry_captions_labels_and_hashes(bundled_pool):
    store, images, quarantined = bundled_pool
    assert not quarantined and sorted(i.name for i in images) == sorted(BUNDLED)  # crops and every wheel's photos
    for img in images:
        png = (store / f"{img.image_id}.png").read_bytes()
        assert hashlib.sha256(png).hexdigest() == img.image_id  # the id is the checksum of the stored file
        assert img.caption and img.labels and max(img.width, img.height) <= 512


def _hamming(a: int, b: int) -> int:
    return ((a ^ b) & ((1 << 64) - 1)).bit_count()


def test_bundled_crops_are_photos_of_their_own(bundled_pool, tmp_path, monkeypatch):
    """No two pool photos, and no crop and its whole source photo, are near duplicates to the image dedup."""
    _, images, _ = bundled_pool
    threshold = QualitySettings().image_max_hamming
    assert min(_hamming(a.phash, b.phash) for a, b in combinations(images, 2)) > threshold
    sources = tmp_path / "sources.yaml"
    sources.write_text(yaml.safe_dump({c["source"]: {"caption": "whole", "labels": ["whole"]} for c in CROPS.values()}))
    monkeypatch.setattr(image_stage, "SKIMAGE_CAPTIONS", sources)
    whole = {i.name: i.phash for i in load_image_pool(ImageSourceSettings(), tmp_path / "store")[0]}
    crops = {i.name: i.phash for i in images if i.name in CROPS}
    for name, crop in CROPS.items():
        left, top, right, bottom = crop["box"]
        assert min(right - left, bottom - top) >= MIN_CROP_SIDE, name
        assert _hamming(crops[name], whole[crop["source"]]) > threshold, name


def test_no_bundled_detail_question_gives_its_answer_away():
    """A (question, answer) pair on two photos lets the question alone tell the answer; two answers alike on one
    photo make its two questions one to the dedup."""
    pairs = Counter((q, a) for meta in BUNDLED.values() for q, a in meta.get("details", {}).items())
    assert [pair for pair, n in pairs.items() if n > 1] == []
    for name, meta in BUNDLED.items():
        answers = list(meta.get("details", {}).values())
        assert meta["labels"] and len(set(answers)) == len(answers), name


@pytest.mark.parametrize("crop, error", [
    ({"source": "coffee", "box": [300, 0, 700, 200]}, r"`cup\.crop\.box` \[300, 0, 700, 200\] is not inside coffee"),
    ({"source": "coffee", "box": [0, 0, 100]}, r"`cup\.crop` must be \{source: <photo>, box: \[left, top, right"),
    ({"box": [0, 0, 100, 100]}, r"`cup\.crop` must be"),
])
def test_a_bad_crop_is_an_error_naming_its_entry(tmp_path, monkeypatch, crop, error):
    captions = tmp_path / "captions.yaml"
    captions.write_text(yaml.safe_dump({"cup": {"caption": "a cup", "labels": ["cup"], "crop": crop}}))
    monkeypatch.setattr(image_stage, "SKIMAGE_CAPTIONS", captions)
    with pytest.raises(ConfigError, match=rf"^captions\.yaml: {error}"):
        load_image_pool(ImageSourceSettings(), tmp_path / "store")


def test_a_crop_of_a_photo_no_wheel_ships_is_quarantined(tmp_path, monkeypatch):
    captions = tmp_path / "captions.yaml"
    captions.write_text(yaml.safe_dump({"cup": {"caption": "a cup", "labels": ["cup"],
                                                "crop": {"source": "teapot", "box": [0, 0, 10, 10]}}}))
    monkeypatch.setattr(image_stage, "SKIMAGE_CAPTIONS", captions)
    images, quarantined = load_image_pool(ImageSourceSettings(), tmp_path / "store")
    assert images == [] and [(q.row_key, q.rule, q.value) for q in quarantined] == [
        ("cup", "unreadable_image", "FileNotFoundError: no bundled photo named 'teapot'")]


def _png(color: tuple[int, int, int], size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_photos_from_a_folder_with_captions_and_a_broken_file(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "red_kite.png").write_bytes(_png((200, 30, 30)))
    (folder / "blue_door.png").write_bytes(_png((30, 30, 200)))
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "captions.jsonl").write_text(json.dumps(
        {"file": "red_kite.png", "caption": "a red kite in the sky", "labels": ["kite"]}) + "\n")
    images, quarantined = load_image_pool(ImageSourceSettings(kind="folder", path=str(folder)), tmp_path / "store")
    by_name = {i.name: i for i in images}
    assert set(by_name) == {"red_kite", "blue_door"}
    assert by_name["red_kite"].caption == "a red kite in the sky" and by_name["red_kite"].labels == ["kite"]
    assert by_name["blue_door"].caption == "blue door"  # no caption given: the file name stands in
    assert [(q.row_key, q.rule) for q in quarantined] == [("broken", "unreadable_image")]


def test_the_same_photo_twice_is_stored_once(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png((10, 200, 10)))
    (folder / "b.png").write_bytes(_png((10, 200, 10)))
    images, quarantined = load_image_pool(ImageSourceSettings(kind="folder", path=str(folder)), tmp_path / "store")
    assert len(images) == 1 and [q.rule for q in quarantined] == ["duplicate_image"]


def test_photos_from_a_dataset_folder(tmp_path):
    folder = tmp_path / "coco-sample"
    folder.mkdir()
    features = Features({"image": Image(), "caption": Value("string")})
    Dataset.from_dict({"image": [{"bytes": _png((250, 200, 0)), "path": None},
                                 {"bytes": _png((0, 120, 250)), "path": None}],
                       "caption": ["a yellow frisbee", "a blue umbrella"]}, features=features).to_parquet(
        str(folder / "train.parquet"))
    images, quarantined = load_image_pool(ImageSourceSettings(kind="hub", path=str(folder)), tmp_path / "store")
    assert not quarantined
    assert sorted(i.caption for i in images) == ["a blue umbrella", "a yellow frisbee"]
    assert all(i.labels for i in images)
    with pytest.raises(ConfigError, match="image_source.image_column"):
        load_image_pool(ImageSourceSettings(kind="hub", path=str(folder), image_column="picture"), tmp_path / "s2")


def test_a_missing_photo_folder_names_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="image_source.path"):
        load_image_pool(ImageSourceSettings(kind="folder", path=str(tmp_path / "nope")), tmp_path / "store")
