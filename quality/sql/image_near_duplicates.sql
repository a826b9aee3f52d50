-- Perceptual-hash near duplicates: 9 bands of 7 bits, so any pair within Hamming distance 8 shares a band
-- (pigeonhole), then the exact distance bit_count(xor(a, b)) decides.
WITH b AS (
    SELECT image_id, phash, band, (phash >> (7 * band)) & 127 AS band_key
    FROM image_pool, range(9) AS r(band)
)
SELECT DISTINCT 'image' AS kind, x.image_id AS key_a, y.image_id AS key_b, 'near_duplicate_image' AS reason,
       bit_count(xor(x.phash, y.phash)) AS distance
FROM b x JOIN b y ON x.band = y.band AND x.band_key = y.band_key AND x.image_id < y.image_id
WHERE bit_count(xor(x.phash, y.phash)) <= $max_distance
