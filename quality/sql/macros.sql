-- Text normalisation shared by every dedup rule: lower case, each run of characters that are not letters or
-- digits (punctuation, symbols, spacing) becomes one space.
CREATE OR REPLACE TEMP MACRO normalized_text(s) AS trim(regexp_replace(lower(s), '[^\pL\pN]+', ' ', 'g'));
