-- Training/benchmark leakage that no text rule sees: a persona seed or role used on both sides, and an image
-- (or a perceptual near duplicate of it) shown in training data and in a benchmark history. The training
-- side is always key_a.
CREATE OR REPLACE TEMP TABLE leakage_pairs AS
SELECT 'persona' AS kind, 'leakage_persona' AS reason, t.persona_id AS key_a, b.persona_id AS key_b,
       t.persona_id AS persona_a, b.persona_id AS persona_b, 1.0::DOUBLE AS similarity, NULL::INTEGER AS hamming
FROM dedup_personas t JOIN dedup_personas b
  ON t.side = 'train' AND b.side = 'bench'
 AND (t.seed_id = b.seed_id OR t.seed_text = b.seed_text OR (t.role_text <> '' AND t.role_text = b.role_text))
UNION ALL
SELECT 'image', 'leakage_image', tr.image_id, be.image_id, tr.persona_id, be.persona_id, NULL, same.hamming
FROM dedup_image_uses tr
JOIN (
    SELECT DISTINCT image_id AS a, image_id AS b, 0 AS hamming FROM dedup_image_uses
    UNION ALL SELECT key_a, key_b, hamming FROM dedup_decisions WHERE reason = 'near_duplicate_image'
    UNION ALL SELECT key_b, key_a, hamming FROM dedup_decisions WHERE reason = 'near_duplicate_image'
) same ON same.a = tr.image_id
JOIN dedup_image_uses be ON be.image_id = same.b
WHERE tr.side = 'train' AND be.side = 'bench'
