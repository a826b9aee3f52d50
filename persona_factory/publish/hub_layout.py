"""Write a release as a Hugging Face Hub dataset folder that `datasets.load_dataset(folder, config)` reads offline.

Parquet shards plus a README whose `configs:` / `dataset_info:` YAML is written by datasets' own helpers
(MetadataConfigs, DatasetInfosDict), so the folder is a dataset repo as is and push.py commits it unchanged.
Images are embedded as PNG bytes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from datasets import Dataset, DatasetInfo, Features, Image, List, Value
from datasets.info import DatasetInfosDict
from datasets.splits import SplitDict, SplitInfo
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData

from persona_factory.config import canonical_json
from persona_factory.markdown import markdown_table
from persona_factory.publish.bundle import PublishBundle, atomic_dir, history_images
from persona_factory.publish.charts import write_charts
from persona_factory.schema import BIG_FIVE_TRAITS, BenchmarkItem, Dialogue, RLRecord, SFTRecord, Split

DEFAULT_CONFIG = "sft"
MAX_SHARD_BYTES = 200 * 1024**2  # the Hub viewer and git-xet handle files of this size comfortably
CHOICE_KEYS = ("(a)", "(b)", "(c)", "(d)")
HISTORY_SPLITS: tuple[Split, ...] = ("train", "bench_32k", "bench_128k")

_STR = Value("string")
_IMAGES = List(Image())
_FEATURES: dict[str, Features] = {
    "sft": Features(
        {
            "record_id": _STR,
            "persona_id": _STR,
            "task": _STR,
            "conversations": List({"from": _STR, "value": _STR}),
            "images": _IMAGES,
            "provenance": _STR,
        }
    ),
    "rl": Features(
        {
            "record_id": _STR,
            "persona_id": _STR,
            "kind": _STR,
            "messages": List({"role": _STR, "content": _STR}),
            "images": _IMAGES,
            "solution": _STR,
            "provenance": _STR,
        }
    ),
    "histories": Features(
        {
            "persona_id": _STR,
            "profile": _STR,
            "big_five": {t: Value("float64") for t in BIG_FIVE_TRAITS},
            "role_description": _STR,
            "sessions": List(
                List(
                    {
                        "time": _STR,
                        "user": _STR,
                        "assistant": _STR,
                        "image_index": Value("int32"),
                        "realizes": List(_STR),
                    }
                )
            ),
            "images": _IMAGES,
        }
    ),
    "memory_db": Features({"persona_id": _STR, "user_data": _STR, "images": _IMAGES}),
}
_BENCHMARK_FEATURES = Features(
    {
        "item_id": _STR,
        "persona_id": _STR,
        "bucket": _STR,
        "type": _STR,
        "question_type": _STR,
        "time": _STR,
        "query": _STR,
        "choices": {k: _STR for k in CHOICE_KEYS},
        "answer": _STR,
        "evidence_turns": List(Value("int32")),
        "evidence_images": List(_STR),
        "source_item_ids": List(_STR),
        "alignment": _STR,
        "evidence_image_files": _IMAGES,
        "history_persona_id": _STR,
    }
)


@dataclass
class _Table:
    """One split's rows; image columns hold image ids until a shard is written, to keep memory per shard."""

    rows: list[dict[str, Any]]
    features: Features


def export_hub_layout(bundle: PublishBundle, out_dir: Path, *, pretty_name: str, license: str) -> dict:
    """Write every config to `out_dir` atomically; return {config: {split: {"rows", "files"}}}."""
    tables = _tables(bundle)
    manifest: dict[str, dict[str, dict[str, Any]]] = {}
    card_data = DatasetCardData(
        pretty_name=pretty_name,
        license=license,
        language=["en"],
        task_categories=["image-text-to-text", "visual-question-answering"],
        tags=["personalization", "long-term-memory", "synthetic", "persona"],
    )
    infos: dict[str, DatasetInfo] = {}
    meta: dict[str, dict[str, Any]] = {}
    with atomic_dir(out_dir) as tmp:
        for cfg, splits in tables.items():
            split_dict, data_files, download_size = SplitDict(), [], 0
            for split, table in splits.items():
                files, num_bytes = _write_split(bundle, table, tmp, f"{cfg}/{split}")
                download_size += sum((tmp / f).stat().st_size for f in files)
                split_dict.add(SplitInfo(name=split, num_bytes=num_bytes, num_examples=len(table.rows)))
                data_files.append({"split": split, "path": f"{cfg}/{split}-*"})
                manifest.setdefault(cfg, {})[split] = {"rows": len(table.rows), "files": files}
            features = next(iter(splits.values())).features
            infos[cfg] = DatasetInfo(
                config_name=cfg,
                features=features,
                splits=split_dict,
                download_size=download_size,
                dataset_size=sum(s.num_bytes for s in split_dict.values()),
            )
            meta[cfg] = {"data_files": data_files, **({"default": True} if cfg == DEFAULT_CONFIG else {})}
        DatasetInfosDict(infos).to_dataset_card_data(card_data)
        MetadataConfigs(meta).to_dataset_card_data(card_data)
        figures = write_charts(bundle, tmp)
        body = _card_body(bundle, pretty_name, manifest, figures)
        DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}").save(tmp / "README.md")
    return manifest


# ---------------------------------------------------------------------------------------------- rows


def _tables(bundle: PublishBundle) -> dict[str, dict[str, _Table]]:
    """Config -> split -> rows, sorted by id; splits without rows are left out (the loader rejects empty globs)."""
    sft = [_sft_row(r) for r in sorted(bundle.sft, key=lambda r: r.record_id)]
    rl = [_rl_row(r) for r in sorted(bundle.rl, key=lambda r: r.record_id)]
    memory = [
        {"persona_id": pid, "user_data": canonical_json(db), "images": list(db.get("imgs", []))}
        for pid, db in sorted(bundle.memory_dbs.items())
    ]
    histories: dict[str, list[dict[str, Any]]] = {s: [] for s in HISTORY_SPLITS}
    for d in sorted(bundle.dialogues, key=lambda d: d.persona_id):
        histories[d.split].append(_history_row(bundle, d))
    bench: dict[str, list[dict[str, Any]]] = {s: [] for s in HISTORY_SPLITS[1:]}
    for item in sorted(bundle.benchmark, key=lambda i: i.item_id):
        bench[bundle.benchmark_split(item)].append(_benchmark_row(item))
    out = {
        "sft": {"train": _Table(sft, _FEATURES["sft"])},
        "rl": {"train": _Table(rl, _FEATURES["rl"])},
        "histories": {s: _Table(rows, _FEATURES["histories"]) for s, rows in histories.items()},
        "memory_db": {"train": _Table(memory, _FEATURES["memory_db"])},
        **{_bench_config(s): {"test": _Table(rows, _BENCHMARK_FEATURES)} for s, rows in bench.items()},
    }
    return {
        cfg: {split: t for split, t in splits.items() if t.rows}
        for cfg, splits in out.items()
        if any(t.rows for t in splits.values())
    }


def _bench_config(split: str) -> str:
    return split.replace("bench_", "benchmark_")


def _sft_row(r: SFTRecord) -> dict[str, Any]:
    return {
        "record_id": r.record_id,
        "persona_id": r.persona_id,
        "task": r.task,
        "conversations": r.conversations,
        "images": list(r.image),
        "provenance": canonical_json(r.provenance.model_dump()),
    }


def _rl_row(r: RLRecord) -> dict[str, Any]:
    return {
        "record_id": r.record_id,
        "persona_id": r.persona_id,
        "kind": r.kind,
        "messages": r.messages,
        "images": list(r.images),
        "solution": r.solution,
        "provenance": canonical_json(r.provenance.model_dump()),
    }


def _history_row(bundle: PublishBundle, d: Dialogue) -> dict[str, Any]:
    persona = bundle.persona(d.persona_id)
    images = history_images(d)
    positions = iter(range(len(images)))
    sessions = [
        [
            {
                "time": t.time,
                "user": t.user,
                "assistant": t.assistant,
                "image_index": -1 if t.image_id is None else next(positions),
                "realizes": t.realizes,
            }
            for t in s.turns
        ]
        for s in d.sessions
    ]
    return {
        "persona_id": d.persona_id,
        "profile": canonical_json(persona.profile.to_spec()),
        "big_five": persona.big_five.model_dump(),
        "role_description": persona.role_description,
        "sessions": sessions,
        "images": images,
    }


def _benchmark_row(item: BenchmarkItem) -> dict[str, Any]:
    extra = set(item.choices) - set(CHOICE_KEYS)
    if extra:
        raise ValueError(f"benchmark item {item.item_id!r} has choice keys {sorted(extra)} outside {CHOICE_KEYS}")
    return {
        **item.model_dump(),
        "choices": {k: item.choices.get(k) for k in CHOICE_KEYS},
        "alignment": None if item.alignment is None else canonical_json(item.alignment),
        "evidence_image_files": list(item.evidence_images),
        "history_persona_id": item.persona_id,
    }


# ---------------------------------------------------------------------------------------------- parquet


def _write_split(bundle: PublishBundle, table: _Table, root: Path, prefix: str) -> tuple[list[str], int]:
    """Write `<prefix>-0000i-of-0000n.parquet` shards of at most ~MAX_SHARD_BYTES; return files and arrow bytes."""
    image_cols = [c for c, f in table.features.items() if f == _IMAGES]
    shards: list[list[dict[str, Any]]] = [[]]
    size = 0
    for row in table.rows:
        row_size = len(canonical_json({k: v for k, v in row.items() if k not in image_cols})) + sum(
            bundle.image_path(i).stat().st_size for c in image_cols for i in row[c]
        )
        if shards[-1] and size + row_size > MAX_SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(row)
        size += row_size
    files, num_bytes = [], 0
    for n, shard in enumerate(shards):
        rows = [{**row, **{c: _embed(bundle, row[c]) for c in image_cols}} for row in shard]
        ds = Dataset.from_list(rows, features=table.features)
        rel = f"{prefix}-{n:05d}-of-{len(shards):05d}.parquet"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(root / rel))
        files.append(rel)
        num_bytes += ds.data.nbytes
    return files, num_bytes


def _embed(bundle: PublishBundle, image_ids: list[str]) -> list[dict[str, Any]]:
    """PNG bytes with a bare file name: no build-machine path ends up in the shards."""
    return [{"bytes": bundle.image_path(i).read_bytes(), "path": f"{i}.png"} for i in image_ids]


# ---------------------------------------------------------------------------------------------- card


def _card_body(bundle: PublishBundle, pretty_name: str, manifest: dict[str, dict[str, dict[str, Any]]],
               figures: dict[str, str]) -> str:
    """Markdown with no timestamps, so an unchanged bundle gives a byte-identical card."""
    prov = bundle.provenance
    lines = [
        f"# {pretty_name}",
        "",
        "Synthetic long-term, multimodal personalization data in the style of PersonaVLM (Nie et al., CVPR 2026): "
        "persona dialogue histories with images, per-user memory databases, SFT and RL training records "
        "(PersonaVLM-Dataset style) and in-situ multiple-choice benchmark items (Persona-MME style) "
        "with evidence turns.",
        "",
        "| config | content |",
        "|---|---|",
        "| `sft` (default) | Qwen2.5-VL `conversations` records; `images` in `<image>` order |",
        "| `rl` | ms-swift GRPO records: `messages`, `images`, `solution` |",
        "| `histories` | one row per persona dialogue; a turn's `image_index` points into `images` "
        "(`<img>` order), -1 if none |",
        "| `memory_db` | per-user memory database (`user_data.json` shape); `images` in its `imgs` order |",
        "| `benchmark_32k`, `benchmark_128k` | Persona-MME-style items; join `history_persona_id` to `histories` |",
        "",
        "## How it was made",
        "",
        f"- Teacher model: `{prov.teacher_model}`",
        f"- Seed: `{prov.seed}`",
        f"- Code version: `{prov.code_version}`",
        f"- Preset: `{prov.preset}`",
        f"- Config hash: `{prov.config_hash}`",
        "",
        "| prompt template | content hash |",
        "|---|---|",
        *(f"| `{name}` | `{h}` |" for name, h in sorted(prov.prompt_templates.items())),
        "",
        "## Counts",
        "",
        "| config | split | rows |",
        "|---|---|---|",
        *(f"| {cfg} | {split} | {v['rows']} |" for cfg, splits in manifest.items() for split, v in splits.items()),
        "",
        "### SFT records per task",
        "",
        *_count_table("task", Counter(r.task for r in bundle.sft)),
        "",
        "### RL records per kind",
        "",
        *_count_table("kind", Counter(r.kind for r in bundle.rl)),
        "",
        "### History lengths (turns)",
        "",
        markdown_table(("split", "histories", "min", "median", "max"), _length_rows(bundle)),
    ]
    for split in HISTORY_SPLITS[1:]:
        items = [i for i in bundle.benchmark if bundle.benchmark_split(i) == split]
        if items:
            counts = Counter(f"{i.type} / {i.question_type}" for i in items)
            lines += ["", f"### {_bench_config(split)} items per question type", ""]
            lines += _count_table("aspect / question_type", counts)
            lines += ["", f"Items with a personality-alignment pair: {sum(i.alignment is not None for i in items)}"]
    for title, text in bundle.card_sections.items():
        lines += ["", f"## {title}", "", text.strip()]
    lines += ["", "## Charts"]
    for title, path in figures.items():
        lines += ["", f"### {title}", "", f"![{title}]({path})"]
    return "\n".join(lines) + "\n"


def _count_table(header: str, counts: Counter[str]) -> list[str]:
    return markdown_table((header, "rows"), sorted(counts.items())).splitlines()


def _length_rows(bundle: PublishBundle) -> list[tuple[str, int, int, float, int]]:
    rows = []
    for split in HISTORY_SPLITS:
        lengths = sorted(len(d.turns) for d in bundle.dialogues if d.split == split)
        if lengths:
            rows.append((split, len(lengths), lengths[0], median(lengths), lengths[-1]))
    return rows
