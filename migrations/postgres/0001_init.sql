-- Zen schema v1: tenancy, clusters, bootstrap tokens, security events
-- (with their idempotency receipts and sequence heads), minimal remediations, the hash-chained audit log, the application role and
-- row-level security.
--
-- Runs as the schema owner (the migration URL's user). Never edit this file
-- once applied anywhere: add 0002_… instead (see docs/STORAGE.md).
-- SQL kept within what CockroachDB accepts, except the DO block below (see
-- docs/STORAGE.md for the CockroachDB fallback).

-- ------------------------------------------------------------------ the app role
-- Roles are cluster-wide and many databases may be migrated at once (tests),
-- so creation is guarded twice: the existence check, and the exception
-- handler for the race where two migrations pass the check together.
-- When a DBA created zen_app beforehand (recommended, see docs/STORAGE.md)
-- the migration needs no CREATEROLE privilege.
-- The application pool runs `SET ROLE zen_app`, which needs membership: a
-- non-superuser owner that is not yet a member grants itself membership
-- when it may (it created the role); otherwise a DBA runs
-- `GRANT zen_app TO <owner>`, or the app logs in as zen_app directly.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'zen_app') THEN
        BEGIN
            CREATE ROLE zen_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END IF;
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
       AND NOT pg_catalog.pg_has_role(current_user, 'zen_app', 'MEMBER') THEN
        BEGIN
            GRANT zen_app TO CURRENT_USER;
        EXCEPTION
            WHEN insufficient_privilege OR duplicate_object OR unique_violation THEN
                RAISE NOTICE 'could not grant zen_app to %: grant it, or log in as zen_app', current_user;
        END;
    END IF;
END
$$;

-- ------------------------------------------------------------------ tenants
CREATE TABLE tenants (
    id                   uuid PRIMARY KEY,
    name                 text NOT NULL,
    display_name         text NOT NULL,
    status               text NOT NULL DEFAULT 'active'
                         CHECK (status IN ('active', 'suspended', 'deleted')),
    suspend_reason       text,
    max_clusters         integer NOT NULL CHECK (max_clusters >= 0),
    requests_per_second  integer NOT NULL CHECK (requests_per_second >= 0),
    max_events_per_day   bigint NOT NULL CHECK (max_events_per_day >= 0),
    -- optimistic concurrency: +1 on every change (see docs/STORAGE.md)
    version              bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL,
    created_by           uuid,
    updated_by           uuid,
    deleted_at           timestamptz,
    -- the nil UUID names the platform audit chain, never a tenant
    CONSTRAINT tenants_id_not_nil CHECK (id <> '00000000-0000-0000-0000-000000000000'),
    CONSTRAINT tenants_deleted_consistent CHECK ((status = 'deleted') = (deleted_at IS NOT NULL)),
    CONSTRAINT tenants_suspend_reason_consistent CHECK (suspend_reason IS NULL OR status = 'suspended')
);
CREATE UNIQUE INDEX tenants_name_live_uq ON tenants (name) WHERE deleted_at IS NULL;
CREATE INDEX tenants_created_idx ON tenants (created_at DESC, id DESC);
CREATE INDEX tenants_status_idx ON tenants (status);

-- ------------------------------------------------------------------ users
CREATE TABLE users (
    id                 uuid PRIMARY KEY,
    issuer             text NOT NULL,
    subject            text NOT NULL,
    email              text,
    display_name       text,
    password_hash      text,            -- argon2id PHC string, local dev login only
    is_platform_admin  boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    CONSTRAINT users_issuer_subject_uq UNIQUE (issuer, subject)
);
CREATE INDEX users_email_idx ON users (lower(email));

-- ------------------------------------------------------------------ members
CREATE TABLE tenant_members (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    user_id     uuid NOT NULL REFERENCES users (id),
    role        text NOT NULL CHECK (role IN ('owner', 'admin', 'approver', 'viewer')),
    joined_at   timestamptz NOT NULL,
    invited_by  uuid,
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX tenant_members_user_idx ON tenant_members (user_id);
CREATE INDEX tenant_members_role_idx ON tenant_members (tenant_id, role);
CREATE INDEX tenant_members_joined_idx ON tenant_members (tenant_id, joined_at, user_id);

-- ------------------------------------------------------------------ invites
CREATE TABLE invites (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    email        text NOT NULL,
    role         text NOT NULL CHECK (role IN ('owner', 'admin', 'approver', 'viewer')),
    token_hash   text NOT NULL,         -- sha256 hex of the token; the token is never stored
    expires_at   timestamptz NOT NULL,
    accepted_at  timestamptz,
    accepted_by  uuid,
    created_by   uuid,
    created_at   timestamptz NOT NULL,
    CONSTRAINT invites_token_hash_uq UNIQUE (token_hash)
);
CREATE INDEX invites_pending_idx ON invites (tenant_id, created_at DESC) WHERE accepted_at IS NULL;

-- ------------------------------------------------------------------ clusters
CREATE TABLE clusters (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL REFERENCES tenants (id),
    name              text NOT NULL,
    display_name      text NOT NULL,
    status            text NOT NULL
                      CHECK (status IN ('ready', 'provisioning', 'error', 'deleting')),
    connection_state  text NOT NULL DEFAULT 'unknown'
                      CHECK (connection_state IN ('unknown', 'connected', 'disconnected')),
    agent_version     text,
    last_seen_at      timestamptz,
    api_endpoint      text,
    labels            jsonb NOT NULL DEFAULT '{}',
    metadata          jsonb NOT NULL DEFAULT '{}',
    -- optimistic concurrency: +1 on every change except agent reports
    version           bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    deleted_at        timestamptz,
    -- lets children reference (tenant_id, id), so the database itself
    -- refuses a child row that points into another tenant
    CONSTRAINT clusters_tenant_id_uq UNIQUE (tenant_id, id)
);
CREATE UNIQUE INDEX clusters_name_live_uq ON clusters (tenant_id, name) WHERE deleted_at IS NULL;
CREATE INDEX clusters_live_created_idx ON clusters (tenant_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;
CREATE INDEX clusters_status_idx ON clusters (tenant_id, status) WHERE deleted_at IS NULL;

-- ------------------------------------------------------------------ bootstrap tokens
CREATE TABLE bootstrap_tokens (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    cluster_id  uuid NOT NULL,
    token_hash  text NOT NULL,          -- sha256 hex of the token; the token is never stored
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    created_by  uuid,
    created_at  timestamptz NOT NULL,
    CONSTRAINT bootstrap_tokens_token_hash_uq UNIQUE (token_hash),
    CONSTRAINT bootstrap_tokens_cluster_fk FOREIGN KEY (tenant_id, cluster_id)
        REFERENCES clusters (tenant_id, id)
);
CREATE INDEX bootstrap_tokens_cluster_idx ON bootstrap_tokens (tenant_id, cluster_id, created_at DESC);

-- ------------------------------------------------------------------ events
-- Security events from agents and webhooks (see docs/STORAGE.md, "Events").
-- `origin` is who sent the event: the cluster id (agents) or
-- 'webhook:<source_name>' (webhook sources). Occurrences with the same
-- (tenant, origin, fingerprint) inside the fold window are folded into one
-- row: count, last_seen_at, details (the latest occurrence's) and seq change.
--
-- Key text columns are COLLATE "C": index comparisons are memcmp, not the
-- database locale's strcoll (ids and hashes have no linguistic order).
-- Every index is on columns a fold never changes, and pages keep 15% free,
-- so a fold is a HOT update: one new heap tuple on the same page, no index
-- entry (folds are most of the traffic once a cluster's findings repeat).
-- `seq` (the event's latest change) is therefore not indexed here; the
-- watchers' tail reads event_changes.
--
-- No foreign key on tenant_id alone: it would be checked once per row at
-- ingest rates. The tenant is guaranteed by RLS (WITH CHECK: the session's
-- tenant), by the composite cluster key for agent events, and by
-- event_seq_heads' foreign key, which every ingest batch writes first;
-- tenants are only ever soft-deleted.
CREATE TABLE events (
    id               uuid NOT NULL,
    tenant_id        uuid NOT NULL,
    cluster_id       uuid,
    seq              bigint NOT NULL CHECK (seq >= 1),
    origin           text COLLATE "C" NOT NULL CHECK (origin <> ''),
    source_event_id  text NOT NULL CHECK (source_event_id <> ''),
    source           text NOT NULL
                     CHECK (source IN ('trivy', 'kyverno', 'falco', 'kube-bench', 'audit',
                                       'custom', 'webhook')),
    source_name      text,
    category         text NOT NULL
                     CHECK (category IN ('security', 'compliance', 'operations', 'performance',
                                         'cost')),
    severity         smallint NOT NULL CHECK (severity BETWEEN 1 AND 5),
    type             text NOT NULL,
    title            text NOT NULL DEFAULT '',
    -- json, not jsonb: validated and stored as the store wrote it (compact
    -- serde_json), not parsed into jsonb's tree at ~2.5 µs a document, and
    -- read back as-is; cast to jsonb to query inside
    resource         json NOT NULL DEFAULT '{}',
    details          json NOT NULL DEFAULT '{}',
    fingerprint      text COLLATE "C" NOT NULL CHECK (fingerprint <> ''),
    count            bigint NOT NULL DEFAULT 1 CHECK (count >= 1),
    detected_at      timestamptz NOT NULL,
    received_at      timestamptz NOT NULL,
    last_seen_at     timestamptz NOT NULL,
    -- (tenant_id, id), not id alone: children (remediations) reference it,
    -- so the database refuses one that points into another tenant; and one
    -- index less to maintain at ingest rates
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT events_cluster_fk FOREIGN KEY (tenant_id, cluster_id)
        REFERENCES clusters (tenant_id, id)
) WITH (fillfactor = 85);
-- lists: newest first on (received_at, id)
CREATE INDEX events_received_idx ON events (tenant_id, received_at DESC, id DESC);
-- folding: the newest row of (origin, fingerprint); it is the fold target
-- when its last_seen_at is inside the window
CREATE INDEX events_fold_idx ON events (tenant_id, origin, fingerprint, received_at DESC);

-- The tenants' change streams, the outbox live watchers follow: one row per
-- event stored or folded into, at the seq the change got. A row whose seq is
-- no longer its event's (the event changed again later) is skipped by the
-- tail and may be pruned. No foreign key, like receipts: pruned on its own.
CREATE TABLE event_changes (
    tenant_id  uuid NOT NULL,
    seq        bigint NOT NULL CHECK (seq >= 1),
    event_id   uuid NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);

-- Idempotency of ingestion: one row per (tenant, origin, source_event_id)
-- ever accepted, naming the event it was stored as or folded into. A resend
-- finds its receipt and is answered Duplicate, never counted twice. No
-- foreign key to events: receipts are pruned on their own schedule
-- (received_at) and may outlive the event they name.
CREATE TABLE event_receipts (
    tenant_id        uuid NOT NULL,
    origin           text COLLATE "C" NOT NULL,
    source_event_id  text COLLATE "C" NOT NULL,
    event_id         uuid NOT NULL,
    received_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, origin, source_event_id)
);

-- The tenant's change sequence: `ingest` allocates seqs by bumping last_seq,
-- and the row lock it takes serializes the tenant's ingest transactions, so
-- seqs become visible in increasing order (watchers following `seq > n`
-- never miss a change).
CREATE TABLE event_seq_heads (
    tenant_id   uuid PRIMARY KEY REFERENCES tenants (id),
    last_seq    bigint NOT NULL CHECK (last_seq >= 0),
    updated_at  timestamptz NOT NULL
);

-- ------------------------------------------------------------------ remediations (minimal)
CREATE TABLE remediations (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    cluster_id  uuid NOT NULL,
    event_id    uuid NOT NULL,
    status      text NOT NULL,
    version     bigint NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL,
    CONSTRAINT remediations_tenant_id_uq UNIQUE (tenant_id, id),
    -- the database refuses a remediation whose event or cluster is in
    -- another tenant, whatever the session's privileges
    CONSTRAINT remediations_event_fk FOREIGN KEY (tenant_id, event_id)
        REFERENCES events (tenant_id, id),
    CONSTRAINT remediations_cluster_fk FOREIGN KEY (tenant_id, cluster_id)
        REFERENCES clusters (tenant_id, id)
);
CREATE INDEX remediations_status_idx ON remediations (tenant_id, status);
CREATE INDEX remediations_created_idx ON remediations (tenant_id, created_at DESC);
CREATE INDEX remediations_event_idx ON remediations (tenant_id, event_id);

-- ------------------------------------------------------------------ audit
-- tenant_id has no foreign key: the nil UUID is the platform chain, and the
-- audit trail outlives its tenant.
CREATE TABLE audit_logs (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL,
    seq             bigint NOT NULL CHECK (seq >= 1),
    actor_type      text NOT NULL,
    actor_id        text,
    action          text NOT NULL,
    resource_type   text NOT NULL,
    resource_id     text,
    outcome         text NOT NULL CHECK (outcome IN ('success', 'denied', 'failure')),
    request_id      text,
    client_address  text,
    user_agent      text,
    created_at      timestamptz NOT NULL,
    details         jsonb NOT NULL DEFAULT '{}',
    prev_hash       text NOT NULL,
    hash            text NOT NULL,
    CONSTRAINT audit_logs_tenant_seq_uq UNIQUE (tenant_id, seq)
);
CREATE INDEX audit_logs_created_idx ON audit_logs (tenant_id, created_at DESC);
CREATE INDEX audit_logs_resource_idx ON audit_logs (tenant_id, resource_type, resource_id);
CREATE INDEX audit_logs_actor_idx ON audit_logs (tenant_id, actor_id);
CREATE INDEX audit_logs_action_idx ON audit_logs (tenant_id, action);
CREATE INDEX audit_logs_request_idx ON audit_logs (tenant_id, request_id);

CREATE TABLE audit_chain_heads (
    tenant_id   uuid PRIMARY KEY,
    last_seq    bigint NOT NULL CHECK (last_seq >= 0),
    last_hash   text NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- ------------------------------------------------------------------ privileges
GRANT USAGE ON SCHEMA public TO zen_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON
    tenants, users, tenant_members, invites, clusters, bootstrap_tokens,
    events, event_changes, event_receipts, event_seq_heads, remediations
    TO zen_app;
GRANT SELECT, INSERT, UPDATE ON audit_chain_heads TO zen_app;
-- append-only: no UPDATE, no DELETE
GRANT SELECT, INSERT ON audit_logs TO zen_app;

-- ------------------------------------------------------------------ row-level security
-- Every policy fails closed: with app.current_tenant_id unset or '' the
-- NULLIF gives NULL, the comparison is NULL and no row passes. The settings
-- are read in uncorrelated sub-queries, `(SELECT current_setting(…))`,
-- which PostgreSQL evaluates once per statement (an InitPlan) instead of
-- once per row: a 500-row ingest batch checks its rows against a constant. The store
-- sets these settings transaction-locally (set_config(..., true)) at the
-- start of every transaction. app.platform_admin = 'on' is the escape for
-- verified platform-admin operations only.

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenants_isolation ON tenants
    USING (id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
           OR (SELECT current_setting('app.platform_admin', true) = 'on'))
    WITH CHECK (id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
                OR (SELECT current_setting('app.platform_admin', true) = 'on'));
-- a user may read the tenants they belong to (tenant picker after login)
CREATE POLICY tenants_member_read ON tenants FOR SELECT
    USING (EXISTS (SELECT 1 FROM tenant_members m
                   WHERE m.tenant_id = tenants.id
                     AND m.user_id = (SELECT NULLIF(current_setting('app.current_user_id', true), '')::uuid)));

ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
-- readable by every application session (login looks users up before it
-- knows who they are); written only by the user itself or a platform admin
CREATE POLICY users_read ON users FOR SELECT USING (true);
CREATE POLICY users_insert ON users FOR INSERT
    WITH CHECK (id = (SELECT NULLIF(current_setting('app.current_user_id', true), '')::uuid)
                OR (SELECT current_setting('app.platform_admin', true) = 'on'));
CREATE POLICY users_update ON users FOR UPDATE
    USING (id = (SELECT NULLIF(current_setting('app.current_user_id', true), '')::uuid)
           OR (SELECT current_setting('app.platform_admin', true) = 'on'))
    WITH CHECK (id = (SELECT NULLIF(current_setting('app.current_user_id', true), '')::uuid)
                OR (SELECT current_setting('app.platform_admin', true) = 'on'));
CREATE POLICY users_delete ON users FOR DELETE
    USING ((SELECT current_setting('app.platform_admin', true) = 'on'));

ALTER TABLE tenant_members ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_members FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_members_isolation ON tenant_members
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
           OR (SELECT current_setting('app.platform_admin', true) = 'on'))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
                OR (SELECT current_setting('app.platform_admin', true) = 'on'));
-- a user may read their own memberships in every tenant
CREATE POLICY tenant_members_self_read ON tenant_members FOR SELECT
    USING (user_id = (SELECT NULLIF(current_setting('app.current_user_id', true), '')::uuid));

ALTER TABLE invites ENABLE ROW LEVEL SECURITY;
ALTER TABLE invites FORCE ROW LEVEL SECURITY;
CREATE POLICY invites_isolation ON invites
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
           OR (SELECT current_setting('app.platform_admin', true) = 'on'))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
                OR (SELECT current_setting('app.platform_admin', true) = 'on'));

ALTER TABLE clusters ENABLE ROW LEVEL SECURITY;
ALTER TABLE clusters FORCE ROW LEVEL SECURITY;
CREATE POLICY clusters_isolation ON clusters
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
           OR (SELECT current_setting('app.platform_admin', true) = 'on'))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
                OR (SELECT current_setting('app.platform_admin', true) = 'on'));

ALTER TABLE bootstrap_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE bootstrap_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY bootstrap_tokens_isolation ON bootstrap_tokens
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
           OR (SELECT current_setting('app.platform_admin', true) = 'on'))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
                OR (SELECT current_setting('app.platform_admin', true) = 'on'));

ALTER TABLE events ENABLE ROW LEVEL SECURITY;
ALTER TABLE events FORCE ROW LEVEL SECURITY;
CREATE POLICY events_isolation ON events
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
           OR (SELECT current_setting('app.platform_admin', true) = 'on'))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
                OR (SELECT current_setting('app.platform_admin', true) = 'on'));

ALTER TABLE event_changes ENABLE ROW LEVEL SECURITY;
ALTER TABLE event_changes FORCE ROW LEVEL SECURITY;
CREATE POLICY event_changes_isolation ON event_changes
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
           OR (SELECT current_setting('app.platform_admin', true) = 'on'))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
                OR (SELECT current_setting('app.platform_admin', true) = 'on'));

ALTER TABLE event_receipts ENABLE ROW LEVEL SECURITY;
ALTER TABLE event_receipts FORCE ROW LEVEL SECURITY;
CREATE POLICY event_receipts_isolation ON event_receipts
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
           OR (SELECT current_setting('app.platform_admin', true) = 'on'))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
                OR (SELECT current_setting('app.platform_admin', true) = 'on'));

ALTER TABLE event_seq_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE event_seq_heads FORCE ROW LEVEL SECURITY;
CREATE POLICY event_seq_heads_isolation ON event_seq_heads
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
           OR (SELECT current_setting('app.platform_admin', true) = 'on'))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
                OR (SELECT current_setting('app.platform_admin', true) = 'on'));

ALTER TABLE remediations ENABLE ROW LEVEL SECURITY;
ALTER TABLE remediations FORCE ROW LEVEL SECURITY;
CREATE POLICY remediations_isolation ON remediations
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
           OR (SELECT current_setting('app.platform_admin', true) = 'on'))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
                OR (SELECT current_setting('app.platform_admin', true) = 'on'));

ALTER TABLE audit_logs ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_logs FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_logs_read ON audit_logs FOR SELECT
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
           OR (SELECT current_setting('app.platform_admin', true) = 'on'));
CREATE POLICY audit_logs_append ON audit_logs FOR INSERT
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
                OR (SELECT current_setting('app.platform_admin', true) = 'on'));

ALTER TABLE audit_chain_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_chain_heads FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_chain_heads_isolation ON audit_chain_heads
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
           OR (SELECT current_setting('app.platform_admin', true) = 'on'))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
                OR (SELECT current_setting('app.platform_admin', true) = 'on'));
