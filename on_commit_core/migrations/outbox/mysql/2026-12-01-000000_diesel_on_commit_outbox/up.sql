-- diesel-on-commit: the outbox table, schema version 1 (CONTRACT.md, O9).
-- Copy this directory into your diesel migrations, or call
-- `Outbox::run_migrations(conn)`. Times are the database clock, UTC
-- (UTC_TIMESTAMP(6)).
CREATE TABLE `diesel_on_commit_outbox` (
    id CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY,
    kind VARCHAR(128) NOT NULL,
    dedupe_key VARCHAR(255),
    -- serde_json's text, byte for byte
    payload LONGTEXT NOT NULL,
    state VARCHAR(16) NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'done', 'dead')),
    attempt INT NOT NULL DEFAULT 0,
    max_attempts INT NOT NULL DEFAULT 20,
    run_at DATETIME(6) NOT NULL,
    created_at DATETIME(6) NOT NULL,
    lease_until DATETIME(6) NULL,
    claim_token VARCHAR(36),
    last_error TEXT,
    -- MySQL and MariaDB have no partial index: the key while the row is
    -- pending, NULL otherwise, under a unique index (O6).
    pending_key VARCHAR(255) AS (CASE WHEN state = 'pending' THEN dedupe_key END) STORED,
    UNIQUE KEY `diesel_on_commit_outbox_dedupe` (kind, pending_key),
    KEY `diesel_on_commit_outbox_claim` (state, run_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE TABLE `diesel_on_commit_outbox_meta` (version INT NOT NULL);
INSERT INTO `diesel_on_commit_outbox_meta` (version) VALUES (1);
