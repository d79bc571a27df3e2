-- diesel-on-commit: the outbox table, schema version 1 (CONTRACT.md, O9).
-- Copy this directory into your diesel migrations, or call
-- `Outbox::run_migrations(conn)`. Times are milliseconds since the Unix
-- epoch, UTC, from the database clock.
CREATE TABLE "diesel_on_commit_outbox" (
    id TEXT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL,
    dedupe_key TEXT,
    -- serde_json's text, byte for byte
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'done', 'dead')),
    attempt INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 20,
    run_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    lease_until INTEGER,
    claim_token TEXT,
    last_error TEXT
);
-- At most one pending row per (kind, key) (O6).
CREATE UNIQUE INDEX "diesel_on_commit_outbox_dedupe" ON "diesel_on_commit_outbox" (kind, dedupe_key)
    WHERE state = 'pending' AND dedupe_key IS NOT NULL;
-- The claim index covers live rows only.
CREATE INDEX "diesel_on_commit_outbox_claim" ON "diesel_on_commit_outbox" (run_at)
    WHERE state IN ('pending', 'running');
CREATE TABLE "diesel_on_commit_outbox_meta" (version INTEGER NOT NULL);
INSERT INTO "diesel_on_commit_outbox_meta" (version) VALUES (1);
