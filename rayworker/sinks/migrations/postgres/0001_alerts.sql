-- Alerts and their lifecycle history (PostgreSQL).
CREATE TABLE alerts (
    id                text PRIMARY KEY,
    tenant_id         text NOT NULL,
    fingerprint       text NOT NULL,
    rule_id           text NOT NULL,
    rule_version      text NOT NULL,
    "group"           jsonb NOT NULL DEFAULT '{}'::jsonb,
    severity          text NOT NULL,
    type              text NOT NULL,
    title             text NOT NULL,
    description       text NOT NULL,
    source            text NOT NULL,
    status            text NOT NULL DEFAULT 'active'
                      CHECK (status IN ('active', 'acknowledged', 'resolved', 'dismissed')),
    metadata          jsonb NOT NULL DEFAULT '{}'::jsonb,
    tags              jsonb NOT NULL DEFAULT '[]'::jsonb,
    evidence          jsonb NOT NULL DEFAULT '[]'::jsonb,
    evidence_window   jsonb NOT NULL DEFAULT '{}'::jsonb,
    occurrences       integer NOT NULL CHECK (occurrences >= 0),
    count             integer NOT NULL CHECK (count >= 0),
    first_seen        timestamptz NOT NULL,
    last_seen         timestamptz NOT NULL,
    period_start      timestamptz NOT NULL,
    period_end        timestamptz NOT NULL,
    acknowledged      boolean NOT NULL DEFAULT false,
    acknowledged_at   timestamptz,
    acknowledged_by   text,
    resolved          boolean NOT NULL DEFAULT false,
    resolved_at       timestamptz,
    resolved_by       text,
    resolution_notes  text,
    trace_id          text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- "Active alerts of a tenant, newest first" (list_active, count_active).
CREATE INDEX alerts_tenant_status_last_seen ON alerts (tenant_id, status, last_seen DESC, id DESC);
CREATE INDEX alerts_tenant_severity ON alerts (tenant_id, severity);
CREATE INDEX alerts_tenant_rule ON alerts (tenant_id, rule_id);
CREATE INDEX alerts_tenant_created ON alerts (tenant_id, created_at);

CREATE TABLE alert_transitions (
    id           bigserial PRIMARY KEY,
    alert_id     text NOT NULL,
    tenant_id    text NOT NULL,
    from_status  text NOT NULL,
    to_status    text NOT NULL,
    "by"         text NOT NULL,
    at           timestamptz NOT NULL,
    note         text
);

CREATE INDEX alert_transitions_tenant_alert ON alert_transitions (tenant_id, alert_id);
