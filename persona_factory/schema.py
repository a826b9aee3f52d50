"""Every record the pipeline writes, in one place.

Field names follow PersonaVLM's released formats where the spec gives them (profile keys, memory fields,
Persona-MME item fields); everything else is ours and documented here.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from .stages.timeline import TimelineState

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
    "event",  # a dated happening (value: what the user did; person: who was there, if anyone; subject: "event", or
    # the interest a first try was of)
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
SKILL_LEVELS = ("beginner", "intermediate", "advanced", "expert")


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
    photograph: str | None = None  # bundled pool: the photograph it shows, whole or cropped (all on one side)


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


class Claim(Record):
    """What an option asserts when offered as the answer ("the user likes pottery now"). Evaluated against the
    state the whole history leaves, it must hold for the gold option and fail for every distractor; `entity` is
    what the user would have told (checked for mentions and later denials)."""

    negatable: ClassVar[bool] = False  # a claim about a current state that a later "no longer ..." undoes
    value_field: ClassVar[str]  # the field holding the value the option asserts
    entity_field: ClassVar[str | None] = None  # the field holding what the user told, if the claim names it

    @property
    def value(self) -> str:
        """The value the option asserts ("pottery", "gave up", "beginner"), what balance counts gold by."""
        return getattr(self, self.value_field)

    @property
    def entity(self) -> str | None:
        return getattr(self, self.entity_field) if self.entity_field else None

    def holds(self, state: "TimelineState", images: dict[str, ImageRecord]) -> bool:
        raise NotImplementedError


class LikesNow(Claim):
    kind: Literal["likes_now"] = "likes_now"
    value_field: ClassVar[str] = "thing"
    entity_field: ClassVar[str | None] = "thing"
    thing: str
    negatable: ClassVar[bool] = True

    def holds(self, state, images) -> bool:
        return state.likes_now(self.thing)


class Dislikes(Claim):
    kind: Literal["dislikes"] = "dislikes"
    value_field: ClassVar[str] = "thing"
    entity_field: ClassVar[str | None] = "thing"
    thing: str
    day: str | None = None  # told that day, when the question names one

    def holds(self, state, images) -> bool:
        return self.thing in state.dislikes and (self.day is None or state.told_on(self.thing, self.day))


class EventOn(Claim):
    kind: Literal["event_on"] = "event_on"
    value_field: ClassVar[str] = "event"
    entity_field: ClassVar[str | None] = "event"
    day: str
    event: str

    def holds(self, state, images) -> bool:
        return any(e.day == self.day and e.value == self.event for e in state.events)


class EventWith(Claim):
    kind: Literal["event_with"] = "event_with"
    value_field: ClassVar[str] = "person"
    entity_field: ClassVar[str | None] = "person"
    event: str
    person: str

    def holds(self, state, images) -> bool:
        return any(e.value == self.event and e.person == self.person for e in state.events)


class PhotoOn(Claim):
    kind: Literal["photo_on"] = "photo_on"
    value_field: ClassVar[str] = "label"
    entity_field: ClassVar[str | None] = "label"
    day: str
    label: str

    def holds(self, state, images) -> bool:
        return any(p.day == self.day and p.label == self.label for p in state.photos)


class PhotoPurposeOn(Claim):
    kind: Literal["photo_purpose_on"] = "photo_purpose_on"
    value_field: ClassVar[str] = "purpose"
    day: str
    label: str
    purpose: str

    def holds(self, state, images) -> bool:
        return any((p.day, p.label, p.purpose) == (self.day, self.label, self.purpose) for p in state.photos)


class PhotoFor(Claim):
    kind: Literal["photo_for"] = "photo_for"
    value_field: ClassVar[str] = "label"
    entity_field: ClassVar[str | None] = "label"
    label: str
    purpose: str

    def holds(self, state, images) -> bool:
        return any(p.label == self.label and p.purpose == self.purpose for p in state.photos)


class ImageDetail(Claim):
    kind: Literal["image_detail"] = "image_detail"
    value_field: ClassVar[str] = "answer"
    image_id: str
    question: str
    answer: str

    def holds(self, state, images) -> bool:
        shared = {p.image_id for p in state.photos}
        return self.image_id in shared and self.image_id in images \
            and images[self.image_id].details.get(self.question) == self.answer


class ImageShows(Claim):
    kind: Literal["image_shows"] = "image_shows"
    value_field: ClassVar[str] = "label"
    image_id: str
    label: str

    def holds(self, state, images) -> bool:
        shared = {p.image_id for p in state.photos}
        return self.image_id in shared and self.image_id in images and self.label in images[self.image_id].labels


class RoutineAt(Claim):
    kind: Literal["routine_at"] = "routine_at"
    value_field: ClassVar[str] = "action"
    entity_field: ClassVar[str | None] = "action"
    when: str
    action: str
    negatable: ClassVar[bool] = True

    def holds(self, state, images) -> bool:
        return state.routines.get(self.when) == self.action


class GoalStatus(Claim):
    kind: Literal["goal_status"] = "goal_status"
    value_field: ClassVar[str] = "state"
    goal: str
    state: str  # a GOAL_OUTCOMES value or "unknown"

    def holds(self, state, images) -> bool:
        return state.goals.get(self.goal) == self.state


class GoalActive(Claim):
    kind: Literal["goal_active"] = "goal_active"
    value_field: ClassVar[str] = "goal"
    entity_field: ClassVar[str | None] = "goal"
    goal: str
    negatable: ClassVar[bool] = True

    def holds(self, state, images) -> bool:
        return state.goal_open(self.goal)


class RelationOf(Claim):
    kind: Literal["relation_of"] = "relation_of"
    value_field: ClassVar[str] = "person"
    entity_field: ClassVar[str | None] = "person"
    person: str
    relation: str

    def holds(self, state, images) -> bool:
        return state.relations.get(self.person) == self.relation


class MostPresent(Claim):
    kind: Literal["most_present"] = "most_present"
    value_field: ClassVar[str] = "person"
    entity_field: ClassVar[str | None] = "person"
    person: str

    def holds(self, state, images) -> bool:
        seen = state.appearances
        return seen[self.person] > max((n for name, n in seen.items() if name != self.person), default=0)


class ToneFor(Claim):
    kind: Literal["tone_for"] = "tone_for"
    value_field: ClassVar[str] = "tone"
    person: str
    tone: str

    def holds(self, state, images) -> bool:
        return self.person in state.relations and state.tone_of(self.person) == self.tone


class SkillTier(Claim):
    kind: Literal["skill_tier"] = "skill_tier"
    value_field: ClassVar[str] = "tier"
    skill: str
    tier: str

    def holds(self, state, images) -> bool:
        return state.skills.get(self.skill) == self.tier


class ShiftCause(Claim):
    kind: Literal["shift_cause"] = "shift_cause"
    value_field: ClassVar[str] = "event"
    entity_field: ClassVar[str | None] = "event"
    old: str  # the like that was replaced
    event: str  # what set the change off

    def holds(self, state, images) -> bool:
        return any(s.old == self.old and s.cause == self.event for s in state.shifts)


class Suits(Claim):
    kind: Literal["suits"] = "suits"
    value_field: ClassVar[str] = "thing"
    entity_field: ClassVar[str | None] = "thing"
    thing: str
    dimension: str
    pole: str
    negatable: ClassVar[bool] = True

    def holds(self, state, images) -> bool:
        return state.likes_now(self.thing) and state.styles.get(self.dimension) == self.pole


AnyClaim = Annotated[
    Union[LikesNow, Dislikes, EventOn, EventWith, PhotoOn, PhotoPurposeOn, PhotoFor, ImageDetail, ImageShows,
          RoutineAt, GoalStatus, GoalActive, RelationOf, MostPresent, ToneFor, SkillTier, ShiftCause, Suits],
    Field(discriminator="kind")]


class Option(Record):
    """One answer option: its text as shown, its claim, and whether the user's history tells of its value (a
    told-but-wrong distractor, or the gold)."""

    text: str
    claim: AnyClaim
    told: bool = False


class BenchmarkCandidate(Record):
    """A generated item plus what the gates re-check it with; only items that pass every gate are published.
    `pool` holds every wrong option the history allows; the distractor assignment picks the item's three."""

    item: BenchmarkItem
    answer_type: str  # what kind of answer every option is (name, tone, hobby, colour, ...)
    time_phrase: str | None = None  # the relative time phrase in the query, said of evidence_turns[0]
    gold: Option
    pool: list[Option] = Field(default_factory=list)
    distractors: list[Option] = Field(default_factory=list)  # the three offered, once assigned
    once_key: str | None = None  # a question asked of one persona only across the benchmark (a photo's detail)
    rejected_by: str | None = None  # "<gate>: <reason>" once a gate rejects it

    @property
    def options(self) -> list[Option]:
        return [self.gold, *self.distractors]


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
