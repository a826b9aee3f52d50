-- Text normalisation shared by every dedup rule: lower case, punctuation and symbols to spaces, one space.
CREATE OR REPLACE TEMP MACRO normalized_text(s) AS
    trim(regexp_replace(regexp_replace(lower(s), '[^\pL\pN\s]+', ' ', 'g'), '\s+', ' ', 'g'));
