-- Training/benchmark leakage: a persona seed, a session's text or an image used on both sides.
WITH sides AS (
    SELECT persona_id, CASE WHEN split = 'train' THEN 'train' ELSE 'bench' END AS side,
           record->>'$.seed.text' AS seed_text
    FROM personas
), turn_sides AS (
    SELECT t.*, s.side,
           md5(trim(regexp_replace(regexp_replace(lower(t.user_text), '[^a-z0-9 ]', ' ', 'g'), '\s+', ' ', 'g'))) AS h
    FROM dialogue_turns t JOIN sides s USING (persona_id)
), session_sides AS (
    SELECT persona_id, session_index, side, md5(string_agg(h, '|' ORDER BY turn_index)) AS h
    FROM turn_sides GROUP BY persona_id, session_index, side
)
SELECT 'persona' AS kind, a.persona_id AS key_a, b.persona_id AS key_b, 'leakage_persona_seed' AS reason, 0 AS distance
FROM sides a JOIN sides b ON a.seed_text = b.seed_text AND a.side = 'train' AND b.side = 'bench'
UNION ALL
SELECT 'session', a.persona_id || ':s' || a.session_index, b.persona_id || ':s' || b.session_index,
       'leakage_session', 0
FROM session_sides a JOIN session_sides b ON a.h = b.h AND a.side = 'train' AND b.side = 'bench'
UNION ALL
SELECT DISTINCT 'image', a.image_id, b.persona_id || ':' || b.turn_index, 'leakage_image', 0
FROM turn_sides a JOIN turn_sides b ON a.image_id = b.image_id AND a.side = 'train' AND b.side = 'bench'
