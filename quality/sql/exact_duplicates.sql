-- Exact duplicates among the units of {units}: equal normalized text within one ({partition}) group. Every
-- copy is paired with the first occurrence, so n copies give n - 1 pairs, not n^2.
WITH ranked AS (
    SELECT *, first_value(key) OVER w AS first_key, first_value(persona_id) OVER w AS first_persona,
           first_value(side) OVER w AS first_side
    FROM {units}
    WHERE text <> ''
    WINDOW w AS (PARTITION BY {partition} ORDER BY ord)
)
SELECT first_key AS key_a, key AS key_b, first_persona AS persona_a, persona_id AS persona_b,
       first_side AS side_a, side AS side_b, 1.0::DOUBLE AS similarity
FROM ranked WHERE key <> first_key
