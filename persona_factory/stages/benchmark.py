"""Persona-MME-style items: first-person questions at the persona's single probe time (after the last turn),
four options, one gold letter. Gold and evidence come from the plan and the turns that realized it; relative
time phrases are computed from probe time and event time; gold letters rotate per task by construction."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

from ..config import PipelineConfig
from ..schema import AlignmentPair, BenchmarkItem, Dialogue, ImageRecord, Persona, PlanItem, TimelinePlan, Turn, fmt_time
from .common import normalize, parse_time, rng_for, stable_id

LETTERS = ("(a)", "(b)", "(c)", "(d)")
TASKS = {  # question_type -> type (aspect), exact Persona-MME strings
    "Semantic Information Recall": "Memory Recall",
    "Visual Detail Recall": "Memory Recall",
    "Relationship Recognition": "Relationship Understanding",
    "Behavioral Pattern Recognition": "Behavioral Awareness",
    "Long-term Goal Tracking": "Behavioral Awareness",
    "Latest Preference Recognition": "Preference Recognition",
}
GOAL_STATES = {"finished": "Yes, I finished it", "gave up": "No, I gave up on it",
               "making progress": "Still in progress, last I told you", "unknown": "I never told you about that"}
FALLBACK_DISTRACTORS = {
    "event": ["went to a pottery fair", "visited an old friend", "ran a charity 5k", "repainted the kitchen"],
    "name": ["Jordan", "Priya", "Marco", "Elena"],
    "routine": ["swimming on Monday evenings", "piano practice after dinner", "a long walk every Saturday",
                "reading before bed"],
    "hobby": ["birdwatching", "salsa dancing", "woodworking", "chess"],
    "label": ["bicycle", "umbrella", "giraffe", "pizza"],
}


def relative_phrase(probe: datetime, event: datetime) -> str:
    """Computed, never written freely: 'earlier today', 'yesterday', 'last Monday', 'about 3 weeks ago' ..."""
    days = (probe.date() - event.date()).days
    if days <= 0:
        return "earlier today"
    if days == 1:
        return "yesterday"
    if days < 7:
        return f"on {event.strftime('%A')}"
    if days < 14:
        return "about a week ago"
    if days < 31:
        return f"about {round(days / 7)} weeks ago"
    return f"about {round(days / 30)} month{'s' if round(days / 30) > 1 else ''} ago"


def bucket(persona: Persona, dialogue: Dialogue) -> str:
    n = len(dialogue.turns)
    if persona.split == "bench_32k":
        return "50" if n <= 50 else "100"
    return "200" if n <= 200 else "500"


def distractor_pools(plans: list[TimelinePlan], images: list[ImageRecord]) -> dict[str, list[str]]:
    pools = {k: list(v) for k, v in FALLBACK_DISTRACTORS.items()}
    for plan in plans:
        for i in plan.items:
            key = {"event": "event", "routine": "routine", "preference": "hobby", "preference_shift": "hobby",
                   "relationship": "name"}.get(i.kind)
            if key:
                pools[key].append(i.subject if key == "name" else i.value)
    pools["label"] += [label for img in images for label in img.labels]
    return pools


def _options(gold: str, pool: list[str], rng, exclude: set[str] = frozenset(), fixed: list[str] = ()) -> list[str] | None:
    taken = {normalize(gold)} | {normalize(e) for e in exclude}
    opts = list(fixed)
    taken |= {normalize(o) for o in opts}
    for cand in rng.sample(pool, k=len(pool)):
        if len(opts) == 3:
            break
        if normalize(cand) and normalize(cand) not in taken:
            opts.append(cand)
            taken.add(normalize(cand))
    return opts if len(opts) == 3 else None


def candidates(persona: Persona, dialogue: Dialogue, plan: TimelinePlan, images: dict[str, ImageRecord],
               pools: dict[str, list[str]], probe: datetime, rng) -> list[dict]:
    """Every answerable (question_type, query, gold, distractors, evidence) the realized plan supports."""
    realized: dict[str, Turn] = {i: t for t in dialogue.turns for i in t.realizes}
    items = {i.item_id: i for i in plan.items}
    out = []

    def add(task: str, query: str, gold: str, distractors: list[str] | None, turns: list[Turn], src: list[str],
            evidence_images: list[str] = ()) -> None:
        if distractors:
            out.append({"task": task, "query": query, "gold": gold, "distractors": distractors,
                        "evidence_turns": [t.turn_index for t in turns], "evidence_images": list(evidence_images),
                        "sources": src})

    for item_id, turn in realized.items():
        item: PlanItem = items[item_id]
        when = relative_phrase(probe, parse_time(turn.time))
        if item.kind == "event":
            add("Semantic Information Recall", f"What did I tell you I did {when}?", item.value,
                _options(item.value, pools["event"], rng), [turn], [item_id])
        elif item.kind == "relationship":
            add("Relationship Recognition", f"Which person did I describe as my {item.value}?", item.subject,
                _options(item.subject, pools["name"], rng), [turn], [item_id])
        elif item.kind == "routine":
            add("Behavioral Pattern Recognition", "Which of these is one of my regular routines?", item.value,
                _options(item.value, pools["routine"], rng), [turn], [item_id])
        elif item.kind == "preference_shift":
            add("Latest Preference Recognition",
                f"Between {item.previous_value} and {item.value}, which am I more into these days?", item.value,
                _options(item.value, pools["hobby"], rng, fixed=[item.previous_value]), [turn], [item_id])
        elif item.kind == "goal":
            updates = [u for u in plan.items if u.kind == "goal_update" and u.cause_item_id == item_id
                       and u.item_id in realized]
            state = updates[-1].value if updates else "unknown"
            gold = GOAL_STATES[state]
            add("Long-term Goal Tracking", f"Did I ever finish my goal to {item.subject}?", gold,
                [v for k, v in GOAL_STATES.items() if k != state], [turn] + [realized[u.item_id] for u in updates],
                [item_id] + [u.item_id for u in updates])
    for turn in dialogue.turns:
        if turn.image_id:
            img = images[turn.image_id]
            when = relative_phrase(probe, parse_time(turn.time))
            add("Visual Detail Recall", f"In the photo I shared {when}, what was the main thing in it?",
                img.labels[0], _options(img.labels[0], pools["label"], rng, exclude=set(img.labels)), [turn], [],
                [img.image_id])
    return out


def build_items(cfg: PipelineConfig, personas: list[Persona], dialogues: dict[str, Dialogue],
                plans: dict[str, TimelinePlan], images: list[ImageRecord],
                pairs: dict[str, list[AlignmentPair]]) -> list[BenchmarkItem]:
    pools = distractor_pools(list(plans.values()), images)
    by_image = {i.image_id: i for i in images}
    letter_counter: Counter[str] = Counter()
    items: list[BenchmarkItem] = []
    for persona in sorted(personas, key=lambda p: p.persona_id):
        dialogue = dialogues.get(persona.persona_id)
        if persona.split == "train" or dialogue is None or not dialogue.turns:
            continue
        rng = rng_for(cfg.seed, "benchmark", persona.persona_id)
        probe = parse_time(dialogue.turns[-1].time) + timedelta(minutes=30)
        cands = candidates(persona, dialogue, plans[persona.persona_id], by_image, pools, probe, rng)
        chosen = _round_robin(cands, cfg.benchmark.items_per_persona, rng)
        persona_pairs = list(pairs.get(persona.persona_id, []))
        n_aligned = round(cfg.benchmark.alignment_share * len(chosen))
        for k, c in enumerate(chosen):
            slot = letter_counter[c["task"]] % 4  # rotating gold position: balanced letters per task
            letter_counter[c["task"]] += 1
            options = list(c["distractors"])
            rng.shuffle(options)
            options.insert(slot, c["gold"])
            alignment = None
            if k < n_aligned and persona_pairs:
                p = persona_pairs.pop(0)
                alignment = {"chosen": p.chosen, "rejected": p.rejected}
            items.append(BenchmarkItem(
                item_id=stable_id("q_", persona.persona_id, c["task"], c["query"]), persona_id=persona.persona_id,
                bucket=bucket(persona, dialogue), type=TASKS[c["task"]], question_type=c["task"], time=fmt_time(probe),
                query=c["query"], choices=dict(zip(LETTERS, options)), answer=LETTERS[slot],
                evidence_turns=c["evidence_turns"], evidence_images=c["evidence_images"],
                source_item_ids=c["sources"], alignment=alignment))
    return items


def _round_robin(cands: list[dict], n: int, rng) -> list[dict]:
    """Spread a persona's items over tasks as evenly as the history allows."""
    by_task: dict[str, list[dict]] = {}
    for c in sorted(cands, key=lambda c: (c["task"], c["query"])):
        by_task.setdefault(c["task"], []).append(c)
    for lst in by_task.values():
        rng.shuffle(lst)
    out, seen_queries = [], set()
    while len(out) < n and any(by_task.values()):
        for task in sorted(by_task):
            if by_task[task] and len(out) < n:
                c = by_task[task].pop()
                if normalize(c["query"]) not in seen_queries:
                    seen_queries.add(normalize(c["query"]))
                    out.append(c)
    return out
