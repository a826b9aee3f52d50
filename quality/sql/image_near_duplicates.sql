-- Perceptual-hash near duplicates among image_hashes(image_id, phash): $bands bands of $band_bits bits with
-- $bands = max distance + 1, so any pair within the distance agrees on at least one whole band
-- (pigeonhole; exact, no misses), then the exact distance bit_count(xor(a, b)) decides.
WITH b AS (
    SELECT image_id, phash, band, (phash >> ($band_bits * band)) & ((1::BIGINT << $band_bits) - 1) AS band_key
    FROM image_hashes, range($bands) AS r(band)
)
SELECT DISTINCT x.image_id AS key_a, y.image_id AS key_b, bit_count(xor(x.phash, y.phash)) AS hamming
FROM b x JOIN b y ON x.band = y.band AND x.band_key = y.band_key AND x.image_id < y.image_id
WHERE bit_count(xor(x.phash, y.phash)) <= $max_distance
