"""Publish stage: the Hub folder loads back offline with the same rows and pixels; the native layout is consistent;
both are deterministic and atomic."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import datasets  # noqa: E402
import huggingface_hub  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from persona_factory.publish import PublishBundle, export_hub_layout, export_native  # noqa: E402
from persona_factory.publish import hub_layout, native  # noqa: E402
from persona_factory.schema import (  # noqa: E402
    BIG_FIVE_TRAITS,
    BenchmarkItem,
    BigFive,
    Dialogue,
    ImageRecord,
    Persona,
    PersonalityStep,
    PersonaSeed,
    Profile,
    Provenance,
    RLRecord,
    Session,
    SFTRecord,
    Turn,
)

CONFIGS = {"sft", "rl", "histories", "memory_db", "benchmark_32k", "benchmark_128k"}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Env vars are read at import; patch the flags too in case another test imported datasets first."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _image(folder: Path, n: int) -> ImageRecord:
    pixels = np.random.default_rng(n).integers(0, 256, size=(12 + n, 16, 3), dtype=np.uint8)
    tmp = folder / f"tmp{n}.png"
    Image.fromarray(pixels).save(tmp)
    image_id = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = tmp.rename(folder / f"{image_id}.png")
    return ImageRecord(
        image_id=image_id, source="test", name=f"img{n}", caption=f"caption {n}", labels=["thing"],
        path=str(path), width=16, height=12 + n, phash=n,
    )


def _persona(pid: str, split: str) -> Persona:
    return Persona(
        persona_id=pid,
        seed=PersonaSeed(seed_id=f"seed-{pid}", text="A birdwatcher.", source="test"),
        split=split,
        shard="shard-000",
        role_description=f"{pid} watches birds.",
        profile=Profile.model_validate(
            {"name": pid.title(), "gender": "female", "age": 30, "preferences": ["birds"], "recent matters": [],
             "requirements or expectations": "be brief", "update time": "2024-05-01 09:00"}
        ),
        big_five=BigFive(openness=4.0, conscientiousness=3.5, extraversion=2.0, agreeableness=3.0, neuroticism=1.5),
        start_time="2024-05-01 09:00",
    )


def _dialogue(pid: str, split: str, images: list[str | None]) -> Dialogue:
    """Two sessions; turn k shows images[k] when set."""
    turns = [
        Turn(
            persona_id=pid, session_index=k // 2, turn_index=k, time=f"2024-05-0{1 + k // 2} 1{k}:00",
            user=("<img>" if img else "") + f"turn {k} from {pid}", assistant=f"reply {k}", image_id=img,
            realizes=[f"{pid}-item{k}"] if k == 0 else [],
        )
        for k, img in enumerate(images)
    ]
    sessions = [
        Session(persona_id=pid, session_index=s, turns=[t for t in turns if t.session_index == s]) for s in (0, 1)
    ]
    return Dialogue(persona_id=pid, split=split, sessions=sessions)


def _item(item_id: str, pid: str, bucket: str, **kw: object) -> BenchmarkItem:
    fields = {
        "type": "Memory Recall", "question_type": "Visual Detail Recall", "time": "2024-05-03 09:00",
        "query": "What colour was it?", "choices": {"(a)": "red", "(b)": "blue", "(c)": "green", "(d)": "none"},
        "answer": "(b)", "evidence_turns": [0],
    }
    return BenchmarkItem(item_id=item_id, persona_id=pid, bucket=bucket, **{**fields, **kw})


def _step(pid: str, turn: int, lift: float = 0.0) -> PersonalityStep:
    ema = {t: min(5.0, 2.0 + 0.3 * turn + 0.1 * i + lift) for i, t in enumerate(BIG_FIVE_TRAITS)}
    return PersonalityStep(persona_id=pid, turn_index=turn, inferred={t: 3 for t in BIG_FIVE_TRAITS},
                           inferred_by="teacher", ema=ema, skipped=[], planned=ema)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> PublishBundle:
    folder = tmp_path_factory.mktemp("images")
    imgs = [_image(folder, n) for n in range(3)]
    a, b, c = (i.image_id for i in imgs)
    prov = Provenance(teacher_model="test-teacher", prompt_templates={"reasoning": "abc123"}, seed=7,
                      code_version="deadbeef", preset="tiny", config_hash="cafe")
    human = lambda n: [{"from": "human", "value": "<image>" * n + "hi"}, {"from": "gpt", "value": "ok"}]  # noqa: E731
    return PublishBundle(
        personas=[_persona("ptrain", "train"), _persona("p32", "bench_32k"), _persona("p128", "bench_128k")],
        dialogues=[
            _dialogue("ptrain", "train", [a, None, b, None]),
            _dialogue("p32", "bench_32k", [None, c, None, a]),
            _dialogue("p128", "bench_128k", [b, None, b, c]),
        ],
        images={i.image_id: i for i in imgs},
        memory_dbs={
            "ptrain": {
                "init_profile": {"name": "Ptrain"},
                "imgs": [a, b],
                "sessions": [{"interactions": [[{"time": "2024-05-01 10:00", "query": "<img_fill>\nlook"},
                                                {"response": "nice"}, [], [a]]]}],
            }
        },
        sft=[
            SFTRecord(record_id="s2", persona_id="ptrain", task="reasoning", conversations=human(2), image=[b, a],
                      provenance=prov),
            SFTRecord(record_id="s1", persona_id="ptrain", task="semantic_memory", conversations=human(1), image=[a],
                      provenance=prov),
            SFTRecord(record_id="s3", persona_id="ptrain", task="personality", conversations=human(0), provenance=prov),
        ],
        rl=[
            RLRecord(record_id="r1", persona_id="ptrain", kind="multiple_choice", images=[b], solution="(a)",
                     messages=[{"role": "user", "content": "<image>Which?\nOptions:\n(a). x"}], provenance=prov),
            RLRecord(record_id="r2", persona_id="ptrain", kind="open_qa", solution="tea",
                     messages=[{"role": "user", "content": "What do I drink?"}], provenance=prov),
        ],
        benchmark=[
            _item("q1", "p32", "50", evidence_turns=[1], evidence_images=[c]),
            _item("q2", "p32", "50", alignment={"chosen": "calm reply", "rejected": "bubbly reply"}),
            _item("q3", "p128", "200", question_type="Long-term Goal Tracking", choices={"(a)": "Yes", "(b)": "No"}),
        ],
        provenance=prov,
        personality_steps=[_step(pid, k) for pid in ("ptrain", "p32", "p128") for k in range(4)],
        card_sections={"Deduplication": "1 near-duplicate image removed."},
    )


def _digest(folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_hub_layout_loads_back_offline(bundle: PublishBundle, tmp_path: Path) -> None:
    out = tmp_path / "hub"
    manifest = export_hub_layout(bundle, out, pretty_name="Test set", license="cc-by-4.0")
    assert set(manifest) == CONFIGS
    assert manifest["histories"]["bench_32k"]["rows"] == 1
    assert set(datasets.get_dataset_config_names(str(out))) == CONFIGS

    expected = {
        "sft": {"train": 3}, "rl": {"train": 2}, "memory_db": {"train": 1},
        "histories": {"train": 1, "bench_32k": 1, "bench_128k": 1},
        "benchmark_32k": {"test": 2}, "benchmark_128k": {"test": 1},
    }
    loaded = {cfg: datasets.load_dataset(str(out), cfg, cache_dir=str(tmp_path / "cache")) for cfg in CONFIGS}
    assert {cfg: {s: len(d) for s, d in dd.items()} for cfg, dd in loaded.items()} == expected

    original = {i: _pixels(Image.open(r.path)) for i, r in bundle.images.items()}
    sft = loaded["sft"]["train"]
    assert sft["record_id"] == ["s1", "s2", "s3"]
    s2 = sft[1]
    assert s2["conversations"][0] == {"from": "human", "value": "<image><image>hi"}
    assert [_pixels(im).tolist() for im in s2["images"]] == [original[i].tolist() for i in bundle.sft[0].image]
    assert json.loads(s2["provenance"])["seed"] == 7

    hist = loaded["histories"]["bench_128k"][0]
    turns = [t for s in hist["sessions"] for t in s]
    assert [t["image_index"] for t in turns] == [0, -1, 1, 2]
    assert len(hist["images"]) == sum(t["user"].count("<img>") for t in turns)
    assert np.array_equal(_pixels(hist["images"][2]), original[bundle.dialogues[2].turns[3].image_id])
    assert hist["big_five"]["openness"] == 4.0

    q1, q2 = loaded["benchmark_32k"]["test"]
    assert q1["choices"]["(b)"] == "blue" and q1["history_persona_id"] == "p32" and q1["alignment"] is None
    assert np.array_equal(_pixels(q1["evidence_image_files"][0]), original[q1["evidence_images"][0]])
    assert json.loads(q2["alignment"]) == {"chosen": "calm reply", "rejected": "bubbly reply"}
    assert loaded["benchmark_128k"]["test"][0]["choices"]["(c)"] is None
    db = loaded["memory_db"]["train"][0]
    assert json.loads(db["user_data"])["imgs"] == bundle.memory_dbs["ptrain"]["imgs"] and len(db["images"]) == 2

    readme = (out / "README.md").read_text()
    meta = yaml.safe_load(readme.split("---")[1])
    assert {c["config_name"] for c in meta["configs"]} == CONFIGS
    assert {c["config_name"] for c in meta["dataset_info"]} == CONFIGS
    assert next(c for c in meta["configs"] if c["config_name"] == "sft")["default"] is True
    assert "abc123" in readme and "## Deduplication" in readme and "| reasoning | 1 |" in readme


def test_the_card_shows_charts_drawn_from_the_bundle(bundle: PublishBundle, tmp_path: Path) -> None:
    export_hub_layout(bundle, tmp_path / "a", pretty_name="T", license="mit")
    readme = (tmp_path / "a" / "README.md").read_text()
    links = [line[line.index("](") + 2:-1] for line in readme.splitlines() if line.startswith("![")]
    assert links == ["figures/task_distribution.png", "figures/history_lengths.png",
                     "figures/big_five_trajectories.png"]
    for link in links:
        with Image.open(tmp_path / "a" / link) as img:
            assert img.format == "PNG" and img.width >= 600
    assert "| bench_128k | 1 | 4 | 4 | 4 |" in readme  # history lengths: split, histories, min, median, max
    assert "| open_qa | 1 |" in readme  # RL records per kind

    # the trajectories chart follows the personality steps, and only it does
    moved = [_step(s.persona_id, s.turn_index, lift=1.5 if s.persona_id == "p32" else 0.0)
             for s in bundle.personality_steps]
    export_hub_layout(dataclasses.replace(bundle, personality_steps=moved), tmp_path / "b", pretty_name="T",
                      license="mit")
    changed = {link for link in links if (tmp_path / "a" / link).read_bytes() != (tmp_path / "b" / link).read_bytes()}
    assert changed == {"figures/big_five_trajectories.png"}


def test_hub_layout_shards_large_splits(bundle: PublishBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_layout, "MAX_SHARD_BYTES", 1)
    out = tmp_path / "hub"
    manifest = export_hub_layout(bundle, out, pretty_name="Test set", license="cc-by-4.0")
    assert manifest["sft"]["train"]["files"] == [f"sft/train-0000{i}-of-00003.parquet" for i in range(3)]
    ds = datasets.load_dataset(str(out), "sft", split="train", cache_dir=str(tmp_path / "cache"))
    assert ds["record_id"] == ["s1", "s2", "s3"]


def test_exports_are_deterministic(bundle: PublishBundle, tmp_path: Path) -> None:
    for name, export in (("hub", lambda o: export_hub_layout(bundle, o, pretty_name="T", license="mit")),
                         ("native", lambda o: export_native(bundle, o))):
        out = tmp_path / name
        export(out)
        first = _digest(out)
        export(out)
        assert _digest(out) == first
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{name}")] == []


def test_failed_export_keeps_previous_folder(
    bundle: PublishBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_: object) -> None:
        raise RuntimeError("disk full")

    hub, nat = tmp_path / "hub", tmp_path / "native"
    export_hub_layout(bundle, hub, pretty_name="T", license="mit")
    export_native(bundle, nat)
    before = {hub: _digest(hub), nat: _digest(nat)}
    monkeypatch.setattr(hub_layout, "_card_body", boom)  # runs after every parquet shard is written
    monkeypatch.setattr(native, "_rl", boom)  # runs after Persona-MME and SFT are written
    with pytest.raises(RuntimeError, match="disk full"):
        export_hub_layout(bundle, hub, pretty_name="T", license="mit")
    with pytest.raises(RuntimeError, match="disk full"):
        export_native(bundle, nat)
    assert {hub: _digest(hub), nat: _digest(nat)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub", "native"]


def test_native_layout_matches_personavlm(bundle: PublishBundle, tmp_path: Path) -> None:
    out = tmp_path / "rel"
    manifest = export_native(bundle, out)
    assert manifest["persona_mme"]["items"] == 3 and manifest["persona_mme"]["samples"] == 2

    items = json.loads((out / "data/Persona-MME/Persona-MME.json").read_text())
    base = ["data_path", "type", "question_type", "time", "query", "choices", "answer"]
    assert [list(i) for i in items] == [
        [*base, "id", "evidence_turns", "evidence_images"],
        [*base, "alignment", "id", "evidence_turns", "evidence_images"],
        [*base, "id", "evidence_turns", "evidence_images"],
    ]
    assert items[0]["data_path"] == "./data/Persona-MME/samples/50/p32/user_data.json"
    assert items[2]["data_path"] == "./data/Persona-MME/samples/200/p128/user_data.json"
    assert items[0]["evidence_images"] == ["0.png"]  # image c is the first image of p32's history
    for item in items:
        path = out / item["data_path"]
        user = json.loads(path.read_text())
        assert set(user) == {"profile", "imgs", "sessions"} and user["profile"]["name"]
        n_img = sum(t["user"].count("<img>") for s in user["sessions"] for t in s)
        assert len(user["imgs"]) == n_img and all((path.parent / f).is_file() for f in user["imgs"])
        assert all(set(t) == {"time", "user", "assistant"} for s in user["sessions"] for t in s)
    p128 = out / "data/Persona-MME/samples/200/p128"
    assert (p128 / "0.png").read_bytes() == (p128 / "1.png").read_bytes()  # a repeated image is stored per use
    mme = native.persona_mme(bundle)  # what the shortcut audit reads before anything is written
    assert mme.records == items
    assert mme.users == {i["data_path"]: json.loads((out / i["data_path"]).read_text()) for i in items}

    sft_dir = out / "data/training/sft"
    sft = json.loads((sft_dir / "sft.json").read_text())
    assert [len(r.get("image", [])) for r in sft] == [1, 2, 0] and "image" not in sft[2]
    for r in sft:
        assert sum(c["value"].count("<image>") for c in r["conversations"]) == len(r.get("image", []))
        assert all((sft_dir / p).is_file() for p in r.get("image", []))

    rl = [json.loads(line) for line in (out / "data/training/rl/rl.jsonl").read_text().splitlines()]
    assert [sorted(r) for r in rl] == [["images", "messages", "solution"]] * 2
    assert (out / rl[0]["images"][0]).is_file() and rl[1]["images"] == []

    sample = out / "data/training/samples/ptrain"
    db = json.loads((sample / "user_data.json").read_text())
    assert db["imgs"] == ["media/imgs/0.png", "media/imgs/1.png"]
    assert db["sessions"][0]["interactions"][0][3] == ["media/imgs/0.png"]
    ids = bundle.memory_dbs["ptrain"]["imgs"]
    assert [(sample / p).read_bytes() for p in db["imgs"]] == [Path(bundle.images[i].path).read_bytes() for i in ids]
