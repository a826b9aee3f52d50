-- Near-duplicate benchmark questions of one persona (paraphrases): the same gold answer text, and a Jaccard of the
-- content-word sets (stop words dropped, plural s stripped) of at least $similarity. Only first occurrences of
-- each text take part (exact copies are already paired).
WITH words AS (
    SELECT key, persona_id, side, gold,
           list_distinct(list_transform(list_filter(string_split(text, ' '),
               lambda w: w <> '' AND NOT list_contains($stop_words, w)),
               lambda w: CASE WHEN len(w) > 3 THEN regexp_replace(w, 's$', '') ELSE w END)) AS ws
    FROM dedup_questions
    WHERE key NOT IN (SELECT key_b FROM exact_pairs)
), scored AS (
    SELECT a.key AS key_a, b.key AS key_b, a.persona_id AS persona_a, b.persona_id AS persona_b,
           a.side AS side_a, b.side AS side_b,
           len(list_intersect(a.ws, b.ws)) / greatest(len(list_distinct(a.ws || b.ws)), 1) AS similarity
    FROM words a JOIN words b ON a.persona_id = b.persona_id AND a.gold = b.gold AND a.key < b.key
    WHERE a.gold <> ''
)
SELECT key_a, key_b, persona_a, persona_b, side_a, side_b, similarity
FROM scored
WHERE similarity >= $similarity
