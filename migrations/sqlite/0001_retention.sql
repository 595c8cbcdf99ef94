-- Retention catalog (SQLite). Same tables and columns as migrations/postgres/0001;
-- times are Unix milliseconds so both databases read them alike.

CREATE TABLE subjects (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('subscribed', 'unsubscribed')),
    created_at INTEGER NOT NULL,
    unsubscribed_at INTEGER
);

CREATE TABLE erased_subjects (
    subject_hash TEXT PRIMARY KEY,
    erased_at INTEGER NOT NULL
);

CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    subject_id TEXT REFERENCES subjects (id),
    store TEXT NOT NULL,
    key TEXT,
    class TEXT NOT NULL,
    uploaded_at INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'anonymised', 'purged')),
    derived TEXT NOT NULL DEFAULT '[]',
    finished_at INTEGER,
    UNIQUE (store, key)
);
CREATE INDEX uploads_subject ON uploads (subject_id, class, state);
CREATE INDEX uploads_expiry ON uploads (class, state, uploaded_at);

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    upload_id TEXT NOT NULL REFERENCES uploads (id),
    action TEXT NOT NULL CHECK (action IN ('purge', 'anonymise')),
    reason TEXT NOT NULL,
    rule TEXT NOT NULL,
    due_at INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'held', 'done')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_try_at INTEGER NOT NULL,
    lease_owner TEXT,
    lease_until INTEGER,
    new_key TEXT,
    outcome TEXT,
    created_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE UNIQUE INDEX jobs_one_open_per_upload ON jobs (upload_id) WHERE state <> 'done';
CREATE INDEX jobs_runnable ON jobs (state, next_try_at);
CREATE INDEX jobs_upload ON jobs (upload_id, state, next_try_at);

CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
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
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    mac TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, mac) VALUES (1, 0, '');

CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
