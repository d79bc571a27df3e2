-- diesel-on-commit: the outbox table, schema version 1 (CONTRACT.md, O9).
-- Copy this directory into your diesel migrations, or call
-- `Outbox::run_migrations(conn)`. Times are the database clock (UTC).
CREATE TABLE "diesel_on_commit_outbox" (
    id uuid PRIMARY KEY,
    kind varchar(128) NOT NULL,
    dedupe_key varchar(255),
    -- serde_json's text, byte for byte (never jsonb, which rejects \u0000)
    payload text NOT NULL,
    state varchar(16) NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'done', 'dead')),
    attempt integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 20,
    run_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL,
    lease_until timestamptz,
    claim_token varchar(36),
    last_error text
);
-- At most one pending row per (kind, key) (O6).
CREATE UNIQUE INDEX "diesel_on_commit_outbox_dedupe" ON "diesel_on_commit_outbox" (kind, dedupe_key)
    WHERE state = 'pending' AND dedupe_key IS NOT NULL;
-- The claim index covers live rows only.
CREATE INDEX "diesel_on_commit_outbox_claim" ON "diesel_on_commit_outbox" (run_at)
    WHERE state IN ('pending', 'running');
CREATE TABLE "diesel_on_commit_outbox_meta" (version integer NOT NULL);
INSERT INTO "diesel_on_commit_outbox_meta" (version) VALUES (1);
