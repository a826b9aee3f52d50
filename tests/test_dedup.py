"""Dedup and leakage in DuckDB on small constructed worlds: each planted duplicate is found with its reason, and
the release leaves out what the rules say, recorded with the pair that decided it."""

from __future__ import annotations

import random
from pathlib import Path

import duckdb
import numpy as np
import pytest

from persona_factory.config import QualitySettings, load_config
from persona_factory.embeddings import TextEmbedder
from quality import dedup, release
from quality.dedup import Exclusion, Pair
from tests.curation_world import (
    clean_world, copy_session, curate, draw_image, make_dialogue, make_item, make_persona, show_image, store_image,
    write_world,
)

SETTINGS = QualitySettings()
EMBEDDER = TextEmbedder()  # the model loads once per process, on the first text
ACTING = {"leakage_persona", "exact_session", "near_duplicate_session", "leakage_session", "exact_question",
          "near_duplicate_question", "embedding_duplicate_question", "leakage_image"}


def run(world, tmp_path: Path) -> duckdb.DuckDBPyConnection:
    """Write the world, find duplicates, build the release; the open connection for assertions."""
    con = duckdb.connect(str(write_world(world, tmp_path / "w.duckdb")))
    curate(con, load_config("tiny"), EMBEDDER, SETTINGS)
    return con


def pairs(con, reason: str) -> list[tuple]:
    return con.execute("SELECT key_a, key_b, persona_a, persona_b, similarity, hamming FROM dedup_decisions "
                       "WHERE reason = ? ORDER BY ALL", [reason]).fetchall()


def left_out(con) -> dict[str, tuple[str, str]]:
    return {k: (unit, reason) for unit, k, reason in
            con.execute("SELECT unit, key, reason FROM release_exclusions").fetchall()}


def released(con, table: str, key: str) -> set[str]:
    return {r[0] for r in con.execute(f"SELECT {key} FROM {table}").fetchall()}


@pytest.fixture
def world(tmp_path: Path):
    return clean_world(tmp_path / "images")


def test_a_clean_world_has_nothing_to_act_on(world, tmp_path):
    con = run(world, tmp_path)
    assert not set(dedup.summary(con)) & ACTING
    assert left_out(con) == {}
    assert released(con, "release_personas", "persona_id") == {"ptrain1", "ptrain2", "pbench1", "pbench2"}
    assert released(con, "release_benchmark", "item_id") == {"q1", "q2", "q3", "q4"}
    assert dedup.unresolved_pairs(con) == []


def test_a_session_copied_into_training_is_leakage_and_the_training_history_goes(world, tmp_path):
    copy_session(world, source="pbench1", target="ptrain2", session=1)
    con = run(world, tmp_path)
    assert pairs(con, "leakage_session") == [("ptrain2:s1", "pbench1:s1", "ptrain2", "pbench1", 1.0, None)]
    assert left_out(con) == {"ptrain2": ("persona", "leakage_session")}
    assert "ptrain2" not in released(con, "release_personas", "persona_id")
    assert released(con, "release_sft", "record_id") == {"sft-ptrain1"}  # its records go with it
    assert released(con, "release_benchmark", "item_id") == {"q1", "q2", "q3", "q4"}  # the benchmark stays whole
    # the copied turns are reported as exact turn pairs too, without acting on them
    assert len(pairs(con, "exact_turn")) == 3


def test_a_lightly_edited_session_copy_is_found_by_minhash(world, tmp_path):
    copy_session(world, source="pbench2", target="ptrain1", session=2, edit_words=2)
    con = run(world, tmp_path)
    [(a, b, pa, pb, similarity, _)] = pairs(con, "leakage_session")
    assert (a, b) == ("ptrain1:s2", "pbench2:s2")
    assert SETTINGS.near_duplicate_similarity <= similarity < 1
    assert left_out(con) == {"ptrain1": ("persona", "leakage_session")}


def test_a_history_repeating_its_own_session_is_left_out(world, tmp_path):
    copy_session(world, source="pbench2", target="pbench2", session=0, to_session=2)
    con = run(world, tmp_path)
    assert pairs(con, "exact_session") == [("pbench2:s0", "pbench2:s2", "pbench2", "pbench2", 1.0, None)]
    assert left_out(con)["pbench2"] == ("persona", "exact_session")
    assert "q4" not in released(con, "release_benchmark", "item_id")


def test_a_resized_reencoded_image_in_training_is_found_and_its_benchmark_item_dropped(world, tmp_path):
    original = world.images[2]  # pbench1 shows it at turn 1; item q2 cites it as evidence
    copy = store_image(tmp_path / "images", draw_image(2).resize((80, 60)), "shape2-small", fmt="JPEG")
    assert copy.image_id != original.image_id
    world.images.append(copy)
    show_image(world, "ptrain1", 7, copy.image_id)
    con = run(world, tmp_path)
    [(a, b, _, _, _, hamming)] = pairs(con, "near_duplicate_image")
    assert {a, b} == {original.image_id, copy.image_id} and hamming <= SETTINGS.image_max_hamming
    assert (copy.image_id, original.image_id, "ptrain1", "pbench1") in [p[:4] for p in pairs(con, "leakage_image")]
    assert left_out(con) == {"q2": ("item", "leakage_image")}
    assert released(con, "release_benchmark", "item_id") == {"q1", "q3", "q4"}
    assert dedup.unresolved_pairs(con) == []


def test_unrelated_pictures_are_never_near_duplicates(world, tmp_path):
    con = run(world, tmp_path)
    hashes = [i.phash for i in world.images]
    nearest = min(bin((a ^ b) & (2**64 - 1)).count("1") for i, a in enumerate(hashes) for b in hashes[i + 1:])
    assert nearest > SETTINGS.image_max_hamming
    assert pairs(con, "near_duplicate_image") == []


def test_a_paraphrased_question_is_found_and_the_later_item_dropped(world, tmp_path):
    world.items.append(make_item("q5", "pbench1", "50", "What colour was that kite I was flying on the beach?",
                                 "chestnut"))
    world.items.append(make_item("q6", "pbench1", "50", "Which colour was the kite I flew at the beach?", "lavender"))
    con = run(world, tmp_path)
    assert [p[:2] for p in pairs(con, "near_duplicate_question")] == [("q1", "q5")]
    assert [p[:2] for p in pairs(con, "exact_question")] == [("q1", "q6")]
    assert left_out(con) == {"q5": ("item", "near_duplicate_question"), "q6": ("item", "exact_question")}
    assert released(con, "release_benchmark", "item_id") == {"q1", "q2", "q3", "q4"}


def test_a_paraphrase_in_other_words_is_found_by_its_embedding(world, tmp_path):
    # MiniLM cosine with q1 ("Which colour was the kite I flew at the beach?"): 0.92; content words share 2 of 6
    world.items.append(make_item("q5", "pbench1", "50", "The kite I had at the seaside, what colour was it?",
                                 "chestnut"))
    # the same frame about another object (cosine 0.76) is another question
    world.items.append(make_item("q6", "pbench1", "50", "Which colour was the umbrella I had at the beach?",
                                 "chestnut"))
    con = run(world, tmp_path)
    assert pairs(con, "near_duplicate_question") == []
    [(a, b, pa, pb, similarity, _)] = pairs(con, "embedding_duplicate_question")
    assert (a, b, pa, pb) == ("q1", "q5", "pbench1", "pbench1") and SETTINGS.question_embedding_similarity <= similarity
    assert similarity == round(similarity, 4)
    assert left_out(con) == {"q5": ("item", "embedding_duplicate_question")}
    assert dedup.unresolved_pairs(con) == []


def test_alike_questions_with_different_answers_are_not_duplicates(world, tmp_path):
    photo = "In the photo of the cat I sent you about 2 months ago, what colour {} the cat's {}?"
    world.items.append(make_item("q7", "pbench1", "50", photo.format("is", "nose"), "lavender"))
    world.items.append(make_item("q8", "pbench1", "50", photo.format("are", "eyes"), "graphite"))
    con = run(world, tmp_path)
    assert pairs(con, "near_duplicate_question") == pairs(con, "embedding_duplicate_question") == []
    assert left_out(con) == {}


def test_the_same_question_for_two_personas_is_not_a_duplicate(world, tmp_path):
    world.items.append(make_item("q7", "pbench2", "200", "Which colour was the kite I flew at the beach?", "chestnut"))
    con = run(world, tmp_path)
    assert pairs(con, "exact_question") == [] and pairs(con, "near_duplicate_question") == []


def test_a_benchmark_persona_reused_in_training_leaves_the_benchmark(world, tmp_path):
    reused = make_persona("ptrain3", "train", world.persona("pbench2").seed.text)
    world.personas.append(reused)
    world.dialogues["ptrain3"] = make_dialogue("ptrain3", "train", {})
    con = run(world, tmp_path)
    assert [p[:4] for p in pairs(con, "leakage_persona")] == [("ptrain3", "pbench2", "ptrain3", "pbench2")]
    assert left_out(con) == {"pbench2": ("persona", "leakage_persona")}
    assert "q4" not in released(con, "release_benchmark", "item_id")
    assert "ptrain3" in released(con, "release_personas", "persona_id")


def test_a_persona_without_history_is_left_out_with_its_reason(world, tmp_path):
    del world.dialogues["ptrain2"]
    con = run(world, tmp_path)
    assert left_out(con) == {"ptrain2": ("persona", "no_history")}


def test_decisions_are_replaced_on_rerun(world, tmp_path):
    copy_session(world, source="pbench1", target="ptrain2", session=1)
    con = run(world, tmp_path)
    first = con.execute("SELECT * FROM dedup_decisions ORDER BY ALL").fetchall()
    curate(con, load_config("tiny"), EMBEDDER, SETTINGS)
    assert con.execute("SELECT * FROM dedup_decisions ORDER BY ALL").fetchall() == first
    assert len(left_out(con)) == 1


def test_the_release_dedup_rule_fails_when_a_pair_stays_released(world, tmp_path):
    copy_session(world, source="pbench1", target="ptrain2", session=1)
    con = run(world, tmp_path)
    assert dedup.unresolved_pairs(con) == []
    con.execute("INSERT INTO release_personas (persona_id) VALUES ('ptrain2')")
    assert dedup.unresolved_pairs(con) == [("leakage_session", "ptrain2:s1", "pbench1:s1")]


# ---------------------------------------------------------------------------------------------- the engines


def test_minhash_estimates_jaccard_and_finds_near_pairs():
    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(5000)]
    docs, planted = [], {}
    for n in range(300):
        text = [rng.choice(vocab) for _ in range(40)]
        docs.append(" ".join(text))
        if n % 3 == 0:  # a copy with 2 substituted words: 3-gram Jaccard about 0.75
            edited = list(text)
            for pos in rng.sample(range(40), 2):
                edited[pos] = "x" + rng.choice(vocab)
            planted[len(docs) - 1] = len(docs)
            docs.append(" ".join(edited))
    con = duckdb.connect()
    con.execute("CREATE TEMP TABLE lsh_docs AS SELECT i + 1 AS doc_id, t AS text FROM "
                "(SELECT unnest(range(?)) AS i, unnest(?::VARCHAR[]) AS t)", [len(docs), docs])
    dedup.minhash_pairs(con, SETTINGS)
    found = {(a - 1, b - 1): s for a, b, s in con.execute("SELECT a, b, similarity FROM lsh_pairs").fetchall()}

    def jaccard(x: str, y: str) -> float:
        sx, sy = ({tuple(t.split()[i:i + 3]) for i in range(len(t.split()) - 2)} for t in (x, y))
        return len(sx & sy) / len(sx | sy)

    truth = {(a, b): jaccard(docs[a], docs[b]) for a, b in planted.items()}
    should = {p for p, j in truth.items() if j >= SETTINGS.near_duplicate_similarity + 0.1}
    assert should and should <= set(found)
    assert all(abs(found[p] - truth[p]) < 0.15 for p in found if p in truth)
    assert set(found) <= set(planted.items())  # nothing unrelated


def test_image_banding_is_exact_up_to_the_distance():
    rng = np.random.default_rng(5)
    hashes = [int(h) for h in rng.integers(-(2**63), 2**63 - 1, size=3000, dtype=np.int64)]
    for d in range(0, 10):  # planted copies 0..9 bits away, the flipped bits spread over the word
        bits = rng.choice(64, size=d, replace=False)
        flipped = (hashes[d] & (2**64 - 1)) ^ sum(1 << int(b) for b in bits)
        hashes.append(flipped - (1 << 64) if flipped >= 1 << 63 else flipped)
    con = duckdb.connect()
    dedup.create_decisions(con)
    con.execute("CREATE TEMP TABLE image_hashes AS SELECT lpad(i::VARCHAR, 5, '0') AS image_id, h AS phash "
                "FROM (SELECT unnest(range(?)) AS i, unnest(?::BIGINT[]) AS h)", [len(hashes), hashes])
    dedup.image_near_duplicates(con, 8)
    banded = set(con.execute("SELECT key_a, key_b, hamming FROM dedup_decisions").fetchall())
    brute = set(con.execute("SELECT x.image_id, y.image_id, bit_count(xor(x.phash, y.phash)) FROM image_hashes x "
                            "JOIN image_hashes y ON x.image_id < y.image_id "
                            "WHERE bit_count(xor(x.phash, y.phash)) <= 8").fetchall())
    assert banded == brute and len(brute) >= 9  # planted 0..8 found, 9 not


def test_release_exclusions_are_greedy_in_pair_order():
    def pair(a: str, b: str) -> Pair:
        return Pair("session", "near_duplicate_session", f"{a}:s0", f"{b}:s0", a, b, 0.8, None)

    # p2 is a near copy of p1, p3 of p2 only: once p2 is gone, p3 duplicates nothing released
    chain = [pair("p1", "p2"), pair("p2", "p3")]
    assert [(e.key, e.cause) for e in dedup.release_exclusions(chain, {}, {})] == [("p2", "p1:s0 ~ p2:s0")]
    # a pair whose first side is already gone duplicates nothing either
    gone = {"p1": Exclusion("persona", "p1", "p1", "no_history", "")}
    assert [e.key for e in dedup.release_exclusions(chain, {}, gone)] == ["p3"]
