"""Write a release in PersonaVLM's own file layout, so its eval and training code can run: Persona-MME's
`Persona-MME.json` question list with one `user_data.json` history per sample folder, Qwen2.5-VL SFT json, ms-swift
RL jsonl, and per-user memory databases."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_factory.publish.bundle import PublishBundle, atomic_dir, history_images

MME_DIR = "data/Persona-MME"
SFT_DIR = "data/training/sft"
RL_DIR = "data/training/rl"
SAMPLES_DIR = "data/training/samples"


def export_native(bundle: PublishBundle, out_dir: Path) -> dict:
    """Write `out_dir/data/...` atomically; return what was written, per part, with counts."""
    with atomic_dir(out_dir) as tmp:
        return {
            "persona_mme": _persona_mme(bundle, tmp),
            "sft": _sft(bundle, tmp),
            "rl": _rl(bundle, tmp),
            "memory_dbs": _memory_dbs(bundle, tmp),
        }


@dataclass
class PersonaMME:
    """The Persona-MME part of a release as data: what `Persona-MME.json` and each `user_data.json` hold."""

    records: list[dict[str, Any]]  # the question list, in file order
    users: dict[str, dict[str, Any]]  # data_path -> that user's user_data.json
    images: dict[str, list[str]]  # data_path -> image ids, in the order of its `imgs` file names


def persona_mme(bundle: PublishBundle) -> PersonaMME:
    """One user_data per asked persona and the flat question list, built in memory (the shortcut audit reads this
    before anything is written; the exporter writes exactly this)."""
    items = sorted(bundle.benchmark, key=lambda i: i.item_id)
    buckets: dict[str, str] = {}
    for item in items:
        bundle.benchmark_split(item)  # raises on an item posed on a training persona
        if buckets.setdefault(item.persona_id, item.bucket) != item.bucket:
            raise ValueError(
                f"persona {item.persona_id!r} has items in buckets {buckets[item.persona_id]!r} and {item.bucket!r}"
            )
    dialogues = {d.persona_id: d for d in bundle.dialogues}
    users: dict[str, dict[str, Any]] = {}
    images: dict[str, list[str]] = {}
    files: dict[str, dict[str, str]] = {}  # persona_id -> image_id -> file name of its first occurrence
    for pid, bucket in sorted(buckets.items()):
        if pid not in dialogues:
            raise KeyError(f"benchmark persona {pid!r} has no dialogue in the bundle")
        d = dialogues[pid]
        data_path = f"./{MME_DIR}/samples/{bucket}/{pid}/user_data.json"
        ids = history_images(d)
        imgs = _image_names(ids)
        users[data_path] = {
            "profile": bundle.persona(pid).profile.to_spec(),
            "imgs": imgs,
            "sessions": [
                [{"time": t.time, "user": t.user, "assistant": t.assistant} for t in s.turns] for s in d.sessions
            ],
        }
        images[data_path] = ids
        files[pid] = dict(zip(reversed(ids), reversed(imgs)))  # a repeated image resolves to its first file
    records = []
    for item in items:
        missing = [i for i in item.evidence_images if i not in files[item.persona_id]]
        if missing:
            raise ValueError(f"benchmark item {item.item_id!r} cites images {missing} absent from its history")
        records.append(
            {
                "data_path": f"./{MME_DIR}/samples/{item.bucket}/{item.persona_id}/user_data.json",
                "type": item.type,
                "question_type": item.question_type,
                "time": item.time,
                "query": item.query,
                "choices": item.choices,
                "answer": item.answer,
                **({"alignment": item.alignment} if item.alignment is not None else {}),
                "id": item.item_id,  # what prediction files name; the eval script ignores keys it does not use
                "evidence_turns": item.evidence_turns,
                "evidence_images": [files[item.persona_id][i] for i in item.evidence_images],  # files beside data_path
            }
        )
    return PersonaMME(records=records, users=users, images=images)


def _persona_mme(bundle: PublishBundle, root: Path) -> dict[str, Any]:
    """One `samples/<bucket>/<persona_id>/user_data.json` (with its images) per asked persona, and the question list."""
    mme = persona_mme(bundle)
    for data_path, user_data in mme.users.items():
        folder = (root / data_path).parent
        _copy_images(bundle, mme.images[data_path], user_data["imgs"], folder)
        _write_json(folder / "user_data.json", user_data)
    _write_json(root / MME_DIR / "Persona-MME.json", mme.records)
    return {"path": f"{MME_DIR}/Persona-MME.json", "items": len(mme.records), "samples": len(mme.users)}


def _sft(bundle: PublishBundle, root: Path) -> dict[str, Any]:
    """Qwen2.5-VL `conversations` records; `image` paths are relative to the json, key absent for text-only."""
    records = []
    for r in sorted(bundle.sft, key=lambda r: r.record_id):
        _copy_by_id(bundle, r.image, root / SFT_DIR / "imgs")
        images = {"image": [f"./imgs/{i}.png" for i in r.image]} if r.image else {}
        records.append({"conversations": r.conversations, **images})
    _write_json(root / SFT_DIR / "sft.json", records)
    return {"path": f"{SFT_DIR}/sft.json", "records": len(records)}


def _rl(bundle: PublishBundle, root: Path) -> dict[str, Any]:
    """ms-swift JSONL; image paths are relative to the release root, where ms-swift is launched from."""
    lines = []
    for r in sorted(bundle.rl, key=lambda r: r.record_id):
        _copy_by_id(bundle, r.images, root / RL_DIR / "imgs")
        row = {"messages": r.messages, "images": [f"./{RL_DIR}/imgs/{i}.png" for i in r.images], "solution": r.solution}
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    (root / RL_DIR).mkdir(parents=True, exist_ok=True)
    (root / RL_DIR / "rl.jsonl").write_text("".join(lines), encoding="utf-8")
    return {"path": f"{RL_DIR}/rl.jsonl", "records": len(lines)}


def _memory_dbs(bundle: PublishBundle, root: Path) -> dict[str, Any]:
    """Per-user memory DBs with their images under `media/imgs/`; every image id inside becomes that path."""
    for pid, db in sorted(bundle.memory_dbs.items()):
        folder = root / SAMPLES_DIR / pid
        ids = list(db.get("imgs", []))
        paths = _image_names(ids, prefix="media/imgs/")
        _copy_images(bundle, ids, paths, folder)
        names = dict(zip(reversed(ids), reversed(paths)))  # an id repeated in `imgs` maps to its first file
        _write_json(folder / "user_data.json", {**_replace_ids(db, names), "imgs": paths})
    return {"path": SAMPLES_DIR, "users": len(bundle.memory_dbs)}


def _replace_ids(obj: Any, names: dict[str, str]) -> Any:
    if isinstance(obj, str):
        return names.get(obj, obj)
    if isinstance(obj, list):
        return [_replace_ids(x, names) for x in obj]
    if isinstance(obj, dict):
        return {k: _replace_ids(v, names) for k, v in obj.items()}
    return obj


def _image_names(image_ids: list[str], prefix: str = "") -> list[str]:
    """`<prefix><n>.png` in the given order: loaders consume a user's images by position."""
    return [f"{prefix}{n}.png" for n in range(len(image_ids))]


def _copy_images(bundle: PublishBundle, image_ids: list[str], names: list[str], folder: Path) -> None:
    for image_id, name in zip(image_ids, names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundle.image_path(image_id), folder / name)


def _copy_by_id(bundle: PublishBundle, image_ids: list[str], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for image_id in image_ids:
        if not (folder / f"{image_id}.png").exists():
            shutil.copyfile(bundle.image_path(image_id), folder / f"{image_id}.png")


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
