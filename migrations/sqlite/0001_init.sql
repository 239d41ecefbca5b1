-- Zen schema v1 for SQLite (the embedded backend): the same tables,
-- constraints and indexes as migrations/postgres/0001_init.sql.
-- UUIDs are TEXT (lowercase hyphenated), timestamps TEXT in the fixed-width
-- form YYYY-MM-DDTHH:MM:SS.ffffffZ (so text order is time order), JSON is
-- TEXT, booleans INTEGER 0/1. SQLite has no roles and no row-level
-- security: the repositories' tenant filters are the isolation here.
-- Never edit this file once applied anywhere: add 0002_… instead.

CREATE TABLE tenants (
    id                   TEXT PRIMARY KEY NOT NULL,
    name                 TEXT NOT NULL,
    display_name         TEXT NOT NULL,
    status               TEXT NOT NULL DEFAULT 'active'
                         CHECK (status IN ('active', 'suspended', 'deleted')),
    suspend_reason       TEXT,
    max_clusters         INTEGER NOT NULL CHECK (max_clusters >= 0),
    requests_per_second  INTEGER NOT NULL CHECK (requests_per_second >= 0),
    max_events_per_day   INTEGER NOT NULL CHECK (max_events_per_day >= 0),
    version              INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at           TEXT NOT NULL,
    updated_at           TEXT NOT NULL,
    created_by           TEXT,
    updated_by           TEXT,
    deleted_at           TEXT,
    CONSTRAINT tenants_id_not_nil CHECK (id <> '00000000-0000-0000-0000-000000000000'),
    CONSTRAINT tenants_deleted_consistent CHECK ((status = 'deleted') = (deleted_at IS NOT NULL)),
    CONSTRAINT tenants_suspend_reason_consistent CHECK (suspend_reason IS NULL OR status = 'suspended')
);
CREATE UNIQUE INDEX tenants_name_live_uq ON tenants (name) WHERE deleted_at IS NULL;
CREATE INDEX tenants_created_idx ON tenants (created_at DESC, id DESC);
CREATE INDEX tenants_status_idx ON tenants (status);

CREATE TABLE users (
    id                 TEXT PRIMARY KEY NOT NULL,
    issuer             TEXT NOT NULL,
    subject            TEXT NOT NULL,
    email              TEXT,
    display_name       TEXT,
    password_hash      TEXT,
    is_platform_admin  INTEGER NOT NULL DEFAULT 0 CHECK (is_platform_admin IN (0, 1)),
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL,
    CONSTRAINT users_issuer_subject_uq UNIQUE (issuer, subject)
);
CREATE INDEX users_email_idx ON users (lower(email));

CREATE TABLE tenant_members (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    user_id     TEXT NOT NULL REFERENCES users (id),
    role        TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'approver', 'viewer')),
    joined_at   TEXT NOT NULL,
    invited_by  TEXT,
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX tenant_members_user_idx ON tenant_members (user_id);
CREATE INDEX tenant_members_role_idx ON tenant_members (tenant_id, role);
CREATE INDEX tenant_members_joined_idx ON tenant_members (tenant_id, joined_at, user_id);

CREATE TABLE invites (
    id           TEXT PRIMARY KEY NOT NULL,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    email        TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'approver', 'viewer')),
    token_hash   TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    accepted_at  TEXT,
    accepted_by  TEXT,
    created_by   TEXT,
    created_at   TEXT NOT NULL,
    CONSTRAINT invites_token_hash_uq UNIQUE (token_hash)
);
CREATE INDEX invites_pending_idx ON invites (tenant_id, created_at DESC) WHERE accepted_at IS NULL;

CREATE TABLE clusters (
    id                TEXT PRIMARY KEY NOT NULL,
    tenant_id         TEXT NOT NULL REFERENCES tenants (id),
    name              TEXT NOT NULL,
    display_name      TEXT NOT NULL,
    status            TEXT NOT NULL
                      CHECK (status IN ('ready', 'provisioning', 'error', 'deleting')),
    connection_state  TEXT NOT NULL DEFAULT 'unknown'
                      CHECK (connection_state IN ('unknown', 'connected', 'disconnected')),
    agent_version     TEXT,
    last_seen_at      TEXT,
    api_endpoint      TEXT,
    labels            TEXT NOT NULL DEFAULT '{}',
    metadata          TEXT NOT NULL DEFAULT '{}',
    version           INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    deleted_at        TEXT,
    CONSTRAINT clusters_tenant_id_uq UNIQUE (tenant_id, id)
);
CREATE UNIQUE INDEX clusters_name_live_uq ON clusters (tenant_id, name) WHERE deleted_at IS NULL;
CREATE INDEX clusters_live_created_idx ON clusters (tenant_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;
CREATE INDEX clusters_status_idx ON clusters (tenant_id, status) WHERE deleted_at IS NULL;

CREATE TABLE bootstrap_tokens (
    id          TEXT PRIMARY KEY NOT NULL,
    tenant_id   TEXT NOT NULL,
    cluster_id  TEXT NOT NULL,
    token_hash  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    used_at     TEXT,
    created_by  TEXT,
    created_at  TEXT NOT NULL,
    CONSTRAINT bootstrap_tokens_token_hash_uq UNIQUE (token_hash),
    CONSTRAINT bootstrap_tokens_cluster_fk FOREIGN KEY (tenant_id, cluster_id)
        REFERENCES clusters (tenant_id, id)
);
CREATE INDEX bootstrap_tokens_cluster_idx ON bootstrap_tokens (tenant_id, cluster_id, created_at DESC);

-- Security events: see migrations/postgres/0001_init.sql and docs/STORAGE.md.
CREATE TABLE events (
    id               TEXT NOT NULL,
    tenant_id        TEXT NOT NULL,
    cluster_id       TEXT,
    seq              INTEGER NOT NULL CHECK (seq >= 1),
    origin           TEXT NOT NULL CHECK (origin <> ''),
    source_event_id  TEXT NOT NULL CHECK (source_event_id <> ''),
    source           TEXT NOT NULL
                     CHECK (source IN ('trivy', 'kyverno', 'falco', 'kube-bench', 'audit',
                                       'custom', 'webhook')),
    source_name      TEXT,
    category         TEXT NOT NULL
                     CHECK (category IN ('security', 'compliance', 'operations', 'performance',
                                         'cost')),
    severity         INTEGER NOT NULL CHECK (severity BETWEEN 1 AND 5),
    type             TEXT NOT NULL,
    title            TEXT NOT NULL DEFAULT '',
    resource         TEXT NOT NULL DEFAULT '{}',
    details          TEXT NOT NULL DEFAULT '{}',
    fingerprint      TEXT NOT NULL CHECK (fingerprint <> ''),
    count            INTEGER NOT NULL DEFAULT 1 CHECK (count >= 1),
    detected_at      TEXT NOT NULL,
    received_at      TEXT NOT NULL,
    last_seen_at     TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT events_cluster_fk FOREIGN KEY (tenant_id, cluster_id)
        REFERENCES clusters (tenant_id, id)
);
CREATE INDEX events_received_idx ON events (tenant_id, received_at DESC, id DESC);
CREATE INDEX events_fold_idx ON events (tenant_id, origin, fingerprint, received_at DESC);

CREATE TABLE event_changes (
    tenant_id  TEXT NOT NULL,
    seq        INTEGER NOT NULL CHECK (seq >= 1),
    event_id   TEXT NOT NULL,
    PRIMARY KEY (tenant_id, seq)
) WITHOUT ROWID;

CREATE TABLE event_receipts (
    tenant_id        TEXT NOT NULL,
    origin           TEXT NOT NULL,
    source_event_id  TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    received_at      TEXT NOT NULL,
    PRIMARY KEY (tenant_id, origin, source_event_id)
) WITHOUT ROWID;

CREATE TABLE event_seq_heads (
    tenant_id   TEXT PRIMARY KEY NOT NULL REFERENCES tenants (id),
    last_seq    INTEGER NOT NULL CHECK (last_seq >= 0),
    updated_at  TEXT NOT NULL
);

CREATE TABLE remediations (
    id          TEXT PRIMARY KEY NOT NULL,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    cluster_id  TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    status      TEXT NOT NULL,
    version     INTEGER NOT NULL DEFAULT 1,
    created_at  TEXT NOT NULL,
    CONSTRAINT remediations_tenant_id_uq UNIQUE (tenant_id, id),
    CONSTRAINT remediations_event_fk FOREIGN KEY (tenant_id, event_id)
        REFERENCES events (tenant_id, id),
    CONSTRAINT remediations_cluster_fk FOREIGN KEY (tenant_id, cluster_id)
        REFERENCES clusters (tenant_id, id)
);
CREATE INDEX remediations_status_idx ON remediations (tenant_id, status);
CREATE INDEX remediations_created_idx ON remediations (tenant_id, created_at DESC);
CREATE INDEX remediations_event_idx ON remediations (tenant_id, event_id);

CREATE TABLE audit_logs (
    id              TEXT PRIMARY KEY NOT NULL,
    tenant_id       TEXT NOT NULL,
    seq             INTEGER NOT NULL CHECK (seq >= 1),
    actor_type      TEXT NOT NULL,
    actor_id        TEXT,
    action          TEXT NOT NULL,
    resource_type   TEXT NOT NULL,
    resource_id     TEXT,
    outcome         TEXT NOT NULL CHECK (outcome IN ('success', 'denied', 'failure')),
    request_id      TEXT,
    client_address  TEXT,
    user_agent      TEXT,
    created_at      TEXT NOT NULL,
    details         TEXT NOT NULL DEFAULT '{}',
    prev_hash       TEXT NOT NULL,
    hash            TEXT NOT NULL,
    CONSTRAINT audit_logs_tenant_seq_uq UNIQUE (tenant_id, seq)
);
CREATE INDEX audit_logs_created_idx ON audit_logs (tenant_id, created_at DESC);
CREATE INDEX audit_logs_resource_idx ON audit_logs (tenant_id, resource_type, resource_id);
CREATE INDEX audit_logs_actor_idx ON audit_logs (tenant_id, actor_id);
CREATE INDEX audit_logs_action_idx ON audit_logs (tenant_id, action);
CREATE INDEX audit_logs_request_idx ON audit_logs (tenant_id, request_id);

-- Append-only, as far as SQLite can say it: the app has no other role, so
-- triggers refuse UPDATE and DELETE of audit records.
CREATE TRIGGER audit_logs_no_update BEFORE UPDATE ON audit_logs
BEGIN
    SELECT RAISE(ABORT, 'audit_logs is append-only');
END;
CREATE TRIGGER audit_logs_no_delete BEFORE DELETE ON audit_logs
BEGIN
    SELECT RAISE(ABORT, 'audit_logs is append-only');
END;

CREATE TABLE audit_chain_heads (
    tenant_id   TEXT PRIMARY KEY NOT NULL,
    last_seq    INTEGER NOT NULL CHECK (last_seq >= 0),
    last_hash   TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
