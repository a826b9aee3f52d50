"""M1 personas: seeds from the bundled list, a file or a Hub dataset; enriched by the teacher into a role
description and a PersonaVLM profile; a Big Five vector drawn from a declared, seeded distribution."""

from __future__ import annotations

import codecs
import csv
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..config import ConfigError, InputError, PipelineConfig, SourceSettings
from ..schema import (
    BIG_FIVE_TRAITS, BUCKET_MAX_TURNS, BigFive, Persona, PersonaSeed, Profile, QuarantineRow, Split, fmt_time,
)
from ..teacher.types import TeacherRequest, TeacherResult
from .common import chat, personality_text, rng_for, sampling, stable_id

BUNDLED_SEEDS = Path(__file__).resolve().parent.parent / "data" / "persona_seeds.txt"
BUNDLED_SEED_PARTS = Path(__file__).resolve().parent.parent / "data" / "persona_seed_parts.yaml"
FIRST_DAY = datetime(2024, 4, 1, 9, 0)  # simulated calendars start within 120 days of this

Short = Annotated[str, StringConstraints(min_length=2, max_length=40)]


class PersonaDraft(BaseModel):
    """What the teacher writes for a persona (structured output)."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, StringConstraints(min_length=2, max_length=24)]
    gender: Literal["female", "male", "non-binary"]
    age: int = Field(ge=18, le=80)
    role_description: Annotated[str, StringConstraints(min_length=10, max_length=240)]
    preferences: list[Short] = Field(min_length=2, max_length=6)
    recent_matters: list[Short] = Field(min_length=1, max_length=3)
    requirements: Annotated[str, StringConstraints(min_length=5, max_length=120)]


CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # never in text a person wrote; common in binary files
MAX_SEED_CHARS = 2000  # a longer "seed" is a pasted document, not a persona description
SEEDS_TABLE = "persona_seeds"


def load_seeds(source: SourceSettings) -> list[PersonaSeed]:
    return read_seeds(source)[0]


def read_seeds(source: SourceSettings) -> tuple[list[PersonaSeed], list[QuarantineRow]]:
    """The distinct seeds of the source, and a quarantine row per line or row that cannot be one (the rest is
    used); an error naming the file and setting when nothing is usable."""
    if source.kind == "bundled":
        rows, quarantined, origin = list(enumerate(bundled_seed_texts(), 1)), [], "bundled"
    elif source.kind == "file":
        rows, quarantined = _read_seed_file(Path(source.path), source.column)
        origin = f"file:{source.path}"
    else:
        rows, quarantined = _read_seed_dataset(source)
        origin = f"hub:{source.path}"
    first: dict[str, int] = {}
    seeds = []
    for line, raw in rows:
        text = raw.strip()
        if not text:
            continue
        if len(text) > MAX_SEED_CHARS:
            quarantined.append(_bad_seed(source, line, "too_long", f"{len(text)} characters (at most "
                                                                   f"{MAX_SEED_CHARS})"))
        elif text in first:  # exact duplicate seeds would make identical persona ids
            quarantined.append(_bad_seed(source, line, "duplicate_seed", f"same text as line {first[text]}"))
        else:
            first[text] = line
            seeds.append(PersonaSeed(seed_id=stable_id("s_", text), text=text, source=origin))
    if not seeds:
        why = f"; the first problem: {quarantined[0].row_key}: {quarantined[0].value}" if quarantined else ""
        raise InputError(f"{_where(source)} holds no usable persona seed{why}")
    return seeds, quarantined


def _where(source: SourceSettings) -> str:
    kind = "persona seed file" if source.kind == "file" else "persona seed dataset"
    return f"{kind} {source.path!r} (setting `persona_source.path`)"


def _bad_seed(source: SourceSettings, line: int, rule: str, why: str) -> QuarantineRow:
    unit = "row" if source.kind == "hub" else "line"
    return QuarantineRow(table_name=SEEDS_TABLE, row_key=f"{source.path} {unit} {line}", rule=rule, value=why)


def bundled_seed_texts() -> list[str]:
    """The hand-written seeds, then every occupation paired with every pursuit, in a fixed shuffled order (so the
    first few hundred mix occupations and pursuits)."""
    parts = yaml.safe_load(BUNDLED_SEED_PARTS.read_text())
    combined = [f"{'An' if job[0] in 'aeiou' else 'A'} {job} who {pursuit}." for job in parts["occupations"]
                for pursuit in parts["pursuits"]]
    random.Random(0).shuffle(combined)
    return BUNDLED_SEEDS.read_text().splitlines() + combined


Rows = list[tuple[int, str]]  # (line or row number, seed text)


def _read_seed_file(path: Path, column: str) -> tuple[Rows, list[QuarantineRow]]:
    source = SourceSettings(kind="file", path=str(path), column=column)
    if not path.exists():
        raise ConfigError(f"{_where(source)} does not exist")
    if not path.is_file():  # a folder, a FIFO or a device would be read forever or not at all
        raise InputError(f"{_where(source)} is not a regular file")
    reader = SEED_FILE_READERS.get(path.suffix.lower())
    if reader is None:
        raise InputError(f"{_where(source)} has the suffix {path.suffix!r}; use .txt (one seed a line), .jsonl or "
                         f".csv (text in the column named by `persona_source.column`)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{_where(source)} cannot be read: {e.strerror}") from None
    if b"\x00" in data[:8192]:  # how binary files (spreadsheets, archives, images) give themselves away
        raise InputError(f"{_where(source)} holds binary data, not text: save the seeds as .txt, .jsonl or .csv")
    lines, quarantined = _text_lines(source, data)
    rows, bad = reader(source, lines)
    return rows, quarantined + bad


def _text_lines(source: SourceSettings, data: bytes) -> tuple[Rows, list[QuarantineRow]]:
    """Numbered UTF-8 lines (a byte-order mark, as Excel writes, is dropped); lines that are not text are
    quarantined."""
    lines, quarantined = [], []
    for n, raw in enumerate(data.removeprefix(codecs.BOM_UTF8).split(b"\n"), 1):
        try:
            text = raw.decode("utf-8").removesuffix("\r")
        except UnicodeDecodeError as e:
            quarantined.append(_bad_seed(source, n, "not_utf8", f"byte {e.start} is not UTF-8"))
            continue
        if control := CONTROL_CHARS.search(text):
            quarantined.append(_bad_seed(source, n, "not_text", f"holds the control character "
                                                                f"{control.group()!r}: binary data, not text"))
            continue
        lines.append((n, text))
    return lines, quarantined


def _text_rows(source: SourceSettings, lines: Rows) -> tuple[Rows, list[QuarantineRow]]:
    return lines, []


def _jsonl_rows(source: SourceSettings, lines: Rows) -> tuple[Rows, list[QuarantineRow]]:
    rows, quarantined = [], []
    for n, line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            quarantined.append(_bad_seed(source, n, "not_json", f"not JSON ({e.msg}, column {e.colno})"))
            continue
        rows += _field(source, n, obj, quarantined)
    return rows, quarantined


def _csv_rows(source: SourceSettings, lines: Rows) -> tuple[Rows, list[QuarantineRow]]:
    numbers = [n for n, _ in lines]
    reader = csv.reader([text for _, text in lines])
    try:
        header = next(reader, None)
        if header is None:
            return [], []
        if source.column not in header:
            raise InputError(f"{_where(source)} has no column {source.column!r} (setting `persona_source.column`); "
                             f"its header row has {header}")
        at = header.index(source.column)
        rows, quarantined = [], []
        for record in reader:
            n = numbers[reader.line_num - 1]
            if not record:
                continue
            if len(record) != len(header):
                rule = "short_row" if len(record) < len(header) else "long_row"
                quarantined.append(_bad_seed(source, n, rule, f"{len(record)} fields, the header has {len(header)} "
                                             "(quote a text that holds commas)"))
                continue
            rows += _field(source, n, {source.column: record[at]}, quarantined)
        return rows, quarantined
    except csv.Error as e:
        raise InputError(f"{_where(source)} line {numbers[min(reader.line_num, len(numbers)) - 1]} is not CSV: "
                         f"{e}") from None


def _field(source: SourceSettings, n: int, obj: object, quarantined: list[QuarantineRow]) -> Rows:
    """The seed text of one record, or a quarantine row saying why it has none."""
    if not isinstance(obj, dict):
        quarantined.append(_bad_seed(source, n, "not_an_object", f"a JSON {type(obj).__name__}, not an object"))
    elif source.column not in obj:
        quarantined.append(_bad_seed(source, n, "missing_column", f"no {source.column!r} key (setting "
                                     "`persona_source.column`)"))
    elif not isinstance(obj[source.column], str):
        quarantined.append(_bad_seed(source, n, "not_text", f"{source.column!r} holds a "
                                     f"{type(obj[source.column]).__name__}, not text"))
    elif not obj[source.column].strip():
        quarantined.append(_bad_seed(source, n, "empty_text", f"{source.column!r} is empty"))
    else:
        return [(n, obj[source.column])]
    return []


SEED_FILE_READERS = {"": _text_rows, ".txt": _text_rows, ".text": _text_rows, ".jsonl": _jsonl_rows,
                     ".csv": _csv_rows}


def _read_seed_dataset(source: SourceSettings) -> tuple[Rows, list[QuarantineRow]]:
    import datasets

    try:
        ds = datasets.load_dataset(source.path, split=source.split)
    except Exception as e:  # the datasets library raises many types for a missing or unreadable dataset
        raise InputError(f"{_where(source)} (split `persona_source.split` = {source.split!r}) cannot be loaded: "
                         f"{type(e).__name__}: {_first_line(e)}") from None
    if source.column not in ds.column_names:
        raise ConfigError(f"dataset {source.path!r} has no column {source.column!r} (setting "
                          f"`persona_source.column`); columns: {ds.column_names}")
    rows, quarantined = [], []
    for i, value in enumerate(ds[source.column]):
        rows += _field(source, i, {source.column: value}, quarantined)
    return rows, quarantined


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def shard_keys(cfg: PipelineConfig) -> list[str]:
    return [f"shard-{i:03d}" for i in range(cfg.personas.shards)]


@dataclass(frozen=True)
class Assignment:
    seed: PersonaSeed
    split: Split
    shard: str
    bucket: str | None  # benchmark personas: the Persona-MME bucket their history is sized for


def assign_splits(seeds: list[PersonaSeed], cfg: PipelineConfig) -> list[Assignment]:
    """Deterministic, disjoint assignment of seeds to train and the two benchmark configs, to shards (round robin
    over the assignment order, so shards are balanced and every split is spread over them) and, within each
    benchmark config, alternately to its two buckets, so each bucket gets half of the config's personas."""
    counts = cfg.personas
    need = counts.train + counts.bench_32k + counts.bench_128k
    if need > len(seeds):
        raise ConfigError(f"personas.* asks for {need} personas but the seed source (setting `persona_source`) has "
                          f"{len(seeds)} distinct seeds")
    order = sorted(seeds, key=lambda s: s.seed_id)
    rng_for(cfg.seed, "split").shuffle(order)
    splits: list[Split] = ["train"] * counts.train + ["bench_32k"] * counts.bench_32k + ["bench_128k"] * counts.bench_128k
    keys = shard_keys(cfg)
    out, within = [], Counter[str]()
    for i, (seed, split) in enumerate(zip(order, splits)):
        bucket = str(BUCKET_MAX_TURNS[split][within[split] % 2]) if split in BUCKET_MAX_TURNS else None
        within[split] += 1
        out.append(Assignment(seed, split, keys[i % len(keys)], bucket))
    return out


def sample_big_five(cfg: PipelineConfig, seed: PersonaSeed) -> BigFive:
    """Each trait ~ Normal(plan.big_five_mean, plan.big_five_std), clipped to [1, 5], one decimal."""
    rng = rng_for(cfg.seed, "big_five", seed.seed_id)
    mean, std = cfg.plan.big_five_mean, cfg.plan.big_five_std
    return BigFive(**{t: round(min(5.0, max(1.0, rng.gauss(mean, std))), 1) for t in BIG_FIVE_TRAITS})


def enrichment_request(cfg: PipelineConfig, seed: PersonaSeed, big_five: BigFive) -> TeacherRequest:
    messages = chat("persona_enrichment", seed=seed.text, big_five=personality_text(big_five),
                    n_preferences=cfg.plan.preferences, n_matters=2)
    return TeacherRequest(messages, sampling(cfg, "persona", seed.seed_id, schema=PersonaDraft),
                          PersonaDraft, tag=f"persona:{seed.seed_id}")


def build_personas(
    cfg: PipelineConfig, assigned: list[Assignment], results: list[TeacherResult]
) -> tuple[list[Persona], list[QuarantineRow]]:
    personas, quarantined = [], []
    for a, res in zip(assigned, results):
        seed = a.seed
        if not res.ok:
            quarantined.append(QuarantineRow(table_name="personas", row_key=seed.seed_id, rule="teacher_failure",
                                             value=res.failure or ""))
            continue
        draft: PersonaDraft = res.value  # type: ignore[assignment]
        start = FIRST_DAY + timedelta(days=rng_for(cfg.seed, "start", seed.seed_id).randrange(120))
        profile = Profile(
            name=draft.name.strip(), gender=draft.gender, age=draft.age,
            preferences=[p.strip() for p in draft.preferences[: cfg.plan.preferences]],
            **{"recent matters": [m.strip() for m in draft.recent_matters],
               "requirements or expectations": draft.requirements.strip(), "update time": fmt_time(start)},
        )
        personas.append(Persona(
            persona_id=stable_id("p_", seed.seed_id), seed=seed, split=a.split, shard=a.shard, bucket=a.bucket,
            role_description=draft.role_description.strip(), profile=profile,
            big_five=sample_big_five(cfg, seed), start_time=fmt_time(start),
        ))
    return personas, quarantined
