-- toolgate database schema. Applied on first start; PRAGMA user_version records the version.
-- Every table is STRICT; every value is bound, never formatted into SQL.

-- One row per fact about this database (unit_id, created_at).
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) STRICT;

-- Token-signing keys, every one toolgate has had. A key is published from created_at, signs
-- from signs_from until retired_at (its successor's signs_from; NULL while it has none), and
-- stays published until not_after, when the last token it signed has expired (plus leeway).
-- pkcs8 is the private half while the database keeps it: empty for a key kept in
-- --signing-key-file, and overwritten (secure_delete) once the key is retired. public_jwk
-- (the public half, JSON) stays. public_jwk and signs_from: version 10.
CREATE TABLE IF NOT EXISTS signing_keys (
    kid        TEXT PRIMARY KEY NOT NULL,
    alg        TEXT NOT NULL,
    pkcs8      BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    retired_at INTEGER,
    not_after  INTEGER,
    public_jwk TEXT NOT NULL DEFAULT '',
    signs_from INTEGER
) STRICT;

-- The tool registry: one store behind /v1/mcp/tools and /v1/tools.
CREATE TABLE IF NOT EXISTS tools (
    tool_id               TEXT PRIMARY KEY NOT NULL,
    name                  TEXT NOT NULL DEFAULT '',
    description           TEXT NOT NULL DEFAULT '',
    resource_uri          TEXT NOT NULL,
    server_id             TEXT NOT NULL DEFAULT '',
    required_capabilities TEXT NOT NULL DEFAULT '[]',
    max_blast_radius      TEXT NOT NULL DEFAULT '',
    requires_execution    INTEGER NOT NULL DEFAULT 0,
    allowed_operations    TEXT NOT NULL DEFAULT '[]',
    allowed_targets       TEXT NOT NULL DEFAULT '[]',
    protocols             TEXT NOT NULL DEFAULT '["mcp"]',
    registered_at         TEXT NOT NULL,
    updated_at            TEXT NOT NULL,
    -- '' (a bearer token will do) or 'mtls' (RFC 8705 certificate-bound tokens); version 9.
    sender_constraint     TEXT NOT NULL DEFAULT ''
) STRICT;

CREATE INDEX IF NOT EXISTS tools_by_resource ON tools (resource_uri);

-- Revocations from CAEP / RISC / toolgate signals and operators. One row per revoked
-- (format, issuer, value) and source (the SET's issuer, or 'admin' for the admin API), so that
-- a name revoked by two sources stays revoked until both rows are gone. A repeated revocation
-- refreshes its source's row and never shortens it (the admin's may). Lifting deletes a row.
-- format: uri | email | iss_sub | opaque (subjects), jti (one token), tool (a tool_id).
CREATE TABLE IF NOT EXISTS revocations (
    id         INTEGER PRIMARY KEY,
    format     TEXT NOT NULL,
    issuer     TEXT NOT NULL DEFAULT '',
    value      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    event_type TEXT NOT NULL DEFAULT '',
    event_jti  TEXT NOT NULL DEFAULT '',
    source     TEXT NOT NULL DEFAULT '',
    revoked_at INTEGER NOT NULL,
    expires_at INTEGER,
    UNIQUE (format, issuer, value, source)
) STRICT;

-- Pruning finds expiring revocations without scanning the whole table.
CREATE INDEX IF NOT EXISTS revocations_by_expiry ON revocations (expires_at) WHERE expires_at IS NOT NULL;

-- Security Event Tokens already applied, by (transmitter, jti): a replay is acknowledged, not
-- applied twice. Rows older than the accepted SET age are pruned.
CREATE TABLE IF NOT EXISTS signal_events (
    issuer      TEXT NOT NULL,
    jti         TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (issuer, jti)
) STRICT;

-- The audit log: every decision and every change, hash-chained. Each row's hash (SHA-256,
-- 32 bytes) covers the previous row's hash and all of its own fields; audit_head records the
-- last (seq, hash) so that deleting rows from the tail shows. Tokens are never stored: only
-- their jti. count: the events a row stands for (repeats of one refusal aggregated; 1
-- otherwise). Rows older than audit_retention_days are removed from the start, behind a
-- checkpoint row (kind 'audit', decision 'pruned') naming the last removed row's seq and hash.
CREATE TABLE IF NOT EXISTS audit_log (
    seq        INTEGER PRIMARY KEY,
    ts_ms      INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    subject    TEXT NOT NULL DEFAULT '',
    target     TEXT NOT NULL DEFAULT '',
    decision   TEXT NOT NULL,
    check_name TEXT NOT NULL DEFAULT '',
    reason     TEXT NOT NULL DEFAULT '',
    request_id TEXT NOT NULL DEFAULT '',
    jti        TEXT NOT NULL DEFAULT '',
    hash       BLOB NOT NULL,
    count      INTEGER NOT NULL DEFAULT 1
) STRICT;

-- Where each subject's and each tool's audit rows are: spans of seq holding its rows (at most
-- 16 rows apart), added with each batch. A subject or tool query reads its spans instead of
-- an index entry per row, which made every append pay two index insertions.
-- field: subject | target.
CREATE TABLE IF NOT EXISTS audit_runs (
    field     TEXT NOT NULL,
    value     TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    PRIMARY KEY (field, value, first_seq)
) STRICT, WITHOUT ROWID;

-- The last row's (seq, hash), and its tag: HMAC-SHA256 under the audit key, which is kept in
-- a file outside this database, so that a writer of the database alone cannot rewrite the log
-- and give it a head that verifies.
CREATE TABLE IF NOT EXISTS audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL,
    tag  TEXT NOT NULL DEFAULT ''
) STRICT;
