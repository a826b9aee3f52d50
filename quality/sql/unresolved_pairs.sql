-- Pairs from dedup_decisions that the release still holds on both sides: what release_exclusions should have
-- removed, recomputed from the release tables alone. Turn and pool-image pairs are reports, not rules.
WITH released AS (SELECT persona_id FROM release_personas),
items AS (
    SELECT item_id, persona_id, from_json(record->'$.evidence_images', '["VARCHAR"]') AS evidence_images
    FROM release_benchmark
)
SELECT d.reason, d.key_a, d.key_b
FROM dedup_decisions d
WHERE (d.reason IN ('leakage_persona', 'exact_session', 'near_duplicate_session', 'leakage_session')
       AND d.persona_a IN (SELECT persona_id FROM released) AND d.persona_b IN (SELECT persona_id FROM released))
   OR (d.reason IN ('exact_question', 'near_duplicate_question', 'embedding_duplicate_question')
       AND d.key_a IN (SELECT item_id FROM items) AND d.key_b IN (SELECT item_id FROM items))
   OR (d.reason = 'leakage_image' AND d.persona_a IN (SELECT persona_id FROM released)
       AND EXISTS (SELECT 1 FROM items i
                   WHERE i.persona_id = d.persona_b AND list_contains(i.evidence_images, d.key_b)))
ORDER BY d.reason, d.key_a, d.key_b
