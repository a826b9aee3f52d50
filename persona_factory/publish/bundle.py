"""What the publish stage receives, and the atomic folder swap both exporters share."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_factory.schema import (
    BenchmarkItem,
    Dialogue,
    ImageRecord,
    Persona,
    PersonalityStep,
    Provenance,
    RLRecord,
    SFTRecord,
    Split,
)


@dataclass
class PublishBundle:
    """Everything one release is made of; exporters only read it, so one bundle feeds every layout."""

    personas: list[Persona]
    dialogues: list[Dialogue]
    images: dict[str, ImageRecord]  # image_id -> record; the PNG lies at ImageRecord.path
    # training persona_id -> PersonaVLM's per-user memory database (`user_data.json`); its `imgs` hold image ids
    memory_dbs: dict[str, dict[str, Any]]
    sft: list[SFTRecord]
    rl: list[RLRecord]
    benchmark: list[BenchmarkItem]
    provenance: Provenance
    personality_steps: list[PersonalityStep] = field(default_factory=list)  # released personas' trajectories
    card_sections: dict[str, str] = field(default_factory=dict)  # extra card sections: title -> markdown

    def persona(self, persona_id: str) -> Persona:
        for p in self.personas:
            if p.persona_id == persona_id:
                return p
        raise KeyError(f"persona {persona_id!r} is referenced but not in the bundle")

    def image_path(self, image_id: str) -> Path:
        if image_id not in self.images:
            raise KeyError(f"image {image_id!r} is referenced but not in the bundle")
        return Path(self.images[image_id].path)

    def benchmark_split(self, item: BenchmarkItem) -> Split:
        """The history split an item is asked on; a benchmark item on a training persona is a leak."""
        split = self.persona(item.persona_id).split
        if split == "train":
            raise ValueError(f"benchmark item {item.item_id!r} is posed on training persona {item.persona_id!r}")
        return split


def history_images(dialogue: Dialogue) -> list[str]:
    """Image ids in `<img>` order: the order PersonaVLM's loader consumes a history's `imgs`."""
    return [t.image_id for t in dialogue.turns if t.image_id is not None]


@contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield an empty sibling temp folder; on success swap it in for `out_dir`, on error drop it.

    Readers see either the previous release or the new one, never a half-written folder. Exports into one parent
    folder take turns (a lock on it), and each first sweeps what a killed one left: its temp folder, or the
    previous release moved aside just before the swap (put back when the folder itself is missing).
    """
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(out_dir.parent):
        _sweep(out_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.new-", dir=out_dir.parent))
        try:
            yield tmp
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; a release folder is not
            old = tmp.with_name(tmp.name.replace(".new-", ".old-"))
            if out_dir.exists():
                out_dir.rename(old)
            try:
                tmp.rename(out_dir)
            except BaseException:
                if old.exists():
                    old.rename(out_dir)
                raise
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _sweep(out_dir: Path) -> None:
    """Temp folders of exports killed before their swap: a new one is dropped; an old one is the previous release
    (put back when the swap never happened), else dropped."""
    for stale in sorted(out_dir.parent.glob(f".{out_dir.name}.new-*")):
        shutil.rmtree(stale, ignore_errors=True)
    for old in sorted(out_dir.parent.glob(f".{out_dir.name}.old-*")):
        if not out_dir.exists():
            old.rename(out_dir)
        else:
            shutil.rmtree(old, ignore_errors=True)
