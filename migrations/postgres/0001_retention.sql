-- Retention catalog (PostgreSQL). Same tables and columns as migrations/sqlite/0001;
-- times are Unix milliseconds (BIGINT) so both databases read them alike.

CREATE TABLE subjects (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('subscribed', 'unsubscribed')),
    created_at BIGINT NOT NULL,
    unsubscribed_at BIGINT
);

-- Subjects whose data was erased: only the keyed hash, so a late registration for them
-- is refused without keeping their id.
CREATE TABLE erased_subjects (
    subject_hash TEXT PRIMARY KEY,
    erased_at BIGINT NOT NULL
);

CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    subject_id TEXT REFERENCES subjects (id),   -- NULL once anonymised or purged (unlinked)
    store TEXT NOT NULL,
    key TEXT,                                   -- NULL once purged
    class TEXT NOT NULL,
    uploaded_at BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'anonymised', 'purged')),
    derived TEXT NOT NULL DEFAULT '[]',         -- JSON array of keys in the same store
    finished_at BIGINT,
    UNIQUE (store, key)
);
CREATE INDEX uploads_subject ON uploads (subject_id, class, state);
CREATE INDEX uploads_expiry ON uploads (class, state, uploaded_at);

CREATE TABLE jobs (
    id BIGSERIAL PRIMARY KEY,
    upload_id TEXT NOT NULL REFERENCES uploads (id),
    action TEXT NOT NULL CHECK (action IN ('purge', 'anonymise')),
    reason TEXT NOT NULL,
    rule TEXT NOT NULL,
    due_at BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'held', 'done')),
    attempts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    next_try_at BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT,
    new_key TEXT,
    outcome TEXT,
    created_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE UNIQUE INDEX jobs_one_open_per_upload ON jobs (upload_id) WHERE state <> 'done';
CREATE INDEX jobs_runnable ON jobs (state, next_try_at);
CREATE INDEX jobs_upload ON jobs (upload_id, state, next_try_at);

CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    event TEXT NOT NULL,
    subject_hash TEXT,
    upload_id TEXT,
    rule TEXT,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev TEXT NOT NULL,
    mac TEXT NOT NULL
);
CREATE INDEX audit_subject ON audit (subject_hash);
CREATE INDEX audit_upload ON audit (upload_id);

CREATE TABLE audit_head (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    mac TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, mac) VALUES (1, 0, '');

CREATE FUNCTION audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_no_update BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
