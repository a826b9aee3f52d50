"""A model-free shortcut audit of a Persona-MME-style benchmark: can a program that never reasons over the history
score well? No model, no teacher, no network; deterministic (the same release gives byte-identical reports).

    python -m quality.audit PATH [--json OUT] [--seed N] [--debug]

PATH is a release root (holding data/Persona-MME/Persona-MME.json; `data_path` values are relative to it) or the
question file itself. Histories are read where their `user_data.json` files exist; the parts that need histories,
evidence turns or ids are reported "not applicable" when the release lacks them. Exit 0 when every applicable rule
passes, 1 when one fails, 2 on bad input (one line naming the file).

Measured, per task and overall (95% Wilson intervals; ties get fractional credit 1/k, so no tie-break can leak):
- blind solvers, which never read the history: longest and shortest option, specificity (digits, capitalised
  names), option-query and option-profile word overlap, a leave-one-out answer prior (how often an option's text
  was gold when the other items of its task offered it) and its template variant (words shared with the query
  masked), and a leave-one-out letter prior;
- history readers: a BM25 reader (the turns most relevant to the query score the options) and a mention reader
  (the option the history mentions most), each also with the item's evidence turns removed;
- the share of items whose gold is the only option the history mentions; whether ids map to the answer (known hash
  recipes, and a leave-one-out mapping from id characters to the gold letter); how regular the gold-letter sequence
  is against seeded shuffles of the same letters; for Personality Alignment pairs, how often length or overlap
  alone picks the chosen reply.
The rules these must satisfy are the RULES registry at the end; README.md explains each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from persona_factory.markdown import markdown_table

# ---------------------------------------------------------------------------------------------- thresholds

OVERALL_MAX_LOWER = 0.35  # blind solvers overall: lower end of the 95% interval at most chance + 10 points
TASK_MAX_LOWER = 0.40  # the same per task, where a task has MIN_JUDGED_ITEMS items
# a smaller task (and, for the rules on point estimates, a smaller release) is reported but not judged: its
# figures are too noisy to mean much
MIN_JUDGED_ITEMS = 25
GOLD_ONLY_MENTIONED_OVERALL = 0.15  # share of items whose gold is the only option the history mentions
GOLD_ONLY_MENTIONED_TASK = 0.50
ALIGNMENT_MAX_LOWER = 0.55  # a cue picking the chosen reply: lower end at most chance + 5 points
SEQUENCE_P = 0.01  # family-wise significance of the letter-sequence tests (Bonferroni over the tests run)
ID_FEATURE_P = 0.01  # significance of the id-feature test (its null: the best feature over letter shuffles)
ID_RECIPE_MIN_HITS = 2  # items whose id a recipe maps to the gold; a hash hit by chance is ~16^-12
SHUFFLES = 2000  # seeded shuffles giving the null distribution of the letter-sequence and id-feature statistics
MENTION_SLACK = 2  # other content words allowed between the words of a mentioned option
RETRIEVED_TURNS = 5  # turns the BM25 reader reads per question
BM25_K1, BM25_B = 1.2, 0.75
PRIOR_SMOOTHING = 1.0  # pseudo-offers at chance rate in the answer prior: an unseen text scores chance
Z95 = 1.959963984540054

OVERALL = "overall"
MME_JSON = Path("data/Persona-MME/Persona-MME.json")
REQUIRED = {"data_path": str, "type": str, "question_type": str, "time": str, "query": str, "choices": dict,
            "answer": str}


class AuditInputError(ValueError):
    """The input is not a Persona-MME-style release; the message names the file and the problem."""


# ---------------------------------------------------------------------------------------------- input


@dataclass
class AuditInput:
    """Question records exactly as in Persona-MME.json, and the users' user_data by data_path (None when the
    release ships no histories)."""

    records: list[dict[str, Any]]
    users: dict[str, dict[str, Any]] | None = None
    source: str = "release"
    notes: list[str] = field(default_factory=list)  # what the loader could not use


def load_audit_input(path: str | Path) -> AuditInput:
    """A release root or its question file; histories are loaded where all their files exist."""
    path = Path(path)
    file = path / MME_JSON if path.is_dir() else path
    if not file.is_file():
        raise AuditInputError(f"{file}: no such file (give a release root holding {MME_JSON} or the file itself)")
    root = file.parents[2] if file.parent.name == "Persona-MME" and file.parent.parent.name == "data" \
        else file.parent
    try:
        records = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AuditInputError(f"{file}: not JSON ({e})") from None
    if records == []:
        raise AuditInputError(f"{file}: holds no question records")
    _check_records(records, str(file))
    data_paths = sorted({r["data_path"] for r in records})
    missing = [p for p in data_paths if not (root / p).is_file()]
    if missing:  # a release shipped without (all) its histories: audit what it has
        notes = [] if len(missing) == len(data_paths) else [
            f"{len(missing)} of {len(data_paths)} histories are missing under {root}, e.g. {missing[0]}"]
        return AuditInput(records, None, str(path), notes)
    users: dict[str, dict[str, Any]] = {}
    for data_path in data_paths:
        user_file = root / data_path
        try:
            users[data_path] = json.loads(user_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise AuditInputError(f"{user_file}: not JSON ({e})") from None
        _check_user(users[data_path], str(user_file))
    return AuditInput(records, users, str(path))


def _check_records(records: Any, where: str) -> None:
    if not isinstance(records, list):
        raise AuditInputError(f"{where}: the top level must be a list of question records")
    for k, r in enumerate(records):
        at = f"{where}[{k}]"
        if not isinstance(r, dict):
            raise AuditInputError(f"{at}: a question record must be an object")
        for key, kind in REQUIRED.items():
            if not isinstance(r.get(key), kind):
                raise AuditInputError(f"{at}: {key!r} missing or not a {kind.__name__}")
        choices = r["choices"]
        if len(choices) < 2 or not all(isinstance(v, str) for v in choices.values()) or r["answer"] not in choices:
            raise AuditInputError(f"{at}: choices must map at least two labels to texts, the answer being one")
        if "alignment" in r and (not isinstance(r["alignment"], dict) or set(r["alignment"]) != {"chosen", "rejected"}
                                 or not all(isinstance(v, str) for v in r["alignment"].values())):
            raise AuditInputError(f"{at}: alignment needs exactly 'chosen' and 'rejected' texts")
        if "id" in r and not isinstance(r["id"], (str, int)):
            raise AuditInputError(f"{at}: id must be a string or an integer")
        turns = r.get("evidence_turns", [])
        if not isinstance(turns, list) or not all(isinstance(t, int) and t >= 0 for t in turns):
            raise AuditInputError(f"{at}: evidence_turns must be a list of turn indices")


def _check_user(user: Any, where: str) -> None:
    sessions = user.get("sessions") if isinstance(user, dict) else None
    if not isinstance(sessions, list) or not all(isinstance(s, list) for s in sessions):
        raise AuditInputError(f"{where}: 'sessions' must be a list of sessions, each a list of turns")
    for s in sessions:
        for t in s:
            if not (isinstance(t, dict) and all(isinstance(t.get(k), str) for k in ("time", "user", "assistant"))):
                raise AuditInputError(f"{where}: every turn needs 'time', 'user' and 'assistant' strings")


# ---------------------------------------------------------------------------------------------- text

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)*")
_RAW_WORD = re.compile(r"[A-Za-z0-9][\w'\-]*")
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between both
but by can could did do does doing done down during each either else even ever every few for from further get gets
getting got had has have having he her here hers herself him himself his how i if in into is it its itself just let
like me more most much my myself no nor not now of off on once one only or other our ours ourselves out over own
quite rather really same she should so some something such than that the their theirs them themselves then there
these they thing things this those though through to too under until up us very was we well were what when where
which while who whom why will with would yes yet you your yours yourself yourselves
i'm i've i'd i'll you're you've it's that's there's don't doesn't didn't isn't wasn't aren't can't won't let's
""".split())


def _stem(word: str) -> str:
    """Light suffix stripping, so that "bake", "baked", "bakes" and "baking" meet."""
    word = word.removesuffix("'s")
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            word = word[: -len(suffix)]
            break
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiouls":
        word = word[:-1]  # running -> runn -> run
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    return word


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def content_stems(text: str) -> list[str]:
    """Stemmed words that carry content: stopwords dropped, numbers kept."""
    return [_stem(w) for w in _words(text) if w not in STOPWORDS and (len(w) > 1 or w.isdigit())]


def _needed(n: int) -> int:
    """Of an option's n own content words, how many a turn must contain to mention it: all of one or two, two
    thirds of more."""
    return math.ceil(2 * n / 3)


def _flatten(obj: Any) -> str:
    if isinstance(obj, dict):
        return " ".join(_flatten(v) for v in obj.values())
    if isinstance(obj, list):
        return " ".join(_flatten(v) for v in obj)
    return str(obj)


# ---------------------------------------------------------------------------------------------- normalised items


@dataclass(frozen=True)
class Item:
    """One question, read once: options in label order, the gold as an index, the task without stray marks."""

    position: int  # in the question file
    task: str
    user: str  # data_path
    time: str
    query: str
    options: tuple[str, ...]
    gold: int
    raw_task: str
    item_id: str | None
    evidence: frozenset[int] | None
    alignment: tuple[str, str] | None  # (chosen, rejected)
    query_stems: frozenset[str]
    own_stems: tuple[frozenset[str], ...]  # each option's content stems not in the query (all of them if none)
    persona: str  # the user's folder name


@dataclass
class Turn:
    """A turn as the readers see it: its time and the content stems of the user's text, in order."""

    time: str
    sequence: tuple[str, ...]
    stems: Counter = field(init=False)

    def __post_init__(self) -> None:
        self.stems = Counter(self.sequence)

    @classmethod
    def of(cls, time: str, text: str) -> "Turn":
        return cls(time, tuple(content_stems(text)))

    def mentions(self, stems: frozenset[str]) -> bool:
        """Whether it holds at least _needed(n) of an option's n own content words within a span of at most
        MENTION_SLACK more content words: most of the option, close together (a paraphrase in other word order
        counts, words scattered over a long turn do not)."""
        need = _needed(len(stems))
        if not stems or sum(w in self.stems for w in stems) < need:
            return False
        hits = [(k, w) for k, w in enumerate(self.sequence) if w in stems]
        inside: Counter = Counter()
        start = 0
        for k, w in hits:
            inside[w] += 1
            while len(inside) >= need:
                if k - hits[start][0] + 1 <= need + MENTION_SLACK:
                    return True
                inside[hits[start][1]] -= 1
                if not inside[hits[start][1]]:
                    del inside[hits[start][1]]
                start += 1
        return False


@dataclass
class Corpus:
    """Everything the solvers and statistics read, tokenised once."""

    items: list[Item]
    histories: dict[str, list[Turn]] | None  # data_path -> turns in order (global turn index = position)
    profiles: dict[str, frozenset[str]] | None
    has_evidence: bool
    has_ids: bool
    notes: list[str]
    _views: dict = field(default_factory=dict)

    def view(self, item: Item, without_evidence: bool) -> "HistoryView":
        """The turns before the item's probe time, optionally without its evidence turns."""
        removed = item.evidence if without_evidence and item.evidence else frozenset()
        key = (item.user, item.time, removed)
        if key not in self._views:
            turns = self.histories[item.user]
            visible = [k for k, t in enumerate(turns) if t.time < item.time and k not in removed]
            self._views[key] = HistoryView([turns[k] for k in visible])
        return self._views[key]


def normalise(inp: AuditInput) -> Corpus:
    """Items with their text tokenised; a stray marker around a task name is read away and noted."""
    notes = list(inp.notes)
    renamed: Counter = Counter()
    items = []
    for k, r in enumerate(inp.records):
        task = r["question_type"].strip().lstrip("*").strip()
        if task != r["question_type"]:
            renamed[(r["question_type"], task)] += 1
        labels = list(r["choices"])
        options = tuple(r["choices"][label] for label in labels)
        query_stems = frozenset(content_stems(r["query"]))
        own = []
        for text in options:
            stems = frozenset(content_stems(text))
            own.append(stems - query_stems or stems)
        alignment = (r["alignment"]["chosen"], r["alignment"]["rejected"]) if "alignment" in r else None
        items.append(Item(
            position=k, task=task, user=r["data_path"], time=r["time"], query=r["query"], options=options,
            gold=labels.index(r["answer"]), raw_task=r["question_type"],
            item_id=str(r["id"]) if "id" in r else None,
            evidence=frozenset(r["evidence_turns"]) if "evidence_turns" in r else None,
            alignment=alignment, query_stems=query_stems, own_stems=tuple(own),
            persona=Path(r["data_path"]).parent.name))
    for (raw, task), n in sorted(renamed.items()):
        notes.append(f"{n} record(s) name the task {raw!r}; read as {task!r}")
    histories = profiles = None
    if inp.users is not None:
        missing = sorted({i.user for i in items} - set(inp.users))
        if missing:
            raise AuditInputError(f"{inp.source}: no history for data_path {missing[0]!r}")
        histories = {path: [Turn.of(t["time"], t["user"]) for s in u["sessions"] for t in s]
                     for path, u in inp.users.items()}
        profiles = {path: frozenset(content_stems(_flatten(u.get("profile", "")))) for path, u in inp.users.items()}
        for i in items:
            if i.evidence and max(i.evidence) >= len(histories[i.user]):
                raise AuditInputError(f"{inp.source}: record {i.position} cites evidence turns "
                                      f"{sorted(i.evidence)} beyond the {len(histories[i.user])} turns of {i.user}")
    else:
        notes.append("no histories: the history readers and mention statistics are not applicable")
    has_evidence = histories is not None and bool(items) and all(i.evidence is not None for i in items)
    if histories is not None and items and not has_evidence:
        notes.append("not every record lists evidence_turns: the no-evidence readers are not applicable")
    has_ids = bool(items) and all(i.item_id is not None for i in items)
    if items and not has_ids:
        notes.append("not every record has an id: the id checks and the id-order letter tests are not applicable")
    return Corpus(items, histories, profiles, has_evidence, has_ids, notes)


# ---------------------------------------------------------------------------------------------- history


class HistoryView:
    """The user turns a reader may see, with BM25 statistics over them.

    Only the user's side of a turn is read: the facts a question asks about are the user's, while assistant
    replies restate them or suggest alternatives, and counting a suggestion as a mention would hide a gold that
    only the user ever told."""

    def __init__(self, turns: list[Turn]):
        self.turns = turns
        self.df = Counter(w for t in turns for w in t.stems)
        self.lengths = [sum(t.stems.values()) for t in turns]
        self.avgdl = sum(self.lengths) / len(turns) if turns else 0.0
        self._mentions: dict[frozenset[str], int] = {}

    def bm25(self, query: Iterable[str], k: int) -> float:
        turn, n = self.turns[k], len(self.turns)
        score = 0.0
        for w in query:
            tf = turn.stems.get(w, 0)
            if tf:
                idf = math.log(1 + (n - self.df[w] + 0.5) / (self.df[w] + 0.5))
                norm = BM25_K1 * (1 - BM25_B + BM25_B * self.lengths[k] / (self.avgdl or 1))
                score += idf * tf * (BM25_K1 + 1) / (tf + norm)
        return score

    def retrieve(self, query: frozenset[str], n: int = RETRIEVED_TURNS) -> list[tuple[float, int]]:
        scored = [(self.bm25(query, k), k) for k in range(len(self.turns))]
        return sorted((s for s in scored if s[0] > 0), key=lambda s: (-s[0], s[1]))[:n]

    def mentions(self, stems: frozenset[str]) -> int:
        """How many turns mention an option (Turn.mentions)."""
        if stems not in self._mentions:
            self._mentions[stems] = sum(t.mentions(stems) for t in self.turns)
        return self._mentions[stems]


def _coverage(stems: frozenset[str], turn: Turn) -> float:
    return sum(w in turn.stems for w in stems) / len(stems) if stems else 0.0


# ---------------------------------------------------------------------------------------------- solvers


def credit(scores: list[float], gold: int) -> float:
    """1/k when the gold is among the k best-scored options, else 0."""
    best = max(scores)
    tied = [k for k, s in enumerate(scores) if s == best]
    return 1 / len(tied) if gold in tied else 0.0


@dataclass(frozen=True)
class Solver:
    name: str
    kind: str  # "blind" | "reader" | "no-evidence reader"
    needs: str  # "" | "histories" | "evidence": what the release must have
    scores: Callable[[Corpus], list[list[float]]]  # per item, per option: higher is the solver's pick


def _per_option(fn: Callable[[Corpus, Item, int], float]) -> Callable[[Corpus], list[list[float]]]:
    return lambda c: [[fn(c, i, k) for k in range(len(i.options))] for i in c.items]


def _specificity(text: str) -> int:
    """Digits, and capitalised words after the first (names): what makes an option sound specific."""
    words = _RAW_WORD.findall(text)
    return sum(any(ch.isdigit() for ch in w) for w in words) + sum(w[0].isupper() and w != "I" for w in words[1:])


def _prior_key(item: Item, k: int) -> str:
    return " ".join(_words(item.options[k]))


def _template_key(item: Item, k: int) -> str:
    """The option with its words that also occur in the query masked: "tips for pottery" asked about pottery
    becomes "tips for _", so templates filled with the item's own subject are counted together."""
    return " ".join("_" if _stem(w) in item.query_stems else w for w in _words(item.options[k]))


def _answer_prior(key: Callable[[Item, int], str]) -> Callable[[Corpus], list[list[float]]]:
    """Leave-one-out: how often an option text was gold when the other items of the task offered it."""

    def scores(c: Corpus) -> list[list[float]]:
        offered, golden = Counter(), Counter()
        for i in c.items:
            for k in range(len(i.options)):
                offered[i.task, key(i, k)] += 1
                golden[i.task, key(i, k)] += k == i.gold
        out = []
        for i in c.items:
            keys = [key(i, k) for k in range(len(i.options))]
            own_offered = Counter(keys)
            own_gold = Counter({keys[i.gold]: 1})
            chance = 1 / len(i.options)
            out.append([(golden[i.task, x] - own_gold[x] + chance * PRIOR_SMOOTHING)
                        / (offered[i.task, x] - own_offered[x] + PRIOR_SMOOTHING) for x in keys])
        return out

    return scores


def _letter_prior(c: Corpus) -> list[list[float]]:
    """Leave-one-out: how often each letter position was gold among the other items of the task."""
    golds = Counter((i.task, i.gold) for i in c.items)
    return [[golds[i.task, k] - (k == i.gold) for k in range(len(i.options))] for i in c.items]


def _bm25_reader(without_evidence: bool) -> Callable[[Corpus], list[list[float]]]:
    """The turns most relevant to the query (BM25), each option scored by how much of it they hold."""

    def scores(c: Corpus) -> list[list[float]]:
        out = []
        for i in c.items:
            view = c.view(i, without_evidence)
            top = view.retrieve(i.query_stems)
            out.append([sum(s * _coverage(own, view.turns[k]) for s, k in top) for own in i.own_stems])
        return out

    return scores


def _mention_reader(without_evidence: bool) -> Callable[[Corpus], list[list[float]]]:
    """The option the history mentions in the most turns, whatever the question."""
    return lambda c: [[c.view(i, without_evidence).mentions(own) for own in i.own_stems] for i in c.items]


SOLVERS = [
    Solver("longest option", "blind", "", _per_option(lambda c, i, k: len(i.options[k].strip()))),
    Solver("shortest option", "blind", "", _per_option(lambda c, i, k: -len(i.options[k].strip()))),
    Solver("specificity", "blind", "", _per_option(lambda c, i, k: _specificity(i.options[k]))),
    Solver("query overlap", "blind", "",
           _per_option(lambda c, i, k: len(frozenset(content_stems(i.options[k])) & i.query_stems))),
    Solver("profile overlap", "blind", "histories",
           _per_option(lambda c, i, k: len(frozenset(content_stems(i.options[k])) & c.profiles[i.user]))),
    Solver("answer prior", "blind", "", _answer_prior(_prior_key)),
    Solver("template prior", "blind", "", _answer_prior(_template_key)),
    Solver("letter prior", "blind", "", _letter_prior),
    Solver("BM25 reader", "reader", "histories", _bm25_reader(False)),
    Solver("mention reader", "reader", "histories", _mention_reader(False)),
    Solver("BM25 reader, no evidence", "no-evidence reader", "evidence", _bm25_reader(True)),
    Solver("mention reader, no evidence", "no-evidence reader", "evidence", _mention_reader(True)),
]


def _applicable(c: Corpus, needs: str) -> bool:
    return {"": True, "histories": c.histories is not None, "evidence": c.has_evidence}[needs]


# ---------------------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Rate:
    """A share with its 95% Wilson interval (successes may be fractional)."""

    successes: float
    n: int

    @property
    def value(self) -> float:
        return self.successes / self.n if self.n else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        if not self.n:
            return 0.0, 1.0
        p, n, z2 = self.value, self.n, Z95 * Z95
        centre = (p + z2 / (2 * n)) / (1 + z2 / n)
        half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
        return max(0.0, centre - half), min(1.0, centre + half)

    @property
    def lower(self) -> float:
        return self.interval[0]

    def cell(self) -> str:
        """For a table whose header says %: "34 (31–37)"."""
        low, high = self.interval
        return f"{100 * self.value:.0f} ({100 * low:.0f}–{100 * high:.0f})"

    def text(self) -> str:
        low, high = self.interval
        return f"{100 * self.value:.0f}% ({100 * low:.0f}–{100 * high:.0f}%, n = {self.n})"

    def as_dict(self) -> dict[str, float]:
        low, high = self.interval
        return {"n": self.n, "rate": round(self.value, 4), "low": round(low, 4), "high": round(high, 4)}


def _rates(items: list[Item], values: list[float]) -> dict[str, Rate]:
    """Per task (sorted) and overall."""
    by_task: dict[str, list[float]] = defaultdict(list)
    for i, v in zip(items, values):
        by_task[i.task].append(v)
    out = {t: Rate(sum(v), len(v)) for t, v in sorted(by_task.items())}
    out[OVERALL] = Rate(sum(values), len(values))
    return out


@dataclass(frozen=True)
class IdRecipe:
    name: str
    hits: int  # items whose id the recipe maps to the gold (and to no distractor)
    n: int


_HASHES = {"sha1": hashlib.sha1, "md5": hashlib.md5, "sha256": hashlib.sha256}
_SEPARATORS = {"\\x1f": "\x1f", "''": "", "' '": " ", "'|'": "|", "'\\n'": "\n"}
_PARTS: dict[str, Callable[[Item, str], tuple[str, ...]]] = {
    "option": lambda i, o: (o,),
    "query, option": lambda i, o: (i.query, o),
    "task, query, option": lambda i, o: (i.raw_task, i.query, o),
    "persona, task, query, option": lambda i, o: (i.persona, i.raw_task, i.query, o),
    "persona, query, option": lambda i, o: (i.persona, i.query, o),
    "persona, option": lambda i, o: (i.persona, o),
}
_HEX_RUN = re.compile(r"[0-9a-f]{8,}")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def id_recipes(c: Corpus) -> list[IdRecipe]:
    """Each recipe's hits: hashes of an option's text (alone or with the query, task, persona folder), as
    `stable_id` makes them (sha1 of the parts joined by \\x1f, a prefix of the hex digest), and the option's text
    written into the id."""
    if not c.has_ids:
        return []
    runs = [_HEX_RUN.findall(i.item_id.lower()) for i in c.items]
    out = []
    for (hname, fn), (sname, sep), (pname, parts) in (
            (h, s, p) for h in _HASHES.items() for s in _SEPARATORS.items() for p in _PARTS.items()):
        hits = 0
        for i, found in zip(c.items, runs):
            if not found:
                continue
            digests = [fn(sep.join(parts(i, o)).encode()).hexdigest() for o in i.options]
            matched = [k for k, d in enumerate(digests) if any(r in d for r in found)]
            hits += matched == [i.gold]
        out.append(IdRecipe(f"{hname}({pname}; joined by {sname})", hits, len(c.items)))
    hits = 0
    for i in c.items:
        slug = _slug(i.item_id)
        matched = [k for k, o in enumerate(i.options) if len(_slug(o)) >= 4 and _slug(o) in slug]
        hits += matched == [i.gold]
    out.append(IdRecipe("option text inside the id", hits, len(c.items)))
    return out


@dataclass(frozen=True)
class IdFeatureTest:
    feature: str  # the feature whose leave-one-out mapping scores best
    accuracy: Rate
    features_tried: int
    null_p99: float  # the 99th percentile of the best feature's accuracy over seeded shuffles of the letters
    p_value: float  # share of shuffles whose best feature does at least as well (with the observed one counted)


def _id_features(item_id: str, width: int) -> dict[str, str]:
    features = {f"char {k}": item_id[k] for k in range(min(width, len(item_id)))}
    features |= {f"char -{k + 1}": item_id[-1 - k] for k in range(min(width, len(item_id)))}
    if item_id.isdigit():
        features["int(id) mod 4"] = str(int(item_id) % 4)
    return features


def _loo_feature_credit(values: np.ndarray, letters: np.ndarray) -> np.ndarray:
    """Per row of `letters` (shuffles x items, letter indices 0-3): the summed credit of predicting each item's
    letter as the one most often seen with its feature value among the other items. Items sharing a value and a
    letter share that prediction, so it is computed once per (value, letter)."""
    rows, n_values = np.arange(letters.shape[0])[:, None], int(values.max()) + 1
    flat = ((rows * n_values + values[None, :]) * 4 + letters).ravel()
    counts = np.bincount(flat, minlength=letters.shape[0] * n_values * 4).reshape(-1, n_values, 4)
    total = np.zeros(letters.shape[0])
    for letter, own in enumerate(np.eye(4, dtype=counts.dtype)):
        tied = (counts - own) == (counts - own).max(axis=2, keepdims=True)
        total += (counts[..., letter] * tied[..., letter] / tied.sum(axis=2)).sum(axis=1)
    return total


def id_feature_test(c: Corpus, seed: int) -> IdFeatureTest | None:
    """Leave-one-out: the gold letter most often seen with the item's value of one id feature (a character at a
    position, the id modulo 4). The best feature's accuracy is compared with the best over seeded shuffles of the
    letters: the credits of one value's items rise and fall together, so a binomial test would not hold."""
    items = [i for i in c.items if len(i.options) == 4] if c.has_ids else []
    if not items:
        return None
    width = min(16, max(len(i.item_id) for i in items))
    rows = [_id_features(i.item_id, width) for i in items]
    features: dict[tuple[int, ...], str] = {}  # value codes -> the first feature giving them
    for name in sorted({f for r in rows for f in r}, key=lambda f: (
            f.startswith("int"), f.startswith("char -"), int(f.split()[-1]) if f.startswith("char") else 0)):
        codes: dict[str | None, int] = {}
        key = tuple(codes.setdefault(r.get(name), len(codes)) for r in rows)
        if len(codes) > 1:
            features.setdefault(key, name)
    if not features:
        return None
    letters = np.array([i.gold for i in items])
    values = [np.array(key) for key in features]
    observed = [float(_loo_feature_credit(v, letters[None, :])[0]) for v in values]
    best = max(range(len(values)), key=lambda k: (observed[k], -k))
    rng = np.random.default_rng([seed, 2])
    null = np.concatenate([
        np.max([_loo_feature_credit(v, shuffled) for v in values], axis=0)
        for shuffled in (rng.permuted(np.tile(letters, (min(250, SHUFFLES - done), 1)), axis=1)
                         for done in range(0, SHUFFLES, 250))])
    p = (1 + int((null >= observed[best] - 1e-9).sum())) / (1 + SHUFFLES)
    return IdFeatureTest(list(features.values())[best], Rate(observed[best], len(items)), len(values),
                         float(np.quantile(null, 0.99)) / len(items), p)


@dataclass(frozen=True)
class SequenceTest:
    order: str  # "file order" | "id order"
    statistic: str  # "permutation blocks" | "least-used tracker"
    observed: float  # share of blocks of four that are permutations / tracker accuracy, pooled over tasks
    null_p99: float  # the 99th percentile of the same statistic over seeded shuffles
    p_value: float  # share of shuffles at least as regular (with the observed one counted)


def _block_counts(m: np.ndarray, k: int) -> np.ndarray:
    """Per row, the most blocks of k consecutive letters that are permutations of all k, over the k offsets."""
    best = np.zeros(m.shape[0], dtype=np.int64)
    for offset in range(k):
        nb = (m.shape[1] - offset) // k
        if nb:
            blocks = np.sort(m[:, offset:offset + nb * k].reshape(m.shape[0], nb, k), axis=2)
            best = np.maximum(best, (blocks == np.arange(k)).all(axis=2).sum(axis=1))
    return best


def _tracker_credit(m: np.ndarray, k: int) -> np.ndarray:
    """Per row, the credit of predicting each letter as the one least used so far (ties share the credit)."""
    rows = np.arange(m.shape[0])
    used = np.zeros((m.shape[0], k))
    total = np.zeros(m.shape[0])
    for t in range(m.shape[1]):
        least = used == used.min(axis=1, keepdims=True)
        total += least[rows, m[:, t]] / least.sum(axis=1)
        used[rows, m[:, t]] += 1
    return total


def letter_sequence_tests(c: Corpus, seed: int) -> list[SequenceTest]:
    """Per task, the gold letters in file order (and id order): how many blocks of four are permutations of
    a–d, and how often the least-used letter so far is the gold, each against seeded shuffles of the same letters
    (so balance alone is not penalised, only an order more regular than chance)."""
    four = [i for i in c.items if len(i.options) == 4]
    orders = {"file order": sorted(four, key=lambda i: i.position)}
    if c.has_ids:
        orders["id order"] = sorted(four, key=lambda i: (i.item_id, i.position))
    stats = {"permutation blocks": _block_counts, "least-used tracker": _tracker_credit}
    out = []
    for o, (order, items) in enumerate(orders.items()):
        tasks: dict[str, list[int]] = defaultdict(list)
        for i in items:
            tasks[i.task].append(i.gold)
        for s, (name, fn) in enumerate(stats.items()):
            rng = np.random.default_rng([seed, o, s])
            observed, null, units = 0.0, np.zeros(SHUFFLES), 0
            for task in sorted(tasks):
                seq = np.array(tasks[task], dtype=np.int64)
                observed += float(fn(seq[None, :], 4)[0])
                null += fn(rng.permuted(np.tile(seq, (SHUFFLES, 1)), axis=1), 4)
                units += len(seq) // 4 if name == "permutation blocks" else len(seq)
            if units == 0:
                continue
            p = (1 + int((null >= observed - 1e-9).sum())) / (1 + SHUFFLES)
            out.append(SequenceTest(order, name, observed / units, float(np.quantile(null, 0.99)) / units, p))
    return out


def _pair_solvers(c: Corpus) -> dict[str, Callable[[Item, str], float]]:
    """Cues for telling the chosen reply from the rejected one without the history; higher is picked."""
    overlap = lambda text, stems: len(frozenset(content_stems(text)) & stems)  # noqa: E731
    out: dict[str, Callable[[Item, str], float]] = {
        "longer reply": lambda i, t: len(t), "shorter reply": lambda i, t: -len(t),
        "more query overlap": lambda i, t: overlap(t, i.query_stems),
        "less query overlap": lambda i, t: -overlap(t, i.query_stems)}
    if c.profiles is not None:
        out["more profile overlap"] = lambda i, t: overlap(t, c.profiles[i.user])
        out["less profile overlap"] = lambda i, t: -overlap(t, c.profiles[i.user])
    return out


def alignment_rates(c: Corpus) -> dict[str, Rate]:
    pairs = [i for i in c.items if i.alignment is not None]
    if not pairs:
        return {}
    return {name: Rate(sum(credit([fn(i, i.alignment[0]), fn(i, i.alignment[1])], 0) for i in pairs), len(pairs))
            for name, fn in _pair_solvers(c).items()}


# ---------------------------------------------------------------------------------------------- findings


@dataclass
class Findings:
    source: str
    n_items: int
    tasks: list[str]
    notes: list[str]
    has_histories: bool
    has_evidence: bool
    has_ids: bool
    solvers: dict[str, str]  # applicable solver -> kind
    accuracy: dict[str, dict[str, Rate]]  # solver -> task | overall -> rate
    gold_only_mentioned: dict[str, Rate]  # task | overall -> share; empty without histories
    id_recipes: list[IdRecipe]
    id_features: IdFeatureTest | None
    sequences: list[SequenceTest]
    alignment: dict[str, Rate]

    def of_kind(self, kind: str) -> list[str]:
        return [s for s, k in self.solvers.items() if k == kind]


def measure(c: Corpus, source: str, seed: int) -> Findings:
    solvers = [s for s in SOLVERS if _applicable(c, s.needs)]
    accuracy = {}
    for s in solvers:
        accuracy[s.name] = _rates(c.items, [credit(sc, i.gold) for sc, i in zip(s.scores(c), c.items)])
    gold_only: dict[str, Rate] = {}
    if c.histories is not None:
        flags = []
        for i in c.items:
            view = c.view(i, without_evidence=False)
            mentioned = [view.mentions(own) > 0 for own in i.own_stems]
            flags.append(float(mentioned[i.gold] and sum(mentioned) == 1))
        gold_only = _rates(c.items, flags)
    return Findings(
        source=source, n_items=len(c.items), tasks=sorted({i.task for i in c.items}), notes=c.notes,
        has_histories=c.histories is not None, has_evidence=c.has_evidence, has_ids=c.has_ids,
        solvers={s.name: s.kind for s in solvers}, accuracy=accuracy, gold_only_mentioned=gold_only,
        id_recipes=id_recipes(c), id_features=id_feature_test(c, seed), sequences=letter_sequence_tests(c, seed),
        alignment=alignment_rates(c))


# ---------------------------------------------------------------------------------------------- rules


PASS, FAIL, NOT_APPLICABLE = "pass", "FAIL", "not applicable"


@dataclass(frozen=True)
class RuleResult:
    name: str
    why: str
    status: str  # PASS | FAIL | NOT_APPLICABLE
    detail: str
    failures: tuple[tuple[str, str], ...] = ()  # (scope, what) for each breach

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "why": self.why,
                "failures": [{"scope": s, "what": w} for s, w in self.failures]}


@dataclass(frozen=True)
class Rule:
    name: str
    why: str
    check: Callable[[Findings], tuple[str, str, list[tuple[str, str]]] | None]  # None: not applicable

    def evaluate(self, f: Findings) -> RuleResult:
        outcome = self.check(f) if f.n_items else None
        if outcome is None:
            return RuleResult(self.name, self.why, NOT_APPLICABLE,
                              "the release lacks what this rule reads (or too few items to judge)")
        status, detail, failures = outcome
        return RuleResult(self.name, self.why, status, detail, tuple(failures))


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _limit(f: Findings, solvers: list[str], overall: float | None,
           per_task: float | None) -> tuple[str, str, list] | None:
    """Every solver's lower interval end at most `overall` overall and `per_task` in each task of at least
    MIN_JUDGED_ITEMS items (None: that scope is not judged here); not applicable when nothing is judged."""
    failures, judged = [], []
    for s in solvers:
        for scope, rate in f.accuracy[s].items():
            limit = overall if scope == OVERALL else per_task if rate.n >= MIN_JUDGED_ITEMS else None
            if limit is None:
                continue
            judged.append((rate.lower - limit, s, scope, limit))
            if rate.lower > limit:
                failures.append((scope, f"{s} {rate.text()}: lower end above {_pct(limit)}"))
    if failures:
        return FAIL, f"{len(failures)} breach(es), e.g. {failures[0][0]}: {failures[0][1]}", failures
    if not judged:
        return None
    _, s, scope, limit = max(judged)
    return PASS, f"closest: {s} in {scope}, {f.accuracy[s][scope].text()} (limit {_pct(limit)})", []


def _blind_overall(f: Findings):
    return _limit(f, f.of_kind("blind"), OVERALL_MAX_LOWER, None)


def _blind_per_task(f: Findings):
    return _limit(f, f.of_kind("blind"), None, TASK_MAX_LOWER)


def _no_evidence(f: Findings):
    if not f.has_evidence:
        return None
    return _limit(f, f.of_kind("no-evidence reader"), OVERALL_MAX_LOWER, TASK_MAX_LOWER)


def _history_helps(f: Findings):
    readers = f.of_kind("reader")
    if not readers or f.n_items < MIN_JUDGED_ITEMS:
        return None
    reader = max(readers, key=lambda s: (f.accuracy[s][OVERALL].value, s))
    blind = max(f.of_kind("blind"), key=lambda s: (f.accuracy[s][OVERALL].value, s))
    r, b = f.accuracy[reader][OVERALL], f.accuracy[blind][OVERALL]
    detail = f"best reader: {reader} {r.text()}; best blind solver: {blind} {b.text()}"
    return (PASS, detail, []) if r.value > b.value else (FAIL, detail, [(OVERALL, detail)])


def _gold_only(f: Findings):
    if not f.gold_only_mentioned or f.n_items < MIN_JUDGED_ITEMS:
        return None
    failures = []
    for scope, rate in f.gold_only_mentioned.items():
        limit = GOLD_ONLY_MENTIONED_OVERALL if scope == OVERALL else GOLD_ONLY_MENTIONED_TASK
        if rate.n >= MIN_JUDGED_ITEMS and rate.value > limit:
            failures.append((scope, f"gold the only mentioned option in {rate.text()} of items, "
                                    f"limit {_pct(limit)}"))
    detail = f"overall {f.gold_only_mentioned[OVERALL].text()}" + (
        f"; {len(failures)} breach(es), e.g. {failures[0][0]}" if failures else "")
    return (FAIL if failures else PASS), detail, failures


def _id_recipe(f: Findings):
    if not f.has_ids:
        return None
    found = [r for r in f.id_recipes if r.hits >= ID_RECIPE_MIN_HITS]
    top = max(f.id_recipes, key=lambda r: r.hits)
    if found:
        return FAIL, f"{top.name} recovers the gold of {top.hits} of {top.n} items", [
            (OVERALL, f"{r.name}: {r.hits} of {r.n} items") for r in found]
    return PASS, f"{len(f.id_recipes)} recipes tried; at most {top.hits} item(s) matched", []


def _id_feature(f: Findings):
    t = f.id_features
    if t is None:
        return None
    detail = (f"best of {t.features_tried} features: {t.feature} {t.accuracy.text()} (shuffles' 99th percentile "
              f"{_pct(t.null_p99)}), p = {t.p_value:.3g}")
    return (FAIL, detail, [(OVERALL, detail)]) if t.p_value < ID_FEATURE_P else (PASS, detail, [])


def _letters(f: Findings):
    if not f.sequences:
        return None
    alpha = SEQUENCE_P / len(f.sequences)
    failures = [(t.order, f"{t.statistic} {_pct(t.observed)} (shuffles' 99th percentile {_pct(t.null_p99)}), "
                          f"p = {t.p_value:.3g}") for t in f.sequences if t.p_value < alpha]
    lowest = min(f.sequences, key=lambda t: t.p_value)
    detail = (f"{len(failures)} of {len(f.sequences)} tests below p = {alpha:.3g}" if failures else
              f"lowest p = {lowest.p_value:.3g} ({lowest.statistic}, {lowest.order}); limit {alpha:.3g}")
    return (FAIL if failures else PASS), detail, failures


def _alignment(f: Findings):
    if not f.alignment:
        return None
    failures = [(OVERALL, f"{s} picks the chosen reply {r.text()}: lower end above {_pct(ALIGNMENT_MAX_LOWER)}")
                for s, r in f.alignment.items() if r.lower > ALIGNMENT_MAX_LOWER]
    s, r = max(f.alignment.items(), key=lambda x: (x[1].lower, x[0]))
    detail = f"strongest cue: {s} {r.text()}"
    return (FAIL if failures else PASS), detail, failures


RULES = [
    Rule("blind_overall", f"No solver that ignores the history may reach a lower interval end above "
         f"{_pct(OVERALL_MAX_LOWER)} overall (chance + 10 points).", _blind_overall),
    Rule("blind_per_task", f"Per task (n >= {MIN_JUDGED_ITEMS}), no blind solver's lower end above "
         f"{_pct(TASK_MAX_LOWER)}: a shortcut confined to one task still decides that task's score.", _blind_per_task),
    Rule("evidence_needed", "With the item's evidence turns removed, the history readers must fall to the blind "
         f"limits ({_pct(OVERALL_MAX_LOWER)} overall, {_pct(TASK_MAX_LOWER)} per task): the listed evidence is "
         "what answers the item, and no unlisted turn does.", _no_evidence),
    Rule("history_helps", "A reader of the history must score above every blind solver overall: otherwise the "
         "history is not what the items test.", _history_helps),
    Rule("gold_not_only_mentioned", f"The gold may be the only option the history mentions in at most "
         f"{_pct(GOLD_ONLY_MENTIONED_OVERALL)} of items overall and {_pct(GOLD_ONLY_MENTIONED_TASK)} per task "
         f"(each judged from {MIN_JUDGED_ITEMS} items): else spotting a mention answers without the time, state or "
         "relation asked.", _gold_only),
    Rule("id_not_from_answer", "No item id may be a hash of (or contain) its gold option's text: a release that "
         "withholds answers would give them away.", _id_recipe),
    Rule("id_features_uninformative", f"No id character (or id mod 4) may predict the gold letter better than it "
         f"does with the letters shuffled (leave-one-out mapping; p < {ID_FEATURE_P} fails).", _id_feature),
    Rule("letters_unpredictable", "Per task, in file and in id order, gold-letter blocks of four and a "
         "least-used-letter tracker may be no more regular than seeded shuffles of the same letters "
         f"(Bonferroni-adjusted p < {SEQUENCE_P} fails): balance must not make the sequence predictable.", _letters),
    Rule("alignment_cues", f"Reply length or word overlap alone may not pick the chosen Personality Alignment "
         f"reply with a lower interval end above {_pct(ALIGNMENT_MAX_LOWER)} (chance + 5 points).", _alignment),
]


# ---------------------------------------------------------------------------------------------- report


@dataclass
class AuditReport:
    findings: Findings
    rules: list[RuleResult]

    @property
    def passed(self) -> bool:
        return all(r.status != FAIL for r in self.rules)

    @property
    def failed(self) -> list[RuleResult]:
        return [r for r in self.rules if r.status == FAIL]

    def as_dict(self) -> dict[str, Any]:
        f = self.findings
        return {
            "source": f.source, "items": f.n_items, "tasks": f.tasks, "notes": f.notes,
            "has_histories": f.has_histories, "has_evidence": f.has_evidence, "has_ids": f.has_ids,
            "passed": self.passed, "rules": [r.as_dict() for r in self.rules],
            "accuracy": {s: {"kind": f.solvers[s], **{scope: r.as_dict() for scope, r in rates.items()}}
                         for s, rates in f.accuracy.items()},
            "gold_only_mentioned": {scope: r.as_dict() for scope, r in f.gold_only_mentioned.items()},
            "id_recipes": [{"recipe": r.name, "hits": r.hits, "n": r.n} for r in f.id_recipes if r.hits],
            "id_features": None if f.id_features is None else {
                "feature": f.id_features.feature, **f.id_features.accuracy.as_dict(),
                "features_tried": f.id_features.features_tried, "null_p99": round(f.id_features.null_p99, 4),
                "p_value": round(f.id_features.p_value, 6)},
            "letter_sequences": [{"order": t.order, "statistic": t.statistic, "observed": round(t.observed, 4),
                                  "null_p99": round(t.null_p99, 4), "p_value": round(t.p_value, 6)}
                                 for t in f.sequences],
            "alignment": {s: r.as_dict() for s, r in f.alignment.items()},
        }

    def markdown(self) -> str:
        f = self.findings
        have = lambda flag: "yes" if flag else "no"  # noqa: E731
        lines = [f"Model-free shortcut audit (`python -m quality.audit`) of {f.source}: {f.n_items} items, "
                 f"{len(f.tasks)} tasks; histories: {have(f.has_histories)}, evidence turns: "
                 f"{have(f.has_evidence)}, ids: {have(f.has_ids)}. Accuracy in % with its 95% interval; "
                 f"chance is 25%, ties get 1/k credit."]
        lines += [f"- Note: {n}" for n in f.notes]
        scopes = [*f.tasks, OVERALL]
        header = ["task", "n", *f.accuracy, *(["gold only mentioned"] if f.gold_only_mentioned else [])]
        rows = []
        for scope in scopes:
            n = f.accuracy["longest option"][scope].n
            gold_only = [f.gold_only_mentioned[scope].cell()] if f.gold_only_mentioned else []
            rows.append([scope, n, *(f.accuracy[s][scope].cell() for s in f.accuracy), *gold_only])
        lines += ["", markdown_table(header, rows)]
        if f.alignment:
            pairs = next(iter(f.alignment.values())).n
            lines += ["", f"Personality Alignment pairs ({pairs}): how often a cue alone picks the chosen reply "
                          "(chance 50%, ties 1/2):", "",
                      markdown_table(("cue", "chosen %"), [(s, r.cell()) for s, r in f.alignment.items()])]
        if f.sequences:
            lines += ["", "Gold-letter sequences, pooled over tasks, against seeded shuffles of the same letters:",
                      "", markdown_table(("order", "statistic", "observed", "shuffles' 99th pct", "p"), [
                          (t.order, t.statistic, _pct(t.observed), _pct(t.null_p99), f"{t.p_value:.3g}")
                          for t in f.sequences])]
        lines += ["", "Rules:", "", markdown_table(("rule", "result", "detail", "why"),
                                                   [(r.name, r.status, r.detail, r.why) for r in self.rules])]
        breaches = [f"- {r.name}, {scope}: {what}" for r in self.failed for scope, what in r.failures]
        if breaches:
            lines += ["", "Breaches:", "", *breaches]
        return "\n".join(lines) + "\n"


def run_audit(inp: AuditInput, seed: int = 0) -> AuditReport:
    """Measure every shortcut on the release and evaluate every rule; the same input gives the same report."""
    _check_records(inp.records, inp.source)
    findings = measure(normalise(inp), inp.source, seed)
    return AuditReport(findings, [rule.evaluate(findings) for rule in RULES])


# ---------------------------------------------------------------------------------------------- command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quality.audit", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a release root (holding data/Persona-MME/Persona-MME.json) or that file")
    parser.add_argument("--json", metavar="OUT", help="also write the report as JSON to OUT")
    parser.add_argument("--seed", type=int, default=0, help="seed of the letter-sequence shuffles (default 0)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    try:
        report = run_audit(load_audit_input(args.path), seed=args.seed)
        if args.json:
            Path(args.json).write_text(json.dumps(report.as_dict(), ensure_ascii=False, indent=2) + "\n",
                                       encoding="utf-8")
    except (AuditInputError, OSError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.markdown(), end="")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
