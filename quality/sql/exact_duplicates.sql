-- Exact duplicates after normalisation (lower case, punctuation and spacing removed): turns, sessions,
-- benchmark questions per persona. The later row of each pair is the duplicate.
WITH turns AS (
    SELECT persona_id || ':' || turn_index AS key, persona_id, session_index, turn_index,
           md5(trim(regexp_replace(regexp_replace(lower(user_text), '[^a-z0-9 ]', ' ', 'g'), '\s+', ' ', 'g'))) AS h
    FROM dialogue_turns
), sessions AS (
    SELECT persona_id || ':s' || session_index AS key, persona_id, md5(string_agg(h, '|' ORDER BY turn_index)) AS h
    FROM turns GROUP BY persona_id, session_index
), questions AS (
    SELECT item_id AS key, persona_id,
           md5(trim(regexp_replace(regexp_replace(lower(query), '[^a-z0-9 ]', ' ', 'g'), '\s+', ' ', 'g'))) AS h
    FROM benchmark_items
)
SELECT 'turn' AS kind, a.key AS key_a, b.key AS key_b, 'exact_turn_text' AS reason, 0 AS distance
FROM turns a JOIN turns b ON a.h = b.h AND a.key < b.key
UNION ALL
SELECT 'session', a.key, b.key, 'exact_session_text', 0
FROM sessions a JOIN sessions b ON a.h = b.h AND a.key < b.key
UNION ALL
SELECT 'question', a.key, b.key, 'duplicate_question', 0
FROM questions a JOIN questions b ON a.h = b.h AND a.persona_id = b.persona_id AND a.key < b.key
