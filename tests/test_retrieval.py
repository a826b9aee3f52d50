"""Retrieval semantics on a hand-made memory database with the real MiniLM model: PersonaVLM's top-k per memory type
over the union of a keyword and a content index, the 60-minute window applied after the top-k, no memory twice in
a trajectory, episodic topics expanded to their turns, the time range not filtering; the exact search against
FAISS IndexFlatL2; embeddings that depend on the text alone and come back from the cache."""

from __future__ import annotations

from collections import Counter

import faiss
import numpy as np
import pytest
import torch

from persona_factory.embeddings import DIM, TextEmbedder
from persona_factory.schema import RetrieveCall, Turn
from persona_factory.stages import reasoning as R
from persona_factory.stages import retrieval as RT

try:
    from tests.retrieval_db import hand_db
except ImportError:
    from retrieval_db import hand_db

MAY_2 = ("2024-05-02 09:00", 5)  # the next morning: session 0 closed, all of it outside the window
MAY_3 = ("2024-05-03 18:30", 7)  # 25 minutes after session 1's last turn: its memories inside the window
SISTER = RetrieveCall(keywords="Maya, sister")


@pytest.fixture(scope="module")
def embedding(text_embedder: TextEmbedder) -> RT.EmbeddingRetriever:
    return RT.EmbeddingRetriever(text_embedder)


def db_at(when: tuple[str, int], data: dict | None = None) -> RT.DatabaseView:
    at, last_turn = when
    return RT.database_at(data or hand_db(), at, 60, last_turn)


def keys(hits) -> list[str]:
    return [e.key for e in hits]


def test_the_database_at_a_probe_holds_the_window_but_retrieves_only_older_memories():
    db = db_at(MAY_3)
    held = keys(db.held)
    assert {"semantic:1:0", "semantic:1:1"} <= set(held) and "semantic:1:1" not in db.retrievable
    assert not any(k.startswith("episodic:1:") for k in held)  # session 1 is still open: no topics yet
    assert [k for k in held if k.startswith("procedural:")] == [f"procedural:{k}" for k in
                                                                hand_db()["ProceduralMemory"]]
    earlier = db_at(("2024-05-01 10:21", 4))  # right after turn 4: turn 5 not said yet
    assert "semantic:0:5" not in keys(earlier.held) and not earlier.retrievable


def test_top_k_per_type_over_the_union_of_the_keyword_and_content_indexes(embedding):
    db = db_at(MAY_2)
    hits = embedding.search(db, "What is my cat called?", SISTER, set())
    assert Counter(e.kind for e in hits) == {"semantic": 4, "episodic": 2, "procedural": 2}
    # the keywords find Maya, the question finds the cat: both indexes contribute, returned oldest first
    assert keys(hits) == ["semantic:0:0", "semantic:0:3", "semantic:0:4", "semantic:0:5",
                          "episodic:0:0", "episodic:0:3", "procedural:routine_swim", "procedural:skill_guitar"]
    by_keywords = RT.KeywordRetriever().search(db, "What is my cat called?", SISTER, set())
    assert "semantic:0:5" not in keys(by_keywords) and "episodic:0:3" not in keys(by_keywords)


def test_memories_inside_the_window_take_their_top_k_slot_and_are_dropped(embedding):
    db = db_at(MAY_3)
    query = "Where does my sister Maya live now?"
    hits = embedding.search(db, query, SISTER, set())
    # top-4 by distance: Maya (0:0), Lisbon (1:1, 25 minutes old), the cat, pottery; Lisbon is dropped, not replaced
    assert [e.key for e in hits if e.kind == "semantic"] == ["semantic:0:0", "semantic:0:3", "semantic:0:5"]
    assert [e.key for e in RT.KeywordRetriever().search(db, query, SISTER, set()) if e.kind == "semantic"] == [
        "semantic:0:0"]  # the keyword alternative ranks only what lies outside the window


def test_a_trajectory_never_gets_a_memory_twice(embedding):
    db = db_at(MAY_2)
    first = embedding.search(db, "What is my cat called?", SISTER, set())
    assert embedding.search(db, "What is my cat called?", SISTER, set(keys(first))) == []  # slots are not refilled
    steps = RT.search_until(embedding, db, "What is my cat called?", [SISTER, RetrieveCall(keywords="jazz, music")],
                            evidence_turn=99)
    assert len(steps) == 2 and steps[1] and not set(keys(steps[0])) & set(keys(steps[1]))
    assert RT.search_until(embedding, db, "What is my cat called?", [SISTER, SISTER], evidence_turn=5) == [first]


def test_episodic_topics_expand_to_all_their_turns(embedding):
    data = hand_db()
    db = db_at(MAY_2, data)
    topic = next(e for e in embedding.search(db, "What is my cat called?", SISTER, set()) if e.key == "episodic:0:3")
    assert topic.turns == (4, 5)
    turns = {k: Turn(persona_id="p", session_index=0, turn_index=k, time=i[0]["time"], user=i[0]["query"],
                     assistant="ok") for k, i in enumerate(data["sessions"][0]["interactions"])}
    assert R.context_line(topic, turns) == ["[2024-05-01 10:16] User: Training for a marathon! / Assistant: ok",
                                            "[2024-05-01 10:20] User: My cat Miso is asleep. / Assistant: ok"]


def test_the_time_range_does_not_filter_as_in_the_released_retriever(embedding):
    db = db_at(MAY_2)
    ranged = SISTER.model_copy(update={"start_time": "2024-04-01 00:00", "end_time": "2024-04-02 00:00"})
    assert embedding.search(db, "What is my cat called?", ranged, set()) == \
        embedding.search(db, "What is my cat called?", SISTER, set())
    assert RT.KeywordRetriever().search(db, "What is my cat called?", ranged, set()) == []


def test_the_exact_search_ranks_as_faiss_index_flat_l2():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[200] = vectors[17]  # an exact tie
    index = faiss.IndexFlatL2(DIM)
    index.add(vectors)
    for query in (vectors[17] + 0.01, *rng.normal(size=(20, DIM)).astype(np.float32)):
        query = query.astype(np.float32)
        dist, rows = index.search(query[None, :], 6)
        ours = RT.nearest(query, vectors, 6)
        assert [r for _, r in ours] == rows[0].tolist()
        assert [d for d, _ in ours] == pytest.approx(dist[0].tolist(), rel=1e-5)
    assert RT.nearest(vectors[0], vectors[:3], 6)[:1] == [(0.0, 0)] and len(RT.nearest(vectors[0], vectors[:3], 6)) == 3
    assert RT.nearest(vectors[0], vectors[:0], 4) == []


def test_the_union_keeps_the_smaller_distance_and_prefers_the_keyword_list_on_ties():
    assert RT.union_top([(0.1, 3), (0.5, 1)], [(0.2, 1), (0.5, 7)], 2) == [3, 1]
    assert RT.union_top([(0.5, 4)], [(0.5, 2)], 1) == [4]


def test_a_texts_vector_depends_on_the_text_alone_and_comes_back_from_the_cache(tmp_path):
    texts = ["The user has a grey cat named Miso.", "cat, Miso, pet", "Where does my sister Maya live now?",
             *(f"The user went to concert number {n} with a friend from the climbing gym." for n in range(40))]
    first = TextEmbedder(tmp_path / "embeddings.sqlite")
    together = first.embed(texts)
    assert together.shape == (len(texts), DIM) and together.dtype == np.float32
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert first.encoded == len(texts)
    alone = TextEmbedder().embed(texts[:1])  # encoded with copies of itself, not with the others
    assert alone.tobytes() == together[:1].tobytes()
    again = TextEmbedder(tmp_path / "embeddings.sqlite")  # a warm cache: nothing encoded
    assert again.embed(reversed(texts)).tobytes() == together[::-1].tobytes() and again.encoded == 0
    assert first.embed(texts[:2] * 2).shape == (4, DIM) and first.encoded == len(texts)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert TextEmbedder().embed(texts).tobytes() == together.tobytes()
    finally:
        torch.set_num_threads(threads)
