-- Two indexes on uploads keep only the rows their queries look for: uploads that still
-- name a subject, and active uploads (what events, expiry, plans and residency read;
-- each such query says `subject_id = …` or `state = 'active'`). A purge clears both, so
-- it used to delete the upload's entry and write a new one at a random place in each
-- index; now it only deletes (`benches/RESULTS.md`, "Retention: statement journals in
-- memory, partial indexes"). The indexes also stop growing with the purged history.
-- `status` counts uploads per state from these and a third partial index, of anonymised
-- uploads, rather than reading every row.
DROP INDEX uploads_subject;
CREATE INDEX uploads_subject ON uploads (subject_id, class, state) WHERE subject_id IS NOT NULL;
DROP INDEX uploads_expiry;
CREATE INDEX uploads_expiry ON uploads (class, state, uploaded_at) WHERE state = 'active';
CREATE INDEX uploads_anonymised ON uploads (class) WHERE state = 'anonymised';
