"""M1 personas: seeds from the bundled list, a file or a Hub dataset; enriched by the teacher into a role
description and a PersonaVLM profile; a Big Five vector drawn from a declared, seeded distribution."""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..config import ConfigError, PipelineConfig, SourceSettings
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


def load_seeds(source: SourceSettings) -> list[PersonaSeed]:
    if source.kind == "bundled":
        texts, origin = bundled_seed_texts(), "bundled"
    elif source.kind == "file":
        texts, origin = _read_seed_file(Path(source.path), source.column), f"file:{source.path}"
    else:
        texts, origin = _read_seed_dataset(source), f"hub:{source.path}"
    seen: set[str] = set()
    seeds = []
    for text in (t.strip() for t in texts):
        if text and text not in seen:  # exact duplicate seeds would make identical persona ids
            seen.add(text)
            seeds.append(PersonaSeed(seed_id=stable_id("s_", text), text=text, source=origin))
    return seeds


def bundled_seed_texts() -> list[str]:
    """The hand-written seeds, then every occupation paired with every pursuit, in a fixed shuffled order (so the
    first few hundred mix occupations and pursuits)."""
    parts = yaml.safe_load(BUNDLED_SEED_PARTS.read_text())
    combined = [f"{'An' if job[0] in 'aeiou' else 'A'} {job} who {pursuit}." for job in parts["occupations"]
                for pursuit in parts["pursuits"]]
    random.Random(0).shuffle(combined)
    return BUNDLED_SEEDS.read_text().splitlines() + combined


def _read_seed_file(path: Path, column: str) -> list[str]:
    if not path.is_file():
        raise ConfigError(f"persona seed file {str(path)!r} (setting `persona_source.path`) does not exist")
    if path.suffix == ".jsonl":
        return [json.loads(line)[column] for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return [row[column] for row in csv.DictReader(f)]
    return path.read_text().splitlines()


def _read_seed_dataset(source: SourceSettings) -> list[str]:
    import datasets

    ds = datasets.load_dataset(source.path, split=source.split)
    if source.column not in ds.column_names:
        raise ConfigError(f"dataset {source.path!r} has no column {source.column!r} (setting "
                          f"`persona_source.column`); columns: {ds.column_names}")
    return list(ds[source.column])


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
        raise ConfigError(f"personas.* asks for {need} personas but the seed source has {len(seeds)} distinct seeds")
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
