"""Retrieval over the memory database as it was at a probe: what a `<retrieve>` call returns to the agent.

`embedding` (the default) is PersonaVLM's agent retriever (its `retriever.py`, `Retriever.retrieve` with
`select_memory`, reasoning mode):
- all-MiniLM-L6-v2 vectors (persona_factory.embeddings) and exact squared-L2 search, as FAISS `IndexFlatL2`;
- semantic memories: two indexes, one over each memory's keywords (searched with the call's keywords) and one over
  its content (searched with the user's query); the union of both top-4 lists, each memory at its smaller distance,
  cut to the 4 nearest; episodic topics likewise over topic keywords and summaries, top 2, each expanded to all its
  turns; procedural entries (`key: sentence`, the latest procedural memory) searched with the query, top 2;
- the top-k are taken over everything the database holds at the probe, the short-term window included, and only
  then are memories inside the window dropped (`select_memory`: only memories older than the 60 minutes are
  returned) and memories an earlier call of the same trajectory returned skipped: so a call may return fewer than k;
- the call's time range does not filter: the released code never applies it to semantic or procedural memory, and
  its episodic check `continue`s after the topic was already indexed, so it is a no-op there too.

A call returns semantic memories and episodic topics oldest first (the released code sorts them by session and
round) and procedural entries nearest first. The released code skips repeats per episodic turn; here per topic,
which is the same, since every round belongs to exactly one topic and topics exist only for closed sessions.

Where this deviates from the released code, and why: the search is numpy, not FAISS (the same exact squared-L2
ranking, ties to the older memory; distances agree to float rounding, see tests); texts are embedded in padded
batches, not one at a time (vectors agree to ~1e-7, see persona_factory.embeddings); a memory exactly 60 minutes
old is left out here (it is still in the recent context, which the agent shows as well); visual-concept retrieval
(CLIP crops) is not run, as it only runs for a query carrying an image and probes are text questions; the query's
`<img_fill>` placeholders, which the released code strips, never occur in probe questions.

`keyword` is the lexical alternative: IDF-weighted keyword overlap over each memory's text and keywords, the same
top-k per type counted among memories outside the window, time ranges honoured, newest first on ties.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..embeddings import TextEmbedder
from ..schema import RetrieveCall
from .common import normalize
from .memory import STOPWORDS, MemoryEntry, held_memories, outside_window

TOP_K = {"semantic": 4, "episodic": 2, "procedural": 2}  # PersonaVLM's inference k per memory type
RETRIEVERS = ("embedding", "keyword")


@dataclass(frozen=True)
class DatabaseView:
    """The memory database when a query arrives: all it holds, and which of those lie outside the window."""

    held: list[MemoryEntry]
    retrievable: frozenset[str]

    def of_kind(self, kind: str) -> list[MemoryEntry]:
        return [e for e in self.held if e.kind == kind]


def database_at(user_data: dict[str, Any], at: str, gap_minutes: int, last_turn: int) -> DatabaseView:
    """The database for a query posed at `at` right after turn `last_turn`."""
    held = held_memories(user_data, at, gap_minutes, last_turn)
    return DatabaseView(held, frozenset(e.key for e in held if outside_window(e, at, gap_minutes)))


class Retriever(Protocol):
    def search(self, db: DatabaseView, query: str, call: RetrieveCall, seen: set[str]) -> list[MemoryEntry]:
        """What one call returns, semantic then episodic then procedural, nothing in `seen`."""
        ...


def search_until(retriever: Retriever, db: DatabaseView, query: str, calls: list[RetrieveCall],
                 evidence_turn: int) -> list[list[MemoryEntry]]:
    """The calls in order, each returning nothing an earlier one returned, until one returns the evidence turn."""
    seen: set[str] = set()
    found: list[list[MemoryEntry]] = []
    for call in calls:
        hits = retriever.search(db, query, call, seen)
        seen |= {e.key for e in hits}
        found.append(hits)
        if holds(hits, evidence_turn):
            break
    return found


def holds(hits: list[MemoryEntry], turn: int) -> bool:
    return any(turn in e.turns for e in hits)


# ---------------------------------------------------------------------------------------------- embeddings


def nearest(query: np.ndarray, vectors: np.ndarray, k: int) -> list[tuple[float, int]]:
    """IndexFlatL2.search: the k smallest squared L2 distances as (distance, row), ties to the earlier row."""
    if not len(vectors):
        return []
    dist = ((vectors - query) ** 2).sum(axis=1, dtype=np.float32)
    order = np.lexsort((np.arange(len(dist)), dist))[:k]
    return [(float(dist[i]), int(i)) for i in order]


def union_top(first: list[tuple[float, int]], second: list[tuple[float, int]], k: int) -> list[int]:
    """Rows of both result lists, each at its smaller distance, the k nearest (on equal distances, the first list's
    rows first, in order: PersonaVLM's stable sort over a dict filled from the first list then the second)."""
    best: dict[int, float] = {}
    for dist, row in first + second:
        best[row] = min(best.get(row, dist), dist)
    return [row for row, _ in sorted(best.items(), key=lambda item: item[1])[:k]]


def procedural_text(entry: MemoryEntry) -> str:
    """How PersonaVLM indexes a procedural entry: `key: sentence`."""
    return f"{entry.key.split(':', 1)[1]}: {entry.shown}"


def index_texts(entries: list[MemoryEntry]) -> list[str]:
    """Every text an embedding search over these memories embeds: keywords and contents, procedural entries."""
    return [t for e in entries
            for t in ((procedural_text(e),) if e.kind == "procedural" else (e.keywords, e.shown))]


class EmbeddingRetriever:
    def __init__(self, embedder: TextEmbedder):
        self.embedder = embedder

    def search(self, db: DatabaseView, query: str, call: RetrieveCall, seen: set[str]) -> list[MemoryEntry]:
        found: list[MemoryEntry] = []
        embed = self.embedder.embed
        by_query, by_keywords = embed([query, call.keywords])
        for kind, k in TOP_K.items():
            entries = db.of_kind(kind)
            if kind == "procedural":
                rows = [row for _, row in nearest(by_query, embed(map(procedural_text, entries)), k)]
            else:
                rows = sorted(union_top(nearest(by_keywords, embed(e.keywords for e in entries), k),
                                        nearest(by_query, embed(e.shown for e in entries), k), k))  # oldest first
            found += [entries[r] for r in rows if entries[r].key in db.retrievable and entries[r].key not in seen]
        return found


# ---------------------------------------------------------------------------------------------- keywords


def terms(text: str) -> set[str]:
    """Search terms: normalized words without stopwords, plural 's' stripped."""
    words = (w for w in normalize(text.replace(",", " ")).split() if w not in STOPWORDS)
    return {w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words}


def in_window(entry: MemoryEntry, call: RetrieveCall) -> bool:
    if not (call.start_time or call.end_time):
        return True
    if entry.kind == "procedural":
        return False
    return any((not call.start_time or t >= call.start_time) and (not call.end_time or t <= call.end_time)
               for t in entry.times)


def newest_first(t: str) -> int:
    """A sort key putting later times first."""
    return -int(t.replace("-", "").replace(" ", "").replace(":", ""))


class KeywordRetriever:
    def search(self, db: DatabaseView, query: str, call: RetrieveCall, seen: set[str]) -> list[MemoryEntry]:
        """Top-k per memory type by IDF-weighted keyword overlap, within the call's time range, newest first on
        ties; with a time range, memories in it may match on time alone. The query itself is not searched."""
        words = terms(call.keywords)
        windowed = bool(call.start_time or call.end_time)
        found: list[MemoryEntry] = []
        for kind, k in TOP_K.items():
            of_kind = [e for e in db.of_kind(kind) if e.key in db.retrievable]
            index = {e.key: terms(e.index_text) for e in of_kind}
            df = {w: sum(w in index[e.key] for e in of_kind) for w in words}
            idf = {w: math.log(1 + len(of_kind) / df[w]) for w in words if df[w]}
            scored = []
            for e in of_kind:
                if e.key in seen or not in_window(e, call):
                    continue
                score = sum(idf.get(w, 0.0) for w in words & index[e.key])
                if score > 0 or windowed:
                    scored.append((-score, newest_first(e.time), e.key, e))
            found += [e for *_, e in sorted(scored)[:k]]
        return found


def retrievers(embedder: TextEmbedder) -> dict[str, Retriever]:
    return {"embedding": EmbeddingRetriever(embedder), "keyword": KeywordRetriever()}
