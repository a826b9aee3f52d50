"""Automated quality gates for benchmark items, one per failure mode peer persona benchmarks shipped (broken text,
items a model solves without the history, gold given away by its form, wrong date arithmetic, answers a later turn
changed, duplicates):

- lint: the query has no empty or dangling slot; every option's value reads as a phrase of its kind (no sentence,
  list or template words inside a slot); a wrong option failing it leaves the pool, a failing gold the item;
- time: every relative time phrase the item adds to its query is the one computed from the probe and the evidence
  turn (a phrase inside a plan value, like a routine's "on Thursday nights", is the plan's, not the item's);
- consistency: evidence turns exist, precede the probe and are user turns stating the facts; the gold's claim holds
  in the state the *whole* history leaves and no later user turn denies it; a wrong option whose claim holds, or a
  never-told one the history mentions, leaves the pool; an item left with fewer than three wrong options goes;
- near_duplicate: one question per persona however it is worded;
- distractors: three distractors could be assigned (see `distractors.assign_distractors`);
- options: the four offered options re-checked: the gold's claim holds, every distractor's fails;
- form: four distinct, non-nested options of one claim kind, within a length ratio, in one casing and punctuation
  style, with no name or number only the gold carries;
- blind: the teacher and any extra judges answer from the query and options only, and with the profile only; an
  item most blind runs get right is dropped;
- balance: per task, the gold is the unique longest or the unique shortest option at most one item more than a
  quarter of the time, no gold value of a task with a fixed option set (goal states, tip tiers) is gold more than
  one item over a quarter of the time, and "I don't know" options are gold no more often than they are distractors.

Every gate counts, per task, the items it checked and rejected; every rejected candidate keeps its reason.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from functools import lru_cache
from typing import Callable, Iterable, Literal

from pydantic import BaseModel, ConfigDict

from ..config import PipelineConfig
from ..schema import (
    BenchmarkCandidate, BenchmarkGateCount, BlindAccuracy, Dialogue, ImageRecord, Option, Persona, QuarantineRow,
    TimelinePlan,
)
from ..teacher.types import Sampling, TeacherRequest, TeacherResult
from .benchmark import LETTERS, bench_vocabulary, length_ratio, relative_phrase
from .benchmark_tasks import TASKS
from .common import chat, contains_phrase, negates, normalize, parse_time, request_seed
from .plan_values import OPENERS, value_problem
from .plans import realization
from .timeline import TimelineState

GATES = ("lint", "time", "consistency", "near_duplicate", "distractors", "options", "form", "blind", "balance")
BLIND_CONTEXTS = ("query_only", "profile_only")
WEEKDAYS = "monday|tuesday|wednesday|thursday|friday|saturday|sunday"
NUMBER_WORDS = r"\d+|a|an|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|a few|several"
TIME_REFERENCE = re.compile(
    rf"\b(earlier today|today|yesterday|last (?:{WEEKDAYS}|week|month|weekend)|on (?:{WEEKDAYS})"
    rf"|(?:about |around |roughly )?(?:{NUMBER_WORDS}) (?:days?|weeks?|months?|years?) ago)\b", re.IGNORECASE)
# answer type -> the plan value kind its option values are checked as (closed vocabularies need no check)
LINTED_TYPES = {"event": "event", "routine": "routine_action", "hobby": "hobby", "dislike": "dislike",
                "goal": "goal", "label": "label", "photo": "label"}
NAME = re.compile(r"[A-Z][a-z]{1,15}")


# ---------------------------------------------------------------------------------------------- ledger


@dataclass
class GateRun:
    """Applies gates in order and keeps, per (gate, task), how many distinct items were checked and rejected (an
    item the selection offers again after a refill is counted once per gate)."""

    checked: set[tuple[str, str, str]] = field(default_factory=set)  # (gate, task, item id)
    rejected_counts: Counter = field(default_factory=Counter)
    rejected: list[BenchmarkCandidate] = field(default_factory=list)

    def apply(self, gate: str, cands: list[BenchmarkCandidate], problems: dict[str, str]) -> list[BenchmarkCandidate]:
        kept = []
        for c in cands:
            task = c.item.question_type
            self.checked.add((gate, task, c.item.item_id))
            if c.item.item_id in problems:
                self.rejected_counts[gate, task] += 1
                self.rejected.append(c.model_copy(update={"rejected_by": f"{gate}: {problems[c.item.item_id]}"}))
            else:
                kept.append(c)
        return kept

    def apply_each(self, gate: str, cands: list[BenchmarkCandidate],
                   check: Callable[[BenchmarkCandidate], BenchmarkCandidate | str]) -> list[BenchmarkCandidate]:
        """`check` returns the candidate (its pool possibly pruned) or why it is rejected."""
        results = {c.item.item_id: check(c) for c in cands}
        kept = self.apply(gate, cands, {k: v for k, v in results.items() if isinstance(v, str)})
        return [results[c.item.item_id] for c in kept]  # type: ignore[misc]

    def counts(self, extra_tasks: Iterable[str] = ()) -> list[BenchmarkGateCount]:
        """One row per gate and task (all 13 tasks, zeros included), so the table's shape never changes."""
        tasks = [*TASKS, *extra_tasks]
        gates = [*GATES, *sorted({g for g, _, _ in self.checked} - set(GATES))]
        checked = Counter((g, t) for g, t, _ in self.checked)
        return [BenchmarkGateCount(gate=g, question_type=t, checked=checked[g, t],
                                   rejected=self.rejected_counts[g, t]) for g in gates for t in tasks]

    def quarantine_rows(self) -> list[QuarantineRow]:
        return [QuarantineRow(table_name="benchmark_items", row_key=f"{c.item.persona_id}:{c.item.item_id}",
                              rule=(c.rejected_by or "").split(":")[0], value=f"{c.rejected_by} | {c.item.query}")
                for c in self.rejected]


def pruned(c: BenchmarkCandidate, problem: Callable[[Option], str | None]) -> BenchmarkCandidate | str:
    """The candidate without the wrong options `problem` refuses, or why it cannot stand with what is left."""
    kept = [o for o in c.pool if problem(o) is None]
    if len(kept) < 3:
        reasons = Counter(p.split(":")[0] for o in c.pool if (p := problem(o)))
        return f"too_few_wrong_options: {len(kept)} left ({', '.join(f'{k} {n}' for k, n in sorted(reasons.items()))})"
    return c.model_copy(update={"pool": kept})


# ---------------------------------------------------------------------------------------------- lint


def query_problem(query: str) -> str | None:
    """An empty or dangling slot in the question's template ("What do I usually do when?")."""
    if re.search(r"[{}\[\]<>]|\s{2,}|\s[?.,]|^\s|\s$", query):
        return "broken_template"
    if not query.endswith("?"):
        return "not_a_question"
    last = normalize(query.rsplit("?", 1)[0]).split()[-1:]
    if not last or last[0] in OPENERS | {"a", "an", "the", "my", "your"}:
        return "dangling_slot"
    return None


def option_problem(answer_type: str, o: Option) -> str | None:
    """Whether the value an option puts in its slot reads as a phrase of its kind."""
    if not o.text.strip() or "\n" in o.text or re.search(r"[{}\[\]<>]", o.text):
        return "broken_option"
    if answer_type == "name":
        return None if NAME.fullmatch(o.text) else "not_a_name"
    kind = LINTED_TYPES.get(answer_type)
    problem = value_problem(kind, o.claim.value) if kind else None
    return f"{problem} in {o.claim.value!r}" if problem else None


def lint(c: BenchmarkCandidate) -> BenchmarkCandidate | str:
    if problem := query_problem(c.item.query):
        return f"query {problem}"
    if problem := option_problem(c.answer_type, c.gold):
        return f"gold {problem}"
    return pruned(c, lambda o: option_problem(c.answer_type, o))


# ---------------------------------------------------------------------------------------------- time


def outside_own_values(c: BenchmarkCandidate) -> str:
    """The query with the item's own plan values blanked out (its options and their claims' fields): a time phrase
    inside one of them, like a routine's "on Thursday nights", is the plan's wording, not a date the item worked
    out."""
    query = c.item.query
    values = {str(v) for o in [c.gold, *c.pool, *c.distractors] for v in o.claim.model_dump().values()}
    values |= {o.text for o in [c.gold, *c.pool]}
    for v in sorted(filter(None, values), key=len, reverse=True):
        query = standalone(v).sub(" ", query)
    return query


@lru_cache(maxsize=1 << 14)  # a run's candidates share their plan values: tens of thousands, more than re's cache holds
def standalone(value: str) -> re.Pattern[str]:
    """The value as a whole phrase, in any case."""
    return re.compile(rf"(?<!\w){re.escape(value)}(?!\w)", re.IGNORECASE)


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
    anchor = [k for k in item.evidence_turns if k in turns and turns[k].realizes
              and set(turns[k].realizes) & set(item.source_item_ids)]
    if not anchor:
        return "time_phrase_without_evidence_turn"
    computed = relative_phrase(probe, parse_time(turns[anchor[0]].time))
    if c.time_phrase != computed:
        return f"wrong_relative_time: {c.time_phrase!r}, computed {computed!r}"
    if c.time_phrase.lower() not in item.query.lower():
        return "time_phrase_not_in_query"
    if any(s != c.time_phrase.lower() for s in said):
        return f"unverified_time_reference: {said}"
    return None


# ---------------------------------------------------------------------------------------------- consistency


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


def user_text(dialogue: Dialogue) -> str:
    return f" {normalize(' '.join(t.user for t in dialogue.turns))} "


def wrong_option_problem(o: Option, state: TimelineState, images: dict[str, ImageRecord], history: str) -> str | None:
    """A wrong option must be false in the history's state; a never-told one must not be mentioned in it."""
    if o.claim.holds(state, images):
        return f"true_in_history: {o.text!r}"
    entity = o.claim.entity
    key = normalize(entity or "")
    if not o.told and key and key not in state.told and f" {key} " in history:
        return f"mentioned_in_history: {entity!r}"
    return None


def gold_problem(c: BenchmarkCandidate, dialogue: Dialogue, state: TimelineState,
                 images: dict[str, ImageRecord]) -> str | None:
    """The gold's claim holds at the probe, and no user turn after its evidence denies a current-state claim."""
    if not c.gold.claim.holds(state, images):
        return f"gold_not_true_in_history: {c.gold.claim.model_dump()}"
    entity = c.gold.claim.entity
    if c.gold.claim.negatable and entity:
        last = max(c.item.evidence_turns)
        for t in dialogue.turns:
            if t.turn_index > last and t.time < c.item.time and negates(t.user, entity):
                return f"gold_negated_later: turn {t.turn_index}"
    return None


def consistency(c: BenchmarkCandidate, dialogue: Dialogue, plan: TimelinePlan, state: TimelineState,
                images: dict[str, ImageRecord]) -> BenchmarkCandidate | str:
    if problem := evidence_problem(c, dialogue, plan) or gold_problem(c, dialogue, state, images):
        return problem
    history = user_text(dialogue)
    return pruned(c, lambda o: wrong_option_problem(o, state, images, history))


def offered_problem(c: BenchmarkCandidate, dialogue: Dialogue, state: TimelineState,
                    images: dict[str, ImageRecord]) -> str | None:
    """The four options as offered: the gold holds, every distractor is false (and unmentioned if never told)."""
    if problem := gold_problem(c, dialogue, state, images):
        return problem
    history = user_text(dialogue)
    return next((p for o in c.distractors if (p := wrong_option_problem(o, state, images, history))), None)


# ---------------------------------------------------------------------------------------------- form


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
    if sorted(o.text for o in c.options) != sorted(texts) or item.choices[item.answer] != c.gold.text:
        return "option_without_claim"
    if len({o.claim.kind for o in c.options}) > 1:
        return f"mixed_answer_types: {sorted({o.claim.kind for o in c.options})}"
    if (r := length_ratio(texts)) > max_ratio:
        return f"option_length_ratio {r:.2f} > {max_ratio}"
    if len({t[0].isupper() for t in texts}) > 1:
        return "inconsistent_casing"
    if len({t[-1] in ".!?;:," for t in texts}) > 1:
        return "inconsistent_punctuation"
    if len({bool(re.search(r"\d", t)) for t in texts}) > 1:
        return "mixed_answer_types: digits in some options only"
    tiers = bench_vocabulary()["tip_tiers"]
    if c.answer_type == "tip" and any(contains_phrase(t, tier) for t in texts for tier in tiers):
        return "tip_names_a_tier"
    if c.answer_type != "name":
        specifics = lambda t: set(re.findall(r"(?<=\s)[A-Z]\w+|\d+", t))  # noqa: E731  (names, numbers)
        only_gold = specifics(c.gold.text) - set().union(*(specifics(t) for t in texts if t != c.gold.text))
        if only_gold:
            return f"gold_only_specifics: {sorted(only_gold)}"
    return None


# ---------------------------------------------------------------------------------------------- duplicates


def near_duplicates(cands: list[BenchmarkCandidate], ratio: float) -> dict[str, str]:
    """Per persona, a question asked twice: the same query, or a near-identical one with the same gold."""
    out: dict[str, str] = {}
    kept: dict[str, list[BenchmarkCandidate]] = defaultdict(list)
    for c in sorted(cands, key=lambda c: c.item.item_id):
        query, gold = normalize(c.item.query), normalize(c.gold.text)
        for other in kept[c.item.persona_id]:
            if gold != normalize(other.gold.text):
                continue
            match = SequenceMatcher(None, query, normalize(other.item.query))
            # the quick ratios are upper bounds of ratio(): most pairs are ruled out without matching blocks
            if match.real_quick_ratio() >= ratio and match.quick_ratio() >= ratio and match.ratio() >= ratio:
                out[c.item.item_id] = f"near_duplicate_of {other.item.item_id} ({match.ratio():.2f})"
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
            gold = LETTERS[texts.index(c.gold.text)]
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


def allowed(n: int) -> int:
    """The most items of n a cue may mark: one more than a quarter (chance for four options)."""
    return math.ceil(n / 4) + 1


def _trim(group: list[BenchmarkCandidate], flagged: Callable[[BenchmarkCandidate], bool], reason: str,
          out: dict[str, str]) -> None:
    """Drop flagged items (the last ids first) until at most `allowed` of the group's live items are flagged."""
    alive = [c for c in group if c.item.item_id not in out]
    hits = sorted((c for c in alive if flagged(c)), key=lambda c: c.item.item_id)
    while hits and len(hits) > allowed(len(alive)):
        dropped = hits.pop()
        alive.remove(dropped)
        out[dropped.item.item_id] = reason


def gold_extreme(c: BenchmarkCandidate, longest: bool) -> bool:
    lengths = [len(t) for t in c.item.choices.values()]
    extreme = max(lengths) if longest else min(lengths)
    return lengths.count(extreme) == 1 and len(c.gold.text) == extreme


def is_unknown_answer(text: str) -> bool:
    return normalize(text) in {normalize(u) for u in bench_vocabulary()["unknown_answers"]}


def balance_problems(cands: list[BenchmarkCandidate]) -> dict[str, str]:
    out: dict[str, str] = {}
    by_task: dict[str, list[BenchmarkCandidate]] = defaultdict(list)
    for c in cands:
        by_task[c.item.question_type].append(c)
    for task, group in sorted(by_task.items()):
        offered = {frozenset(o.claim.value for o in c.options) for c in group}
        if len(offered) == 1:  # a fixed option set: every value gold about a quarter of the time
            for value in sorted(next(iter(offered))):
                _trim(group, lambda c, v=value: c.gold.claim.value == v, f"gold_value_skewed: {value}", out)
        _trim(group, lambda c: gold_extreme(c, True), "gold_uniquely_longest_too_often", out)
        _trim(group, lambda c: gold_extreme(c, False), "gold_uniquely_shortest_too_often", out)
        alive = [c for c in group if c.item.item_id not in out]
        gold_unknown = sorted((c for c in alive if is_unknown_answer(c.gold.text)), key=lambda c: c.item.item_id)
        as_distractor = sum(any(is_unknown_answer(o.text) for o in c.distractors) for c in alive)
        while len(gold_unknown) > as_distractor:
            out[gold_unknown.pop().item.item_id] = "unknown_answer_gold_more_often_than_distractor"
    return out
