"""Every record the pipeline writes, in one place.

Field names follow PersonaVLM's released formats where the spec gives them (profile keys, memory fields,
Persona-MME item fields); everything else is ours and documented here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TIME_FORMAT = "%Y-%m-%d %H:%M"
BIG_FIVE_TRAITS = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")
Split = Literal["train", "bench_32k", "bench_128k"]
# Persona-MME's sample folders are named by the most turns a history in them has: two per benchmark config
BUCKET_MAX_TURNS: dict[str, tuple[int, int]] = {"bench_32k": (50, 100), "bench_128k": (200, 500)}


def bucket_of(split: str, n_turns: int) -> str:
    """The Persona-MME bucket of a benchmark history with this many turns."""
    small, large = BUCKET_MAX_TURNS[split]
    return str(small if n_turns <= small else large)


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


def fmt_time(t: datetime) -> str:
    return t.strftime(TIME_FORMAT)


# ---------------------------------------------------------------------------------------------- provenance


class Provenance(Record):
    """Where a row came from: enough to regenerate it."""

    teacher_model: str
    prompt_templates: dict[str, str] = Field(default_factory=dict)  # template name -> content hash
    seed: int
    code_version: str
    preset: str
    config_hash: str
    personality_skip_rule: Literal["all_neutral", "per_trait", "none"] | None = None  # the PEM rule labels follow


# ---------------------------------------------------------------------------------------------- personas


class BigFive(Record):
    openness: float = Field(ge=1, le=5)
    conscientiousness: float = Field(ge=1, le=5)
    extraversion: float = Field(ge=1, le=5)
    agreeableness: float = Field(ge=1, le=5)
    neuroticism: float = Field(ge=1, le=5)


class Profile(Record):
    """PersonaVLM core-memory profile; serialised with the spec's spaced keys."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str
    gender: str
    age: int
    preferences: list[str]
    recent_matters: list[str] = Field(alias="recent matters")
    requirements_or_expectations: str = Field(alias="requirements or expectations")
    update_time: str = Field(alias="update time")

    def to_spec(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


class PersonaSeed(Record):
    seed_id: str
    text: str
    source: str


class Persona(Record):
    persona_id: str
    seed: PersonaSeed
    split: Split
    shard: str  # the history partition this persona is materialized in
    bucket: str | None = None  # benchmark personas: the Persona-MME bucket their history is sized for
    role_description: str
    profile: Profile
    big_five: BigFive
    start_time: str  # first simulated day, TIME_FORMAT


# ---------------------------------------------------------------------------------------------- plans

PlanKind = Literal[
    "preference",  # a stated like (subject: its category, value: the liked thing)
    "dislike",  # a stated dislike (value: the disliked thing)
    "preference_shift",  # a like replaced by another (value: new, previous_value: old), caused by an event
    "event",  # a dated happening (value: what the user did; person: who was there, if anyone)
    "routine",  # a recurring habit (subject: when it happens, value: what the user does)
    "goal",  # a long-term goal (subject: the goal, value: "started")
    "goal_update",  # a status report on a goal (value: one of GOAL_OUTCOMES), caused by the goal
    "relationship",  # a named person (subject) and their relation to the user (value)
    "skill",  # a skill the user practises (subject) at a level (value: one of SKILL_LEVELS)
    "skill_update",  # the user reaches a new level (value) in a skill, caused by the skill item
    "style",  # how the user likes to do things (subject: the dimension, value: the pole they prefer)
    "photo_share",  # the user shares a photo (image_id) and says why (value: the purpose)
    "personality_drift",  # a planned change in one Big Five trait, caused by an event
]
GOAL_OUTCOMES = ("finished", "gave up", "making progress")
SKILL_LEVELS = ("beginner", "intermediate", "advanced")


class PlanItem(Record):
    item_id: str
    persona_id: str
    kind: PlanKind
    time: str  # when it becomes true and may be told, TIME_FORMAT
    subject: str  # the entity: category, person, goal, routine trigger, skill, style dimension, image label
    value: str  # the key value a realizing turn must state
    previous_value: str | None = None  # for shifts and updates
    cause_item_id: str | None = None
    person: str | None = None  # events: the named person who was there
    image_id: str | None = None  # photo shares
    trait: str | None = None  # personality drift only
    delta: float | None = None  # personality drift only


class PlannedSession(Record):
    """A conversation the plan schedules; items dated at or before its start are told in it."""

    session_index: int
    start: str
    n_turns: int


class TimelinePlan(Record):
    persona_id: str
    span_days: int
    sessions: list[PlannedSession]
    items: list[PlanItem]


# ---------------------------------------------------------------------------------------------- images


class ImageRecord(Record):
    image_id: str  # sha256 of the stored PNG bytes
    source: str  # skimage | folder:<path> | hub:<repo or path>
    name: str
    caption: str
    labels: list[str]  # objects in the photo, the main one first
    details: dict[str, str] = Field(default_factory=dict)  # visual question -> short answer, for detail recall
    path: str  # PNG file under the output image store
    width: int
    height: int
    phash: int  # 64-bit perceptual hash as a signed BIGINT


# ---------------------------------------------------------------------------------------------- dialogues


class Turn(Record):
    persona_id: str
    session_index: int
    turn_index: int  # global, 0-based, over the whole history
    time: str
    user: str  # contains exactly one "<img>" when image_id is set
    assistant: str
    image_id: str | None = None
    realizes: list[str] = Field(default_factory=list)  # plan item ids this turn states


class Session(Record):
    persona_id: str
    session_index: int
    turns: list[Turn]


class Dialogue(Record):
    persona_id: str
    split: Split
    sessions: list[Session]

    @property
    def turns(self) -> list[Turn]:
        return [t for s in self.sessions for t in s.turns]


# ---------------------------------------------------------------------------------------------- memory (M4)


Wording = Literal["teacher", "plan"]  # who wrote a target's text: the teacher, or the plan when its text failed checks


class SemanticMemoryTarget(Record):
    """PersonaVLM's per-turn semantic-memory decision, index-aligned with the interactions."""

    persona_id: str
    turn_index: int
    reason: str
    decision: bool
    content: str  # empty when decision is false; image objects as "<user naming> (Image Object: <class>)"
    keywords: str  # comma-separated
    item_id: str | None = None  # the plan fact the memory stores; None for small talk
    wording: Wording


class EpisodicTopic(Record):
    topic_summary: str  # third person
    keywords: str
    source_dialog_indices: list[int]  # round indices within the session


class SessionMemoryTarget(Record):
    """What the session-end update writes: episodic topics, then procedural memory and core profile after it."""

    persona_id: str
    session_index: int
    episodic: list[EpisodicTopic]  # together they cover every round of the session exactly once
    topic_wording: list[Wording]  # index-aligned with episodic
    procedural: dict[str, str]  # <= 5 keyed one-sentence habits/goals
    profile: dict[str, Any]  # core profile valid after this session (spec keys)


# ---------------------------------------------------------------------------------------------- personality (M6)


class PersonalityStep(Record):
    persona_id: str
    turn_index: int
    inferred: dict[str, int]  # momentary state, integers 1-5
    inferred_by: Literal["teacher", "neutral_fallback"]  # neutral_fallback: the teacher gave no valid state
    ema: dict[str, float]  # trajectory after this turn
    skipped: list[str]  # traits not updated under the configured skip rule
    planned: dict[str, float]  # the plan's personality at the turn's time (sampled Big Five + drifts so far)


class PersonalityCorrelation(Record):
    """How well one persona's inferred states follow its planned personality (Pearson r; None when undefined)."""

    persona_id: str
    turns: int
    inferred_r: float | None  # inferred vs planned, over every (turn, trait)
    ema_r: float | None  # EMA vs planned, over every (turn, trait)
    drift_trait: str | None  # the trait a planned drift changes within the history, if any
    drift_r: float | None  # inferred vs planned on that trait, over the turns
    final_ema_mae: float  # mean |EMA - planned| over the traits after the last turn


# ---------------------------------------------------------------------------------------------- reasoning (M5)


class RetrieveCall(Record):
    keywords: str
    start_time: str | None = None
    end_time: str | None = None


class ReasoningStep(Record):
    think: str
    action: Literal["retrieve", "answer"]
    retrieve: RetrieveCall | None = None
    # memory keys the executed call returned: "semantic:<session>:<round>", "episodic:<session>:<topic>",
    # "procedural:<key>" (see stages.memory.held_memories)
    retrieved: list[str] = Field(default_factory=list)
    answer: str | None = None


ProbeVerdict = Literal["verified", "evidence_not_retrieved", "answer_unsupported", "malformed_text", "teacher_failure"]


class ReasoningTrajectory(Record):
    probe_id: str
    persona_id: str
    question_kind: str  # which plan fact the question asks about (stages.reasoning.QUESTION_KINDS)
    mode: Literal["retrieve", "direct"]  # direct: the answer is in the recent (short-term) context
    probe_turn_index: int  # the query is posed right after this turn
    probe_time: str
    query: str
    gold_item_id: str
    gold_value: str  # the phrase a correct answer states, from the plan's state at probe time
    evidence_turns: list[int]  # turns that told the gold
    distractors: list[str]  # type-consistent wrong answers for multiple choice (empty when too few)
    steps: list[ReasoningStep]
    verdict: ProbeVerdict  # only verified trajectories are exported
    retriever: str  # what executed the steps' <retrieve> calls (stages.retrieval.RETRIEVERS)
    # retrieve mode: per retriever, whether the same calls retrieve the evidence turn (the card compares them)
    answer_hits: dict[str, bool] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- alignment (M7)


class AlignmentPair(Record):
    pair_id: str
    persona_id: str
    after_turn_index: int  # the query is posed in situ, right after this turn
    query_time: str
    query: str
    chosen: str
    rejected: str
    rejected_kind: Literal["generic", "other_profile"]
    chosen_profile: dict[str, float]  # the persona's planned personality at query_time
    rejected_profile: dict[str, float] | None = None  # the different profile the rejected reply was written for


# ---------------------------------------------------------------------------------------------- benchmark


class BenchmarkItem(Record):
    item_id: str
    persona_id: str
    bucket: str  # "50" | "100" | "200" | "500" (maximum turn count, as in the release)
    type: str  # aspect
    question_type: str  # task
    time: str  # probe time, after the last turn
    query: str
    choices: dict[str, str]  # "(a)".."(d)"
    answer: str
    evidence_turns: list[int]
    evidence_images: list[str] = Field(default_factory=list)
    source_item_ids: list[str] = Field(default_factory=list)
    alignment: dict[str, str] | None = None  # {"chosen", "rejected"}


class OptionFact(Record):
    """What an option claims when offered as the answer (e.g. likes_now [pottery]); re-evaluated against the
    whole history it must hold for the gold option and fail for every distractor."""

    fact: str
    args: list[str]


class BenchmarkCandidate(Record):
    """A generated item plus what the gates re-check it with; only items that pass every gate are published."""

    item: BenchmarkItem
    answer_type: str  # what kind of answer every option is (name, tone, hobby, colour, ...)
    time_phrase: str | None = None  # the relative time phrase in the query, said of evidence_turns[0]
    option_facts: dict[str, OptionFact]  # option text -> its claim
    rejected_by: str | None = None  # "<gate>: <reason>" once a gate rejects it


class BenchmarkGateCount(Record):
    """How many items of a task a gate looked at and how many it rejected."""

    gate: str
    question_type: str
    checked: int
    rejected: int


class BlindAccuracy(Record):
    """How often a judge answers a task's items right without the history (chance is 25%)."""

    judge: str
    context: Literal["query_only", "profile_only"]
    question_type: str
    answered: int
    correct: int


# ---------------------------------------------------------------------------------------------- exports


class SFTRecord(Record):
    record_id: str
    persona_id: str
    task: Literal["reasoning", "semantic_memory", "episodic_memory", "procedural_memory", "core_memory", "personality"]
    conversations: list[dict[str, str]]  # [{"from": "human"|"gpt", "value": ...}]
    image: list[str] = Field(default_factory=list)  # image ids, in <image> order
    provenance: Provenance


class RLRecord(Record):
    record_id: str
    persona_id: str
    kind: Literal["multiple_choice", "binary", "open_qa"]
    messages: list[dict[str, str]]  # ms-swift: [{"role", "content"}]
    images: list[str] = Field(default_factory=list)
    solution: str
    provenance: Provenance


# ---------------------------------------------------------------------------------------------- bookkeeping


class TeacherFailure(Record):
    asset: str
    request_key: str
    tag: str
    reason: str
    attempts: int


class QuarantineRow(Record):
    table_name: str
    row_key: str
    rule: str
    value: str
