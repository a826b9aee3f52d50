-- MinHash LSH over lsh_docs(doc_id, text): word n-gram shingles -> $permutations min-hashes per text
-- -> $bands bands of $rows -> texts sharing a band are candidates -> kept when the share of equal
-- min-hashes (the Jaccard estimate) reaches $threshold. Texts with fewer than $min_shingles shingles are
-- left to exact matching. Each permutation is hash(shingle xor seed); 32 bits per min-hash are enough.
CREATE OR REPLACE TEMP TABLE lsh_signatures AS
WITH shingles AS (
    SELECT doc_id, list_distinct(list_transform(range(len(w) - $shingle_words + 1),
               lambda i: hash(array_to_string(w[i + 1 : i + $shingle_words], ' ')))) AS hs
    FROM (SELECT doc_id, string_split(text, ' ') AS w FROM lsh_docs)
    WHERE len(w) >= $shingle_words
)
SELECT doc_id, list_transform($seeds::UBIGINT[],
           lambda s: list_min(list_transform(hs, lambda h: (hash(xor(h, s)) >> 32)::UINTEGER))) AS sig
FROM shingles
WHERE len(hs) >= $min_shingles;

CREATE OR REPLACE TEMP TABLE lsh_bands AS
SELECT doc_id, band, hash(sig[band * $rows + 1 : (band + 1) * $rows]) AS band_key
FROM lsh_signatures, range($bands) AS r(band);

CREATE OR REPLACE TEMP TABLE lsh_pairs AS
WITH candidates AS (
    SELECT DISTINCT x.doc_id AS a, y.doc_id AS b
    FROM lsh_bands x JOIN lsh_bands y ON x.band = y.band AND x.band_key = y.band_key AND x.doc_id < y.doc_id
)
SELECT a, b, len(list_filter(list_zip(sa.sig, sb.sig), lambda p: p[1] = p[2])) / len(sa.sig) AS similarity
FROM candidates JOIN lsh_signatures sa ON sa.doc_id = a JOIN lsh_signatures sb ON sb.doc_id = b
WHERE similarity >= $threshold;

DROP TABLE lsh_bands;
