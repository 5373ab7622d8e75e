-- Alerts and their lifecycle history (SQLite).
-- Times are INTEGER microseconds since the Unix epoch (UTC); JSON columns are TEXT;
-- booleans are INTEGER 0/1.
CREATE TABLE alerts (
    id                TEXT PRIMARY KEY NOT NULL,
    tenant_id         TEXT NOT NULL,
    fingerprint       TEXT NOT NULL,
    rule_id           TEXT NOT NULL,
    rule_version      TEXT NOT NULL,
    "group"           TEXT NOT NULL DEFAULT '{}',
    severity          TEXT NOT NULL,
    type              TEXT NOT NULL,
    title             TEXT NOT NULL,
    description       TEXT NOT NULL,
    source            TEXT NOT NULL,
    status            TEXT NOT NULL DEFAULT 'active'
                      CHECK (status IN ('active', 'acknowledged', 'resolved', 'dismissed')),
    metadata          TEXT NOT NULL DEFAULT '{}',
    tags              TEXT NOT NULL DEFAULT '[]',
    evidence          TEXT NOT NULL DEFAULT '[]',
    evidence_window   TEXT NOT NULL DEFAULT '{}',
    occurrences       INTEGER NOT NULL CHECK (occurrences >= 0),
    count             INTEGER NOT NULL CHECK (count >= 0),
    first_seen        INTEGER NOT NULL,
    last_seen         INTEGER NOT NULL,
    period_start      INTEGER NOT NULL,
    period_end        INTEGER NOT NULL,
    acknowledged      INTEGER NOT NULL DEFAULT 0 CHECK (acknowledged IN (0, 1)),
    acknowledged_at   INTEGER,
    acknowledged_by   TEXT,
    resolved          INTEGER NOT NULL DEFAULT 0 CHECK (resolved IN (0, 1)),
    resolved_at       INTEGER,
    resolved_by       TEXT,
    resolution_notes  TEXT,
    trace_id          TEXT,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);

-- "Active alerts of a tenant, newest first" (list_active, count_active).
CREATE INDEX alerts_tenant_status_last_seen ON alerts (tenant_id, status, last_seen DESC, id DESC);
CREATE INDEX alerts_tenant_severity ON alerts (tenant_id, severity);
CREATE INDEX alerts_tenant_rule ON alerts (tenant_id, rule_id);
CREATE INDEX alerts_tenant_created ON alerts (tenant_id, created_at);

CREATE TABLE alert_transitions (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id     TEXT NOT NULL,
    tenant_id    TEXT NOT NULL,
    from_status  TEXT NOT NULL,
    to_status    TEXT NOT NULL,
    "by"         TEXT NOT NULL,
    at           INTEGER NOT NULL,
    note         TEXT
);

CREATE INDEX alert_transitions_tenant_alert ON alert_transitions (tenant_id, alert_id);
