"""A synthetic Persona-MME-style release for the shortcut audit's tests: clean by construction, with one knob per
shortcut the audit must find.

Clean means: every option of an item is told somewhere in its user's history — the gold in the evidence turns,
which relate it to the item's topic (the word the query asks about), each distractor in other turns — and
`evidence_turns` lists every turn that states the gold; ids are random; gold letters are a seeded shuffle of a
balanced multiset per task; option texts come from a per-task pool so every value is gold about as often as it is a
distractor; option lengths and capitalisation are independent of which one is gold; profiles and alignment replies
share no words with the options.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_factory.stages.common import stable_id
from quality.audit import AuditInput

TASKS = ("Visual Detail Recall", "Semantic Information Recall", "Explicit Intent Inference",
         "Implicit Intent Recognition", "Latest Preference Recognition", "Interest Evolution Analysis",
         "Implicit Preference Recommendation", "Behavioral Pattern Recognition", "Long-term Goal Tracking",
         "Relationship Recognition", "Relationship Dynamics Comprehension", "Tiered Explanation Delivery",
         "Generalizing to New Scenarios")
LETTERS = ("(a)", "(b)", "(c)", "(d)")
# three disjoint vocabularies: option values (made-up words, so two values rarely share one), item topics, the rest
VALUE_WORDS = sorted({c1 + v1 + c2 + v2 + c3 for c1 in "bdfgklmnprstvz" for v1 in "aiou" for c2 in "lmnrt"
                      for v2 in "aiou" for c3 in "kmnrx"})
TOPIC_WORDS = ("horizon iris island ivory jacket jasmine jigsaw juniper kayak kettle kite ladder lagoon lantern lava "
               "lemon lilac linen lizard locket lotus maple marble meadow melon meteor mint mirror mosaic moss "
               "mountain mural mustard nectar needle nutmeg oak oasis olive onyx orchard otter owl paddle palette "
               "panda papaya parrot pebble pepper pewter piano pillow pine planet plum pocket pollen poppy prairie "
               "prism pumpkin quartz quill quilt rabbit radish raven reef ribbon river robin rocket saffron sailboat "
               "salmon sapphire satin scarf seashell sequoia shadow silk silver").split()
FILLER_WORDS = ("sketch sparrow spruce squash stone storm sugar summit sunflower swan tangerine teapot thistle "
                "thunder tiger timber topaz tulip tundra turtle umbrella valley velvet violet volcano walnut willow "
                "window wizard yarrow zebra zephyr morning evening weekend neighbour office train coffee lunch "
                "weather garden market library museum concert").split()
N_USERS = 20
ITEMS_PER_TASK = 26
POOL_PER_TASK = 40


@dataclass(frozen=True)
class Shortcuts:
    """What to plant; all off is the clean release."""

    gold_longest: bool = False
    gold_in_query: bool = False
    gold_in_profile: bool = False
    history_emptied: bool = False
    ids_from_gold: bool = False
    rotating_letters: bool = False
    repeated_answer_tasks: int = 0  # in this many tasks one value is the gold of every item and never a distractor
    unlisted_gold_turn: bool = False  # the gold is also told in a turn evidence_turns does not list
    gold_only_mentioned: bool = False  # distractors are never told


def _value(rng: random.Random) -> str:
    words = rng.sample(VALUE_WORDS, rng.randint(1, 4))
    if rng.random() < 0.3:
        words[0] = words[0].title()
    return " ".join(words)


def synthetic_release(seed: int = 0, plant: Shortcuts = Shortcuts()) -> AuditInput:
    rng = random.Random(seed)
    pools = {t: sorted({_value(rng) for _ in range(POOL_PER_TASK * 2)})[:POOL_PER_TASK] for t in TASKS}
    fixed_gold = {t: f"Velvet {t.split()[0].lower()} harbor" for t in TASKS[:plant.repeated_answer_tasks]}
    users = [f"u{n:02d}" for n in range(N_USERS)]
    told: dict[str, list[tuple[str, str | None]]] = {u: [] for u in users}  # user -> (text, item key of a gold)
    golds: dict[str, list[str]] = {u: [] for u in users}
    records: list[dict[str, Any]] = []
    topics = {u: rng.sample(TOPIC_WORDS, len(TASKS) * ITEMS_PER_TASK // N_USERS + 2) for u in users}
    for t_index, task in enumerate(TASKS):
        letters = [LETTERS[k % 4] for k in range(ITEMS_PER_TASK)]
        rng.shuffle(letters)
        for n in range(ITEMS_PER_TASK):
            user = users[(t_index * ITEMS_PER_TASK + n) % N_USERS]
            topic = topics[user].pop()
            if task in fixed_gold:
                options = [fixed_gold[task], *rng.sample(pools[task], 3)]
            else:
                options = rng.sample(pools[task], 4)
            gold = max(options, key=len) if plant.gold_longest else options[0]
            key = f"{task}/{n}"
            told[user] += [(f"my {topic} {rng.choice(FILLER_WORDS)} went with {gold}", key)
                           for _ in range(rng.randint(1, 2))]
            if plant.unlisted_gold_turn:
                told[user].append((f"my {topic} again {gold}", None))
            if not plant.gold_only_mentioned:
                told[user] += [(f"{rng.choice(FILLER_WORDS)} once had {o}", None)
                               for o in options if o != gold for _ in range(rng.randint(1, 2))]
            golds[user].append(gold)
            query = f"What did I go with for my {topic}?"
            if plant.gold_in_query:
                query = f"Was it {gold} that I went with for my {topic}?"
            distractors = [o for o in options if o != gold]
            rng.shuffle(distractors)
            distractors.insert(LETTERS.index(letters[n]), gold)
            records.append({
                "data_path": f"./data/Persona-MME/samples/50/{user}/user_data.json", "type": "Aspect",
                "question_type": task, "time": "2024-09-30 20:00", "query": query,
                "choices": dict(zip(LETTERS, distractors)), "answer": letters[n], "key": key,
                "id": f"q_{rng.getrandbits(48):012x}",
                **({"alignment": {"chosen": _filler(rng, 15, 40), "rejected": _filler(rng, 15, 40)}}
                   if rng.random() < 0.2 else {})})
    user_data = {}
    for user in users:
        texts = told[user] + [(_filler(rng, 4, 10), None) for _ in range(len(told[user]) // 3)]
        rng.shuffle(texts)
        sessions = [[{"time": f"2024-09-{1 + k // 8:02d} {10 + k % 8}:00",
                      "user": _filler(rng, 6, 12) if plant.history_emptied else text,
                      "assistant": _filler(rng, 4, 8)} for k, (text, _) in enumerate(texts)][s:s + 8]
                    for s in range(0, len(texts), 8)]
        evidence: dict[str, list[int]] = {}
        for k, (_, key) in enumerate(texts):
            if key is not None:
                evidence.setdefault(key, []).append(k)
        preferences = golds[user] if plant.gold_in_profile else [_filler(rng, 2, 3) for _ in range(3)]
        user_data[f"./data/Persona-MME/samples/50/{user}/user_data.json"] = {
            "profile": {"name": user.title(), "preferences": preferences, "recent matters": [_filler(rng, 3, 5)]},
            "imgs": [], "sessions": sessions}
        for r in records:
            if r["data_path"].endswith(f"/{user}/user_data.json"):
                r["evidence_turns"] = evidence[r["key"]]
    for r in records:
        del r["key"]
        if plant.ids_from_gold:
            persona = Path(r["data_path"]).parent.name
            r["id"] = stable_id("q_", persona, r["question_type"], r["query"], r["choices"][r["answer"]])
    records.sort(key=lambda r: r["id"])  # the exporter's file order
    if plant.rotating_letters:
        _rotate_letters(records, random.Random(seed))
    return AuditInput(records, user_data)


def _filler(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(FILLER_WORDS) for _ in range(rng.randint(low, high)))


def _rotate_letters(records: list[dict[str, Any]], rng: random.Random) -> None:
    """Gold letters balanced by always taking the task's least-used letter (then the least used overall)."""
    per_task: dict[tuple[str, str], int] = {}
    overall: dict[str, int] = {}
    for r in sorted(records, key=lambda r: (r["question_type"], r["id"])):
        task = r["question_type"]
        letter = min(LETTERS, key=lambda k: (per_task.get((task, k), 0), overall.get(k, 0), rng.random()))
        per_task[task, letter] = per_task.get((task, letter), 0) + 1
        overall[letter] = overall.get(letter, 0) + 1
        gold = r["choices"][r["answer"]]
        others = [v for k, v in r["choices"].items() if k != r["answer"]]
        others.insert(LETTERS.index(letter), gold)
        r["choices"], r["answer"] = dict(zip(LETTERS, others)), letter


def write_release(inp: AuditInput, root: Path, histories: bool = True) -> Path:
    """The native layout: data/Persona-MME/Persona-MME.json and, unless told not to, every user_data.json."""
    file = root / "data" / "Persona-MME" / "Persona-MME.json"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(inp.records, indent=1), encoding="utf-8")
    for data_path, user in (inp.users or {}).items() if histories else ():
        (root / data_path).parent.mkdir(parents=True, exist_ok=True)
        (root / data_path).write_text(json.dumps(user), encoding="utf-8")
    return file
