-- MinHash signatures of lsh_docs(doc_id, text): the distinct word n-gram shingles of a text, hashed, and for each
-- permutation k the minimum of hash(shingle xor seed_k), 32 bits kept. The aggregates are spelled out
-- ({min_hashes}) so DuckDB evaluates them as plain vectorized expressions while the shingles stream through.
-- Texts with fewer than $min_shingles shingles get no signature: they are left to exact matching.
CREATE OR REPLACE TEMP TABLE lsh_signatures AS
SELECT doc_id, [{min_hashes}] AS sig
FROM (
    SELECT doc_id, unnest(list_distinct(list_transform(range(len(w) - $shingle_words + 1),
               lambda i: {shingle_hash}))) AS h
    FROM (SELECT doc_id, string_split(text, ' ') AS w FROM lsh_docs)
    WHERE len(w) >= $shingle_words
)
GROUP BY doc_id
HAVING count(*) >= $min_shingles
