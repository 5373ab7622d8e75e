-- Notification silences per tenant (SQLite). Times are INTEGER microseconds since the Unix
-- epoch (UTC); matchers are a JSON array of strings such as "rule_id=failed_auth".
CREATE TABLE silences (
    id          TEXT PRIMARY KEY NOT NULL,
    tenant_id   TEXT NOT NULL,
    matchers    TEXT NOT NULL,
    starts_at   INTEGER NOT NULL,
    ends_at     INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    comment     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    CHECK (ends_at >= starts_at)
);

CREATE INDEX silences_tenant_ends ON silences (tenant_id, ends_at);
CREATE INDEX silences_ends ON silences (ends_at);
