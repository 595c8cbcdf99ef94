-- Nothing in the catalog names a person in the clear: subject ids are stored as their
-- keyed hash and store keys sealed (src/retention/audit.rs). Whether an upload's key
-- contains its subject's id is recorded at registration, where the raw id is known, so
-- an anonymised upload can still be moved away from such a key.
ALTER TABLE uploads ADD COLUMN key_names_subject INTEGER NOT NULL DEFAULT 0;

-- 1: raw ids and keys (catalogs made before this migration); 2: hashed and sealed.
-- Catalog::open converts a version 1 catalog once, then sets 2.
CREATE TABLE catalog_format (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO catalog_format (id, version) VALUES (1, 1);
