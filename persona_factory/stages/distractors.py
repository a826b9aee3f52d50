"""Wrong answers, in one place for reasoning probes and the benchmark.

- Typed pools: per answer type (event, routine, hobby, name, ...), the values the closed vocabularies and every
  plan hold, with how many plans hold each (a value some plan holds can be gold somewhere).
- Own-value exclusion: a value of the persona's own plan or profile is never offered as a never-told distractor
  (it may be true, or the history may mention it in passing).
- Never told: pool values no user turn of the history mentions.
- Told-but-wrong traps are the task's business (the user's other routines, events, people, old likes ...): each
  generator knows which of the user's own values are false for its question, and marks them `told`.
- The benchmark's balanced assignment (`assign_distractors`): three distractors per item, told-but-wrong ones
  first, then the values that have been gold more often than offered as wrong, so across the benchmark every value
  is a distractor about three times as often as it is gold and no option is marked by being the usual answer; the
  gold's place among the four option lengths is drawn per item, so length says nothing either.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..schema import SKILL_LEVELS, GOAL_OUTCOMES, BenchmarkCandidate, ImageRecord, Option, Persona, TimelinePlan
from .benchmark import bench_vocabulary, length_ratio
from .common import normalize, rng_for
from .plans import vocabulary

# answer type -> (plan item kinds, the item field) whose values fill its pool
PLAN_VALUES: dict[str, tuple[tuple[str, ...], str]] = {
    "event": (("event",), "value"),
    "routine": (("routine",), "value"),
    "hobby": (("preference", "preference_shift"), "value"),
    "dislike": (("dislike",), "value"),
    "goal": (("goal",), "subject"),
    "name": (("relationship",), "subject"),
}


def _vocabulary_values() -> dict[str, list[str]]:
    """The closed vocabularies' values per answer type (plan vocabulary plus the benchmark's extra distractors)."""
    vocab, extra = vocabulary(), bench_vocabulary()["distractors"]
    return {
        "event": [*vocab["events"], *extra.get("event", [])],
        "routine": [*(r[1] for r in vocab["routines"]), *extra.get("routine", [])],
        "hobby": [*vocab["interests"], *extra.get("hobby", [])],
        "dislike": [*vocab["dislikes"], *extra.get("dislike", [])],
        "goal": [*vocab["goals"], *extra.get("goal", [])],
        "name": list(vocab["names"]),
        "relation": sorted(vocab["relations"]),
        "style": [pole for poles in vocab["styles"].values() for pole in poles],
        "purpose": list(vocab["photo_purposes"]),
        "goal state": list(GOAL_OUTCOMES),
        "skill level": list(SKILL_LEVELS),
    }


@dataclass(frozen=True)
class Pools:
    """Answer type -> value -> how many plans hold it (0 for a vocabulary value no plan took)."""

    values: dict[str, Counter[str]]

    @classmethod
    def of(cls, plans: Iterable[TimelinePlan], images: Iterable[ImageRecord]) -> "Pools":
        plans, out = list(plans), {}
        for answer_type, values in _vocabulary_values().items():
            counts: Counter[str] = Counter({v: 0 for v in values})
            if answer_type in PLAN_VALUES:
                kinds, attr = PLAN_VALUES[answer_type]
                for plan in plans:
                    counts.update({getattr(i, attr) for i in plan.items if i.kind in kinds})
            if answer_type == "name":
                counts.update(i.person for p in plans for i in p.items if i.kind == "event" and i.person)
            out[answer_type] = counts
        out["label"] = Counter(label for img in images for label in img.labels)
        return cls({k: _by_key(v) for k, v in out.items()})

    @classmethod
    def of_shard(cls, shard: str, personas: Iterable[Persona], plans: Iterable[TimelinePlan],
                 images: Iterable[ImageRecord]) -> "Pools":
        """The pools of one shard's plans: a reasoning history's wrong options come from its own shard, so a shard's
        data never depends on the others."""
        of_shard = {p.persona_id for p in personas if p.shard == shard}
        return cls.of([p for p in plans if p.persona_id in of_shard], images)

    def __getitem__(self, answer_type: str) -> list[str]:
        return sorted(self.values[answer_type])

    def never_told(self, answer_type: str, own: set[str], history: str) -> list[str]:
        """Pool values that are no value of the persona's own plan or profile and that `history` (normalized user
        text, space padded) never mentions."""
        return [v for v in self[answer_type] if normalize(v) not in own and f" {normalize(v)} " not in history]


def _by_key(counts: Counter[str]) -> Counter[str]:
    """One spelling per normalized value (the first seen), counts summed; empty values dropped."""
    out: Counter[str] = Counter()
    spelling: dict[str, str] = {}
    for value, n in counts.items():
        key = normalize(value)
        if key:
            out[spelling.setdefault(key, value)] += n
    return out


def own_values(persona: Persona, plan: TimelinePlan, images: dict[str, ImageRecord]) -> set[str]:
    """Every value of the persona's plan and profile, told or not, and the labels of its photos (normalized)."""
    own = {normalize(v) for i in plan.items for v in (i.value, i.subject, i.person or "", i.previous_value or "")}
    own |= {normalize(v) for v in persona.profile.preferences}
    own |= {normalize(label) for i in plan.items if i.image_id in images for label in images[i.image_id].labels}
    return own - {""}


def pick(gold: str, hard: Sequence[str], pool: Sequence[str], own: set[str], rng: random.Random,
         n: int = 3) -> list[str]:
    """n wrong answers for a probe: the `hard` ones (false by the history's state, e.g. an outdated value) first,
    then pool values outside `own`; none when fewer than n exist (a filler option would never be the gold, and a
    model would learn to skip it)."""
    taken, out = {normalize(gold)}, []
    for cand in [*hard, *rng.sample(list(pool), k=len(pool))]:
        key = normalize(cand)
        if len(out) < n and key and key not in taken and (cand in hard or key not in own):
            out.append(cand)
            taken.add(key)
    return out if len(out) == n else []


# ---------------------------------------------------------------------------------------------- benchmark


def nests(a: str, b: str) -> bool:
    """Equal, or one inside the other as whole words (normalized)."""
    a, b = f" {normalize(a)} ", f" {normalize(b)} "
    return a in b or b in a


def has_digit(text: str) -> bool:
    return any(ch.isdigit() for ch in text)


def fits(gold: Option, chosen: Sequence[Option], cand: Option, max_ratio: float) -> bool:
    """Whether `cand` can join the options: apart from every other one, digits only as the gold has them, and
    every option within the length ratio."""
    texts = [gold.text, *(o.text for o in chosen)]
    return (not any(nests(cand.text, t) for t in texts) and has_digit(cand.text) == has_digit(gold.text)
            and length_ratio([*texts, cand.text]) <= max_ratio)


def assign_distractors(cands: list[BenchmarkCandidate], seed: int,
                       max_ratio: float) -> tuple[list[BenchmarkCandidate], dict[str, str]]:
    """Three distractors for every candidate, from its pool: told-but-wrong ones first; then the value with the
    largest deficit (three times its gold count across `cands`, less how often it was offered as wrong so far);
    within each, the ones that put the gold at the length rank drawn for the item (0 = shortest .. 3 = longest).
    Items are visited in a seeded order so no item is always served first. Returns the candidates with their
    distractors and, by item id, why an item got fewer than three. Values are counted by their text within the
    answer type, as a reader of the release sees them."""
    gold_count: Counter[tuple[str, str]] = Counter((c.answer_type, normalize(c.gold.text)) for c in cands)
    offered: Counter[tuple[str, str]] = Counter()
    order = sorted(cands, key=lambda c: rng_for(seed, "assign-order", c.item.item_id).random())
    done: dict[str, BenchmarkCandidate] = {}
    problems: dict[str, str] = {}
    for c in order:
        rng = rng_for(seed, "assign", c.item.item_id)
        shorter_wanted = rng.randrange(4)  # how many distractors are shorter than the gold
        key = lambda o: (c.answer_type, normalize(o.text))  # noqa: E731
        deficit = lambda o: 3 * gold_count[key(o)] - offered[key(o)]  # noqa: E731
        ranked = sorted(c.pool, key=lambda o: (not o.told, -deficit(o), rng.random()))
        chosen: list[Option] = []
        for strict in (True, False):
            for o in ranked:
                if len(chosen) == 3 or o in chosen or not fits(c.gold, chosen, o, max_ratio):
                    continue
                shorter = sum(len(x.text) < len(c.gold.text) for x in chosen)
                side_full = (shorter >= shorter_wanted if len(o.text) < len(c.gold.text)
                             else len(chosen) - shorter >= 3 - shorter_wanted if len(o.text) > len(c.gold.text)
                             else False)
                if strict and side_full and not o.told:
                    continue
                chosen.append(o)
        if len(chosen) < 3:
            problems[c.item.item_id] = f"too_few_distractors: {len(chosen)} fit of {len(c.pool)}"
        offered.update(key(o) for o in chosen)
        done[c.item.item_id] = c.model_copy(update={"distractors": chosen})
    return [done[c.item.item_id] for c in cands], problems
