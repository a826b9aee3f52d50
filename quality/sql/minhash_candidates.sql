-- LSH candidates from bands $band_from..$band_to - 1 of the signatures ($rows min-hashes per band): two texts
-- agreeing on a whole band are candidates. Run band range by band range, so memory holds one range's keys.
INSERT INTO lsh_candidates
WITH bands AS (
    SELECT doc_id, band, hash(sig[band * $rows + 1 : (band + 1) * $rows]) AS band_key
    FROM lsh_signatures, range($band_from, $band_to) AS r(band)
)
SELECT DISTINCT x.doc_id AS a, y.doc_id AS b
FROM bands x JOIN bands y ON x.band = y.band AND x.band_key = y.band_key AND x.doc_id < y.doc_id
