-- Candidates kept when the share of equal min-hashes (the Jaccard estimate) reaches $threshold.
CREATE OR REPLACE TEMP TABLE lsh_pairs AS
SELECT a, b, len(list_filter(list_zip(sa.sig, sb.sig), lambda p: p[1] = p[2])) / len(sa.sig) AS similarity
FROM (SELECT DISTINCT a, b FROM lsh_candidates) c
JOIN lsh_signatures sa ON sa.doc_id = c.a JOIN lsh_signatures sb ON sb.doc_id = c.b
WHERE similarity >= $threshold
