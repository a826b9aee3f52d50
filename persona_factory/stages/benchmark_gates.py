"""Automated quality gates for benchmark items, one per failure mode peer persona benchmarks shipped (items a model
solves without the history, gold given away by its length, wrong date arithmetic, answers a later turn changed,
duplicates):

- form: four distinct, non-nested options of one answer type, within a length ratio, in one casing and
  punctuation style, with no name or number only the gold carries;
- time: every relative time phrase the item adds to its query is the one computed from the probe and the evidence
  turn (a phrase inside a plan value, like a routine's "on Thursday nights", is the plan's, not the item's);
- consistency: evidence turns exist, precede the probe and are user turns stating the facts; every option's claim
  is re-evaluated against the state the *whole* history leaves (so a later turn that changes a fact sends the item
  back), the gold must hold and no distractor may; a later user turn negating the gold rejects it; a distractor
  said never to have been told must not appear in any user turn;
- near_duplicate: one question per persona however it is worded;
- blind: the teacher and any extra judges answer from the query and options only, and with the profile only; an
  item most blind runs get right is dropped;
- balance: over the selected items, no task's gold is the unique longest or shortest option more often than
  chance, Long-term Goal Tracking gold states are not skewed, and "I don't know" options are gold no more often
  than they are distractors;
- letters: gold letters balanced per task (assigned so by construction, verified here).

Every gate counts, per task, the items it checked and rejected; every rejected candidate keeps its reason.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Callable, Iterable, Literal

from pydantic import BaseModel, ConfigDict

from ..config import PipelineConfig
from ..schema import (
    BenchmarkCandidate, BenchmarkGateCount, BlindAccuracy, Dialogue, ImageRecord, OptionFact, Persona, PlanItem,
    QuarantineRow, TimelinePlan, Turn,
)
from ..teacher.types import Sampling, TeacherRequest, TeacherResult
from .benchmark import (
    LETTERS, LGT, TASKS, UNKNOWN_STATE, bench_vocabulary, gold_text, goal_state_group, length_ratio, names_a_tier,
    option_length, relative_phrase,
)
from .common import chat, contains_phrase, negates, normalize, parse_time, request_seed
from .plans import likes_at, realization, relation_tone, vocabulary

GATES = ("form", "time", "consistency", "near_duplicate", "blind", "balance", "letters")
BLIND_CONTEXTS = ("query_only", "profile_only")
WEEKDAYS = "monday|tuesday|wednesday|thursday|friday|saturday|sunday"
NUMBER_WORDS = r"\d+|a|an|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|a few|several"
TIME_REFERENCE = re.compile(
    rf"\b(earlier today|today|yesterday|last (?:{WEEKDAYS}|week|month|weekend)|on (?:{WEEKDAYS})"
    rf"|(?:about |around |roughly )?(?:{NUMBER_WORDS}) (?:days?|weeks?|months?|years?) ago)\b", re.IGNORECASE)
CLOSED_TYPES = {"tone", "purpose", "goal state", "photo", "first try", "activity and style"}
# the argument of a claim that names something the user told (checked for mentions and later negations)
ENTITY_ARG = {"likes_now": 0, "dislikes": 0, "event_told_on": 1, "event_with": 1, "photo_of_on": 1, "photo_for": 0,
              "routine": 1, "goal_active": 0, "relation_of": 0, "most_present": 0, "shift_cause": 1, "suits": 0}
NEGATABLE = {"likes_now", "suits", "routine", "goal_active"}  # claims about a current state a later "no longer" undoes


# ---------------------------------------------------------------------------------------------- ledger


@dataclass
class GateRun:
    """Applies gates in order and keeps, per (gate, task), how many items were checked and rejected."""

    checked: Counter = field(default_factory=Counter)
    rejected_counts: Counter = field(default_factory=Counter)
    rejected: list[BenchmarkCandidate] = field(default_factory=list)

    def apply(self, gate: str, cands: list[BenchmarkCandidate], problems: dict[str, str]) -> list[BenchmarkCandidate]:
        kept = []
        for c in cands:
            task = c.item.question_type
            self.checked[gate, task] += 1
            if c.item.item_id in problems:
                self.rejected_counts[gate, task] += 1
                self.rejected.append(c.model_copy(update={"rejected_by": f"{gate}: {problems[c.item.item_id]}"}))
            else:
                kept.append(c)
        return kept

    def apply_each(self, gate: str, cands: list[BenchmarkCandidate],
                   problem: Callable[[BenchmarkCandidate], str | None]) -> list[BenchmarkCandidate]:
        return self.apply(gate, cands, {c.item.item_id: p for c in cands if (p := problem(c)) is not None})

    def counts(self, extra_tasks: Iterable[str] = ()) -> list[BenchmarkGateCount]:
        """One row per gate and task (all 13 tasks, zeros included), so the table's shape never changes."""
        tasks = [*TASKS, *extra_tasks]
        gates = [*GATES, *sorted({g for g, _ in self.checked} - set(GATES))]
        return [BenchmarkGateCount(gate=g, question_type=t, checked=self.checked[g, t],
                                   rejected=self.rejected_counts[g, t]) for g in gates for t in tasks]

    def quarantine_rows(self) -> list[QuarantineRow]:
        return [QuarantineRow(table_name="benchmark_items", row_key=f"{c.item.persona_id}:{c.item.item_id}",
                              rule=(c.rejected_by or "").split(":")[0], value=f"{c.rejected_by} | {c.item.query}")
                for c in self.rejected]


# ---------------------------------------------------------------------------------------------- form


def option_family(text: str, visual: bool) -> str | None:
    """Which closed family of answers an option text belongs to (image-detail answer types only where the item
    asks about an image detail: a hobby may well be called "sand"); None for free phrases."""
    vocab, bench = vocabulary(), bench_vocabulary()
    key = normalize(text)
    families = {"name": vocab["names"], "tone": vocab["relations"].values(),
                "purpose": [p["option"] for p in bench["photo_purposes"].values()],
                "goal state": bench["goal_states"].values()}
    if visual:
        families.update({f"visual {kind}": values for kind, values in bench["visual_answers"].items()})
    for family, values in families.items():
        if key in {normalize(v) for v in values}:
            return family
    if re.fullmatch(r"The .+ photo", text):
        return "photo"
    if text.startswith("My first go at "):
        return "first try"
    poles = {short for dim in bench["style_poles"].values() for short in dim.values()}
    if any(text.endswith(f", {pole}") for pole in poles):
        return "activity and style"
    return None


def answer_type_problem(c: BenchmarkCandidate, texts: list[str]) -> str | None:
    """Every option answers the question the same way: all names, all of one closed family, or all free phrases
    (events, hobbies, routines, goals, labels, tips) of which none belongs to a closed family."""
    families = [option_family(t, c.answer_type.startswith("visual ")) for t in texts]
    if c.answer_type == "name":
        same = all(re.fullmatch(r"[A-Z][a-z]+", t) for t in texts)
    elif c.answer_type in CLOSED_TYPES or c.answer_type.startswith("visual "):
        same = all(f == c.answer_type for f in families)
    else:
        same = not any(families)
    if not same:
        return f"mixed_answer_types: {families} for {c.answer_type}"
    if len({bool(re.search(r"\d", t)) for t in texts}) > 1:
        return "mixed_answer_types: digits in some options only"
    if c.answer_type == "tip" and any(names_a_tier(t, bench_vocabulary()["tip_tiers"]) for t in texts):
        return "tip_names_a_tier"
    return None


def form_problem(c: BenchmarkCandidate, max_ratio: float) -> str | None:
    item = c.item
    if list(item.choices) != list(LETTERS) or item.answer not in LETTERS:
        return "malformed_choices"
    texts = list(item.choices.values())
    keys = [normalize(t) for t in texts]
    if not all(keys):
        return "empty_option"
    if len(set(keys)) < 4:
        return "duplicate_options"
    for a in keys:
        for b in keys:
            if a != b and f" {a} " in f" {b} ":
                return f"nested_options: {a!r} inside {b!r}"
    if set(c.option_facts) != set(texts):
        return "option_without_claim"
    if (r := length_ratio(texts)) > max_ratio:
        return f"option_length_ratio {r:.2f} > {max_ratio}"
    if len({t[0].isupper() for t in texts}) > 1:
        return "inconsistent_casing"
    if len({t[-1] in ".!?;:," for t in texts}) > 1:
        return "inconsistent_punctuation"
    if problem := answer_type_problem(c, texts):
        return problem
    if c.answer_type != "name":
        specifics = lambda t: set(re.findall(r"(?<=\s)[A-Z]\w+|\d+", t))  # noqa: E731  (names, numbers)
        gold = item.choices[item.answer]
        only_gold = specifics(gold) - set().union(*(specifics(t) for t in texts if t != gold))
        if only_gold:
            return f"gold_only_specifics: {sorted(only_gold)}"
    return None


# ---------------------------------------------------------------------------------------------- time


def outside_own_values(c: BenchmarkCandidate) -> str:
    """The query with the item's own plan values blanked out (its options and their claims' arguments): a time
    phrase inside one of them, like a routine's "on Thursday nights", is the plan's wording, not a date the item
    worked out."""
    query = c.item.query
    values = {a for f in c.option_facts.values() for a in f.args} | set(c.item.choices.values())
    for v in sorted(filter(None, values), key=len, reverse=True):
        query = re.sub(rf"(?<!\w){re.escape(v)}(?!\w)", " ", query, flags=re.IGNORECASE)
    return query


def time_problem(c: BenchmarkCandidate, dialogue: Dialogue) -> str | None:
    """The probe follows the last turn, and every time reference the item itself makes (outside its plan values)
    is the computed one."""
    item = c.item
    turns = {t.turn_index: t for t in dialogue.turns}
    probe = parse_time(item.time)
    if dialogue.turns and probe <= parse_time(dialogue.turns[-1].time):
        return "probe_not_after_last_turn"
    said = [m.group(0).lower() for m in TIME_REFERENCE.finditer(outside_own_values(c))]
    if c.time_phrase is None:
        return f"unverified_time_reference: {said}" if said else None
    if not item.evidence_turns or item.evidence_turns[0] not in turns:
        return "time_phrase_without_evidence_turn"
    computed = relative_phrase(probe, parse_time(turns[item.evidence_turns[0]].time))
    if c.time_phrase != computed:
        return f"wrong_relative_time: {c.time_phrase!r}, computed {computed!r}"
    if c.time_phrase.lower() not in item.query.lower():
        return "time_phrase_not_in_query"
    if any(s != c.time_phrase.lower() for s in said):
        return f"unverified_time_reference: {said}"
    return None


# ---------------------------------------------------------------------------------------------- consistency


@dataclass
class HistoryState:
    """What the whole history says by the probe: the plan facts its turns state, replayed in turn order (a later
    turn overrides an earlier one); the likes are the profile's (the core memory it starts from) with the told
    likes and shifts applied."""

    likes: set[str] = field(default_factory=set)
    dislikes: set[str] = field(default_factory=set)
    goals: dict[str, str] = field(default_factory=dict)  # goal -> last reported outcome, or unknown
    skills: dict[str, str] = field(default_factory=dict)
    relations: dict[str, str] = field(default_factory=dict)
    routines: dict[str, str] = field(default_factory=dict)  # when -> what
    styles: dict[str, str] = field(default_factory=dict)
    events: list[tuple[str, str, str | None]] = field(default_factory=list)  # (day told, what, with whom)
    photos: list[tuple[str, str, str, str | None]] = field(default_factory=list)  # (day, label, purpose, image)
    shifts: list[tuple[str, str]] = field(default_factory=list)  # (old, new) whose first try was told before
    appearances: Counter = field(default_factory=Counter)  # person -> events told with them
    told: set[str] = field(default_factory=set)  # normalized values of every fact told

    @classmethod
    def replay(cls, dialogue: Dialogue, plan: TimelinePlan, probe: str, persona: Persona) -> "HistoryState":
        s, items, seen = cls(), {i.item_id: i for i in plan.items}, set()
        s.told |= {normalize(v) for v in persona.profile.preferences}
        for turn in dialogue.turns:
            if turn.time >= probe:
                break
            for item in (items[i] for i in turn.realizes if i in items):
                s.tell(item, turn, seen)
                seen.add(item.item_id)
        s.likes = set(likes_at(persona, plan, probe, seen))
        return s

    def tell(self, item: PlanItem, turn: Turn, seen: set[str]) -> None:
        v, subject, day = item.value, item.subject, turn.time[:10]
        self.told |= {normalize(x) for x in (v, subject, item.person or "", item.previous_value or "") if x}
        match item.kind:
            case "dislike":
                self.dislikes.add(v)
            case "preference_shift":
                if item.cause_item_id in seen:
                    self.shifts.append((item.previous_value or "", v))
            case "event":
                self.events.append((day, v, item.person))
                if item.person:
                    self.appearances[item.person] += 1
            case "routine":
                self.routines[subject] = v
            case "goal":
                self.goals.setdefault(subject, UNKNOWN_STATE)
            case "goal_update":
                self.goals[subject] = v
            case "skill" | "skill_update":
                self.skills[subject] = v
            case "relationship":
                self.relations[subject] = v
            case "style":
                self.styles[subject] = v
            case "photo_share":
                self.photos.append((day, subject, v, item.image_id))

    def holds(self, f: OptionFact, images: dict[str, ImageRecord]) -> bool:
        """Whether the claim is true of this history (unknown claim kinds raise)."""
        a = f.args
        shared = {p[3] for p in self.photos}
        match f.fact:
            case "likes_now":
                return a[0] in self.likes
            case "dislikes":
                return a[0] in self.dislikes
            case "event_told_on":
                return any(day == a[0] and what == a[1] for day, what, _ in self.events)
            case "event_with":
                return any(what == a[0] and who == a[1] for _, what, who in self.events)
            case "photo_of_on":
                return any(day == a[0] and label == a[1] for day, label, _, _ in self.photos)
            case "photo_purpose_on":
                return any((day, label, why) == tuple(a) for day, label, why, _ in self.photos)
            case "photo_for":
                return any(label == a[0] and why == a[1] for _, label, why, _ in self.photos)
            case "image_detail":
                return a[0] in shared and a[0] in images and images[a[0]].details.get(a[1]) == a[2]
            case "image_shows":
                return a[0] in shared and a[0] in images and a[1] in images[a[0]].labels
            case "routine":
                return self.routines.get(a[0]) == a[1]
            case "goal_status":
                return self.goals.get(a[0]) == a[1]
            case "goal_active":
                return self.goals.get(a[0]) in (UNKNOWN_STATE, "making progress")
            case "relation_of":
                return self.relations.get(a[0]) == a[1]
            case "most_present":
                others = [n for name, n in self.appearances.items() if name != a[0]]
                return self.appearances[a[0]] > max(others, default=0)
            case "tone_for":
                return a[0] in self.relations and relation_tone(self.relations[a[0]]) == a[1]
            case "skill_tier":
                return self.skills.get(a[0]) == a[1]
            case "shift_cause":
                return (a[0], a[1]) in self.shifts
            case "suits":
                return a[0] in self.likes and self.styles.get(a[1]) == a[2]
        raise ValueError(f"unknown option claim {f.fact!r}")


def evidence_problem(c: BenchmarkCandidate, dialogue: Dialogue, plan: TimelinePlan) -> str | None:
    """Evidence turns exist, precede the probe, and each is a user turn stating a plan fact (or sharing the
    photo the item is about); every source fact and evidence image is among them."""
    item = c.item
    turns = {t.turn_index: t for t in dialogue.turns}
    items = {i.item_id: i for i in plan.items}
    if not item.evidence_turns:
        return "no_evidence_turns"
    stated: set[str] = set()
    for k in item.evidence_turns:
        t = turns.get(k)
        if t is None:
            return f"evidence_turn_missing: {k}"
        if t.time >= item.time:
            return f"evidence_after_probe: {k}"
        facts = [items[i] for i in t.realizes if i in items]
        said = [f.item_id for f in facts if contains_phrase(t.user, realization(f).phrases[0])]
        if not said:
            return f"evidence_not_user_stated: {k}"
        stated |= set(said)
    if missing := [s for s in item.source_item_ids if s not in stated]:
        return f"source_not_in_evidence: {missing}"
    images = {turns[k].image_id for k in item.evidence_turns}
    if missing := [i for i in item.evidence_images if i not in images]:
        return f"image_not_in_evidence: {missing}"
    return None


def consistency_problem(c: BenchmarkCandidate, dialogue: Dialogue, plan: TimelinePlan, state: HistoryState,
                        images: dict[str, ImageRecord]) -> str | None:
    if problem := evidence_problem(c, dialogue, plan):
        return problem
    gold = gold_text(c)
    user_text = f" {normalize(' '.join(t.user for t in dialogue.turns))} "
    for text, fact in c.option_facts.items():
        if state.holds(fact, images) != (text == gold):
            return f"gold_not_true_in_history: {fact.fact} {fact.args}" if text == gold \
                else f"distractor_true_in_history: {text!r}"
        position = ENTITY_ARG.get(fact.fact)
        if position is None:
            continue
        entity = fact.args[position]
        if text != gold and normalize(entity) not in state.told and f" {normalize(entity)} " in user_text:
            return f"distractor_mentioned_in_history: {entity!r}"
        if text == gold and fact.fact in NEGATABLE:
            last = max(c.item.evidence_turns)
            for t in dialogue.turns:
                if t.turn_index > last and t.time < c.item.time and negates(t.user, entity):
                    return f"gold_negated_later: turn {t.turn_index}"
    return None


# ---------------------------------------------------------------------------------------------- duplicates


def near_duplicates(cands: list[BenchmarkCandidate], ratio: float) -> dict[str, str]:
    """Per persona, a question asked twice: the same query, or a near-identical one with the same gold."""
    out: dict[str, str] = {}
    kept: dict[str, list[BenchmarkCandidate]] = defaultdict(list)
    for c in sorted(cands, key=lambda c: c.item.item_id):
        query, gold = normalize(c.item.query), normalize(gold_text(c))
        for other in kept[c.item.persona_id]:
            similar = SequenceMatcher(None, query, normalize(other.item.query)).ratio()
            if similar == 1.0 or (similar >= ratio and gold == normalize(gold_text(other))):
                out[c.item.item_id] = f"near_duplicate_of {other.item.item_id} ({similar:.2f})"
                break
        else:
            kept[c.item.persona_id].append(c)
    return out


# ---------------------------------------------------------------------------------------------- blind


class BlindAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    answer: Literal["(a)", "(b)", "(c)", "(d)"]


@dataclass(frozen=True)
class BlindAsk:
    item_id: str
    question_type: str
    gold: str
    context: str
    request: TeacherRequest


def blind_asks(cfg: PipelineConfig, cands: list[BenchmarkCandidate], personas: dict[str, Persona]) -> list[BlindAsk]:
    """Each item twice: with the query and options only, and with the persona's profile as well. The second time
    the options come in reverse order, so the gold has another letter and a judge that favours one letter cannot
    solve an item on both runs."""
    out = []
    for c in cands:
        profile = personas[c.item.persona_id].profile.to_spec()
        for k, context in enumerate(BLIND_CONTEXTS):
            texts = list(c.item.choices.values())[::-1 if k % 2 else 1]
            choices = dict(zip(LETTERS, texts))
            messages = chat("benchmark_blind", query=c.item.query, choices=choices,
                            profile=profile if context == "profile_only" else None)
            gold = LETTERS[texts.index(gold_text(c))]
            out.append(BlindAsk(c.item.item_id, c.item.question_type, gold, context, TeacherRequest(
                messages, Sampling(0.0, 1.0, 24, request_seed(cfg.seed, "blind", c.item.item_id, context)),
                BlindAnswer, tag=f"blind:{c.item.persona_id}:{context}")))
    return out


def blind_verdicts(asks: list[BlindAsk], answers: dict[str, list[TeacherResult]],
                   max_correct_share: float) -> tuple[dict[str, str], list[BlindAccuracy]]:
    """answers: judge -> results aligned with `asks`. Rejects items more than `max_correct_share` of the blind runs
    answered right (or that no run answered), and reports accuracy per judge, context and task."""
    runs: dict[str, list[bool]] = defaultdict(list)
    tally: Counter = Counter()
    for judge, results in answers.items():
        for ask, res in zip(asks, results, strict=True):
            if not res.ok:
                continue
            right = res.value.answer == ask.gold  # type: ignore[union-attr]
            runs[ask.item_id].append(right)
            tally[judge, ask.context, ask.question_type, "answered"] += 1
            tally[judge, ask.context, ask.question_type, "correct"] += right
    problems = {}
    for item_id in {a.item_id for a in asks}:
        got = runs.get(item_id, [])
        if not got:
            problems[item_id] = "blind_unanswered"
        elif sum(got) / len(got) > max_correct_share:
            problems[item_id] = f"solved_blind: {sum(got)}/{len(got)} runs"
    accuracy = [BlindAccuracy(judge=j, context=ctx, question_type=t, answered=tally[j, ctx, t, "answered"],  # type: ignore[arg-type]
                              correct=tally[j, ctx, t, "correct"])
                for j in answers for ctx in BLIND_CONTEXTS for t in TASKS]
    return problems, accuracy


# ---------------------------------------------------------------------------------------------- balance


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    return sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(k, n + 1))


def _trim(group: list[BenchmarkCandidate], flagged: Callable[[BenchmarkCandidate], bool], p: float, alpha: float,
          reason: str, out: dict[str, str]) -> None:
    """Drop flagged items (the last ids first) until their count is no longer improbably high under chance p."""
    alive = [c for c in group if c.item.item_id not in out]
    hits = sorted((c for c in alive if flagged(c)), key=lambda c: c.item.item_id)
    while hits and binomial_tail(len(hits), len(alive), p) < alpha:
        dropped = hits.pop()
        alive.remove(dropped)
        out[dropped.item.item_id] = reason


def gold_extreme(c: BenchmarkCandidate, longest: bool) -> bool:
    lengths = [option_length(t) for t in c.item.choices.values()]
    extreme = max(lengths) if longest else min(lengths)
    return lengths.count(extreme) == 1 and option_length(gold_text(c)) == extreme


def is_unknown_answer(text: str) -> bool:
    return normalize(text) in {normalize(u) for u in bench_vocabulary()["unknown_answers"]}


def balance_problems(cands: list[BenchmarkCandidate], alpha: float) -> dict[str, str]:
    out: dict[str, str] = {}
    by_task: dict[str, list[BenchmarkCandidate]] = defaultdict(list)
    for c in cands:
        by_task[c.item.question_type].append(c)
    for task, group in sorted(by_task.items()):
        if task == LGT:
            for state in ("done", "not done", "unknown"):
                _trim(group, lambda c, s=state: goal_state_group(c) == s, 1 / 3, alpha,
                      f"goal_state_skewed: {state}", out)
        _trim(group, lambda c: gold_extreme(c, True), 0.25, alpha, "gold_uniquely_longest_too_often", out)
        _trim(group, lambda c: gold_extreme(c, False), 0.25, alpha, "gold_uniquely_shortest_too_often", out)
        alive = [c for c in group if c.item.item_id not in out]
        gold_unknown = sorted((c for c in alive if is_unknown_answer(gold_text(c))), key=lambda c: c.item.item_id)
        as_distractor = sum(any(is_unknown_answer(t) for t in c.item.choices.values() if t != gold_text(c))
                            for c in alive)
        while len(gold_unknown) > as_distractor:
            out[gold_unknown.pop().item.item_id] = "unknown_answer_gold_more_often_than_distractor"
    return out


def letter_problems(cands: list[BenchmarkCandidate]) -> dict[str, str]:
    """Per task, gold letters may differ in count by one at most; surplus items of the commonest letter go."""
    out: dict[str, str] = {}
    by_task: dict[str, list[BenchmarkCandidate]] = defaultdict(list)
    for c in sorted(cands, key=lambda c: c.item.item_id):
        by_task[c.item.question_type].append(c)
    for group in by_task.values():
        letters = {letter: [c for c in group if c.item.answer == letter] for letter in LETTERS}
        while max(map(len, letters.values())) - min(map(len, letters.values())) > 1:
            surplus = max(letters, key=lambda k: len(letters[k]))
            out[letters[surplus].pop().item.item_id] = f"gold_letter_imbalance: {surplus}"
    return out
