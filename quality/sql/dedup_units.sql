-- What dedup compares, read from the stored records (the JSON column, so it holds for any table layout):
-- personas with their side (train or bench), turns (what the user says: a repeated utterance is the generator's
-- flaw, a repeated reply to different words is not), sessions (both sides of every turn), benchmark questions,
-- and where images are used. Image placeholders are not text: a copy shows its images at other turns.
CREATE OR REPLACE TEMP TABLE dedup_personas AS
SELECT record->>'$.persona_id' AS persona_id,
       CASE WHEN record->>'$.split' = 'train' THEN 'train' ELSE 'bench' END AS side,
       record->>'$.seed.seed_id' AS seed_id,
       normalized_text(record->>'$.seed.text') AS seed_text,
       normalized_text(record->>'$.role_description') AS role_text
FROM personas;

CREATE OR REPLACE TEMP TABLE dedup_turns AS
SELECT t.persona_id || ':' || t.turn_index AS key, t.persona_id, p.side, t.session_index, t.turn_index,
       row_number() OVER (ORDER BY t.persona_id, t.turn_index) AS ord, t.image_id,
       normalized_text(t.user_text) AS text, normalized_text(t.user_text || ' ' || t.assistant_text) AS both_sides
FROM (
    SELECT record->>'$.persona_id' AS persona_id,
           TRY_CAST(record->>'$.session_index' AS INTEGER) AS session_index,
           TRY_CAST(record->>'$.turn_index' AS INTEGER) AS turn_index,
           record->>'$.image_id' AS image_id,
           replace(coalesce(record->>'$.user', ''), '<img>', ' ') AS user_text,
           replace(coalesce(record->>'$.assistant', ''), '<img>', ' ') AS assistant_text
    FROM dialogue_turns
) t JOIN dedup_personas p USING (persona_id);

CREATE OR REPLACE TEMP TABLE dedup_sessions AS
SELECT persona_id || ':s' || session_index AS key, persona_id, any_value(side) AS side,
       row_number() OVER (ORDER BY persona_id, session_index) AS ord,
       string_agg(both_sides, ' ' ORDER BY turn_index) AS text
FROM dedup_turns GROUP BY persona_id, session_index;

CREATE OR REPLACE TEMP TABLE dedup_questions AS
SELECT q.key, q.persona_id, p.side, q.ord, q.text, q.gold, q.query
FROM (
    SELECT record->>'$.item_id' AS key, record->>'$.persona_id' AS persona_id, rowid AS ord,
           normalized_text(record->>'$.query') AS text, record->>'$.query' AS query,
           normalized_text(coalesce(record->'$.choices'->>(record->>'$.answer'), '')) AS gold
    FROM benchmark_items
) q JOIN dedup_personas p USING (persona_id);

CREATE OR REPLACE TEMP TABLE dedup_image_uses AS
SELECT DISTINCT u.image_id, u.persona_id, p.side
FROM (
    SELECT image_id, persona_id FROM dedup_turns WHERE image_id IS NOT NULL
    UNION ALL
    SELECT unnest(from_json(record->'$.image', '["VARCHAR"]')), record->>'$.persona_id' FROM sft_records
    UNION ALL
    SELECT unnest(from_json(record->'$.images', '["VARCHAR"]')), record->>'$.persona_id' FROM rl_records
) u JOIN dedup_personas p USING (persona_id);
