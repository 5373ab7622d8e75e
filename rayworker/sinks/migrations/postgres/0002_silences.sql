-- Notification silences per tenant (PostgreSQL). Matchers are a JSON array of strings
-- such as "rule_id=failed_auth"; a silence mutes while starts_at <= now < ends_at.
CREATE TABLE silences (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL,
    matchers    jsonb NOT NULL,
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL,
    created_by  text NOT NULL,
    comment     text NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    CHECK (ends_at >= starts_at)
);

CREATE INDEX silences_tenant_ends ON silences (tenant_id, ends_at);
CREATE INDEX silences_ends ON silences (ends_at);
