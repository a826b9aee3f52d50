"""From drafts to published items: candidates whose ids carry no answer, selection per persona, the balanced
distractor assignment, gold letters drawn independently per item, and Personality Alignment specs.

- Ids hash the persona, the task, the query and a seeded rank among drafts that share that query: never an
  option, an evidence turn or a plan value, so no id can be mapped to its answer.
- Selection: up to `items_per_persona` per persona, every task once before any twice, the task least asked so far
  overall first, image items steered to `image_item_share`; within a task the gold value least often gold so far
  (so the four goal states, the four tip tiers, tones, colours ... are each gold about equally often); no two
  items of one persona share a query or a gold value, and a question marked once-only (a photo's detail) is asked
  of one persona only, so no answer repeats across items; among a task's candidates, the ones with more
  told-but-wrong options first (a question whose gold is the only option the history mentions is a last resort).
- Letters: each item's gold letter is drawn on its own (seeded by its id), the distractors shuffled around it;
  the whole draw is repeated only when the overall counts would fail a chi-square test at 5%. No letter quota per
  task: a quota makes the last letters of a task predictable to anyone counting.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import count

from ..config import PipelineConfig
from ..schema import (
    AlignmentPair, BenchmarkCandidate, BenchmarkItem, Dialogue, ImageRecord, Persona, TimelinePlan, bucket_of,
    fmt_time,
)
from .alignment import PairSpec, contrasting_profile
from .benchmark import LETTERS
from .benchmark_tasks import TASKS, Draft, PersonaQuestions
from .common import normalize, rng_for, stable_id
from .distractors import Pools
from .timeline import plan_state

CHI2_3DF_5PCT = 7.815  # chi-square critical value, 3 degrees of freedom, 5%


def persona_candidates(cfg: PipelineConfig, persona: Persona, dialogue: Dialogue, plan: TimelinePlan,
                       images: dict[str, ImageRecord], pools: Pools,
                       tips: dict[str, dict[str, str]]) -> list[BenchmarkCandidate]:
    """Every question the persona's realized plan supports, in every registered task."""
    q = PersonaQuestions(cfg, persona, dialogue, plan, images, pools, tips)
    by_query: dict[tuple[str, str], list[Draft]] = defaultdict(list)
    for t in TASKS.values():
        for d in t.generate(q):
            by_query[d.task, d.query].append(d)
    pid, bucket = persona.persona_id, bucket_of(persona.split, len(dialogue.turns))
    out = []
    for (task, query), drafts in sorted(by_query.items()):
        rng = rng_for(cfg.seed, "question-ids", pid, task, query)
        for rank, d in enumerate(rng.sample(drafts, k=len(drafts))):
            item = BenchmarkItem(
                item_id=stable_id("q_", pid, task, query, rank), persona_id=pid, bucket=bucket,
                type=TASKS[task].aspect, question_type=task, time=fmt_time(q.probe), query=query, choices={},
                answer="", evidence_turns=[t.turn_index for t in d.evidence], evidence_images=list(d.images),
                source_item_ids=d.sources)
            out.append(BenchmarkCandidate(item=item, answer_type=d.answer_type, time_phrase=d.time_phrase,
                                          gold=d.gold, pool=d.pool, once_key=d.once_key))
    return out


def gold_value(c: BenchmarkCandidate) -> str:
    return normalize(c.gold.claim.value)


def select_items(cfg: PipelineConfig, candidates: list[BenchmarkCandidate]) -> list[BenchmarkCandidate]:
    """See the module docstring. Personas are served in id order, each from a seeded shuffle of its candidates."""
    n, share = cfg.benchmark.items_per_persona, cfg.benchmark.image_item_share
    by_persona: dict[str, list[BenchmarkCandidate]] = defaultdict(list)
    for c in sorted(candidates, key=lambda c: c.item.item_id):
        by_persona[c.item.persona_id].append(c)
    tasks: Counter[str] = Counter()
    golds: Counter[tuple[str, str]] = Counter()
    asked_once: set[str] = set()
    images = total = 0
    chosen = []
    for pid, cands in sorted(by_persona.items()):
        rng = rng_for(cfg.seed, "benchmark-select", pid)
        shuffled = rng.sample(cands, k=len(cands))
        tie = {t: rng.random() for t in TASKS}
        mine: Counter[str] = Counter()
        queries: set[str] = set()
        values: set[str] = set()

        def open_(c: BenchmarkCandidate) -> bool:
            entity = c.gold.claim.entity
            return (c.item.query not in queries and (c.once_key is None or c.once_key not in asked_once)
                    and (entity is None or normalize(entity) not in values))

        while sum(mine.values()) < n:
            available = [c for c in shuffled if open_(c)]
            if not available:
                break
            want_image = images < share * (total + 1)
            by_task = defaultdict(list)
            for c in available:
                by_task[c.item.question_type].append(c)
            task = min(by_task, key=lambda t: (mine[t], tasks[t],
                                               want_image and not any(c.item.evidence_images for c in by_task[t]),
                                               tie[t]))
            pick = min(by_task[task], key=lambda c: (bool(c.item.evidence_images) != want_image,
                                                     -min(sum(o.told for o in c.pool), 3),
                                                     golds[task, gold_value(c)]))
            chosen.append(pick)
            shuffled.remove(pick)
            queries.add(pick.item.query)
            if pick.gold.claim.entity is not None:
                values.add(normalize(pick.gold.claim.entity))
            if pick.once_key is not None:
                asked_once.add(pick.once_key)
            mine[task] += 1
            tasks[task] += 1
            golds[task, gold_value(pick)] += 1
            total += 1
            images += bool(pick.item.evidence_images)
    return chosen


def letter_draw(seed: int, cands: list[BenchmarkCandidate]) -> dict[str, str]:
    """Item id -> gold letter, each drawn on its own; the first round whose overall counts pass the chi-square
    test (so the release as a whole is not skewed to one letter by chance)."""
    for round_ in count():
        letters = {c.item.item_id: rng_for(seed, "gold-letter", round_, c.item.item_id).choice(LETTERS) for c in cands}
        counts = Counter(letters.values())
        expected = len(cands) / len(LETTERS)
        if not cands or sum((counts[k] - expected) ** 2 / expected for k in LETTERS) <= CHI2_3DF_5PCT:
            return letters
    raise AssertionError("unreachable")


def assign_letters(cfg: PipelineConfig, candidates: list[BenchmarkCandidate]) -> list[BenchmarkCandidate]:
    """Choices and gold letter for every candidate with its three distractors."""
    letters = letter_draw(cfg.seed, candidates)
    out = []
    for c in candidates:
        rng = rng_for(cfg.seed, "option-order", c.item.item_id)
        texts = [o.text for o in rng.sample(c.distractors, k=len(c.distractors))]
        letter = letters[c.item.item_id]
        texts.insert(LETTERS.index(letter), c.gold.text)
        item = c.item.model_copy(update={"choices": dict(zip(LETTERS, texts)), "answer": letter})
        out.append(c.model_copy(update={"item": item}))
    return out


# ---------------------------------------------------------------------------------------------- alignment


def alignment_specs(cfg: PipelineConfig, persona: Persona, plan: TimelinePlan, dialogue: Dialogue, probe: str,
                    items: list[BenchmarkCandidate]) -> dict[str, PairSpec]:
    """Personality Alignment for about `alignment_share` of a persona's items: replies to the item's own query at
    the probe, chosen for the personality the plan gives the user then, rejected generic and for a contrasting
    profile in turn (so the aligned reply is not simply the personalized one). Keyed by item id."""
    rng = rng_for(cfg.seed, "benchmark-alignment", persona.persona_id)
    ids = sorted(c.item.item_id for c in items)
    chosen = sorted(rng.sample(ids, k=round(cfg.benchmark.alignment_share * len(ids))))
    now = plan_state(persona, plan, probe)
    start = rng.randint(0, 1)
    query = {c.item.item_id: c.item.query for c in items}
    specs = {}
    for k, item_id in enumerate(chosen):
        kind = ("generic", "other_profile")[(start + k) % 2]
        specs[item_id] = PairSpec(stable_id("pa_", item_id), dialogue.turns[-1], probe, query[item_id], kind,
                                  now.personality, contrasting_profile(now.personality, rng)
                                  if kind == "other_profile" else None, tuple(now.likes))
    return specs


def attach_alignment(items: list[BenchmarkCandidate], pairs: dict[str, AlignmentPair]) -> list[BenchmarkCandidate]:
    """Items with the pair written for them, keyed by item id."""
    out = []
    for c in items:
        pair = pairs.get(c.item.item_id)
        if pair is not None:
            c = c.model_copy(update={"item": c.item.model_copy(
                update={"alignment": {"chosen": pair.chosen, "rejected": pair.rejected}})})
        out.append(c)
    return out
