-- Zen schema v3: the remediation workflow (see docs/REMEDIATION.md).
--
-- Extends 0001's minimal `remediations` table (new columns carry defaults, so
-- rows written by earlier code stay valid) and adds approvals, per-tenant
-- approval policies, the dispatch queue (an outbox the dispatcher claims with
-- FOR UPDATE SKIP LOCKED), verification runs and dead letters. Every table
-- that holds tenant data references its tenant's rows by composite keys
-- (tenant_id, id), so the database refuses a row pointing into another
-- tenant, and has RLS forced exactly like 0001.

-- ------------------------------------------------------------------ remediations
-- A remediation may be proposed by hand, without an event.
ALTER TABLE remediations ALTER COLUMN event_id DROP NOT NULL;
ALTER TABLE remediations
    ADD COLUMN title                     text NOT NULL DEFAULT '',
    ADD COLUMN description               text NOT NULL DEFAULT '',
    -- proto3 JSON of zen.remediation.v1.RemediationAction / VerificationProbe[]
    ADD COLUMN action                    jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN rollback_action           jsonb,
    ADD COLUMN probes                    jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN risk                      text NOT NULL DEFAULT 'medium'
                                         CHECK (risk IN ('low', 'medium', 'high', 'critical')),
    ADD COLUMN status_reason             text NOT NULL DEFAULT '',
    -- the action's revision: +1 per ReviseRemediation; approvals name it
    ADD COLUMN revision                  bigint NOT NULL DEFAULT 1 CHECK (revision >= 1),
    ADD COLUMN required_approvals        integer NOT NULL DEFAULT 0 CHECK (required_approvals >= 0),
    ADD COLUMN break_glass               boolean NOT NULL DEFAULT false,
    ADD COLUMN break_glass_justification text NOT NULL DEFAULT '',
    ADD COLUMN proposed_by               text NOT NULL DEFAULT '',
    ADD COLUMN updated_at                timestamptz,
    ADD COLUMN expires_at                timestamptz,
    ADD COLUMN dispatched_at             timestamptz,
    ADD COLUMN completed_at              timestamptz,
    ADD COLUMN last_error                text NOT NULL DEFAULT '',
    ADD COLUMN execution_id              uuid,
    ADD COLUMN attempts                  integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- whether the action was ever applied (a rollback needs something to undo)
    ADD COLUMN executed                  boolean NOT NULL DEFAULT false,
    -- the remediation's latest place in the tenant's change sequence (the one
    -- events take theirs from, event_seq_heads): every create and change takes
    -- the next seq, so WatchEvents orders remediation changes and events on
    -- one resume token. NULL only for rows written before this migration.
    ADD COLUMN seq                       bigint CHECK (seq >= 1);
ALTER TABLE remediations ADD CONSTRAINT remediations_status_check CHECK (status IN (
    'proposed', 'pending_approval', 'approved', 'dispatched', 'executing', 'verifying',
    'succeeded', 'failed', 'rolling_back', 'rolled_back', 'rejected', 'cancelled', 'expired'));
ALTER TABLE remediations ADD CONSTRAINT remediations_version_check CHECK (version >= 1);
-- lists: newest first on (created_at, id); the sweeper: pending ones by expiry
CREATE INDEX remediations_list_idx ON remediations (tenant_id, created_at DESC, id DESC);
CREATE INDEX remediations_expiry_idx ON remediations (expires_at)
    WHERE status IN ('proposed', 'pending_approval');
-- the watchers' tail: a tenant's remediations changed after a seq, in seq order
-- (unique: a seq names one change, whichever table holds it)
CREATE UNIQUE INDEX remediations_seq_idx ON remediations (tenant_id, seq) WHERE seq IS NOT NULL;

-- ------------------------------------------------------------------ approvals
-- One row per approver per revision: the primary key makes approvers
-- distinct; a revision voids earlier rows by moving `revision` on.
CREATE TABLE remediation_approvals (
    tenant_id            uuid NOT NULL,
    remediation_id       uuid NOT NULL,
    revision             bigint NOT NULL,
    approver_id          uuid NOT NULL,
    approver_role        text NOT NULL CHECK (approver_role IN ('owner', 'admin', 'approver', 'viewer')),
    comment              text NOT NULL DEFAULT '',
    remediation_version  bigint NOT NULL,
    created_at           timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, remediation_id, revision, approver_id),
    CONSTRAINT remediation_approvals_remediation_fk FOREIGN KEY (tenant_id, remediation_id)
        REFERENCES remediations (tenant_id, id)
);

-- ------------------------------------------------------------------ approval policies
-- At most one per tenant; a tenant without a row gets the defaults.
CREATE TABLE approval_policies (
    tenant_id                 uuid PRIMARY KEY REFERENCES tenants (id),
    required_low              integer NOT NULL CHECK (required_low BETWEEN 0 AND 10),
    required_medium           integer NOT NULL CHECK (required_medium BETWEEN 0 AND 10),
    required_high             integer NOT NULL CHECK (required_high BETWEEN 0 AND 10),
    required_critical         integer NOT NULL CHECK (required_critical BETWEEN 0 AND 10),
    min_approver_role         text NOT NULL CHECK (min_approver_role IN ('owner', 'admin', 'approver')),
    allow_self_approval       boolean NOT NULL,
    approval_windows          jsonb NOT NULL DEFAULT '[]',
    pending_expiry_seconds    bigint NOT NULL CHECK (pending_expiry_seconds > 0),
    auto_rollback_on_failure  boolean NOT NULL,
    max_dispatch_attempts     integer NOT NULL CHECK (max_dispatch_attempts BETWEEN 1 AND 20),
    version                   bigint NOT NULL CHECK (version >= 1),
    updated_at                timestamptz NOT NULL,
    updated_by                text NOT NULL DEFAULT ''
);

-- ------------------------------------------------------------------ dispatch queue
-- One row per execution (apply or rollback). `state`: pending (not sent
-- yet, or due again), sent (awaiting the agent's first report), acked
-- (the agent reported), done (terminal report), dead (attempts exhausted).
-- The dispatcher of the replica holding a cluster's stream claims that
-- cluster's due rows with FOR UPDATE SKIP LOCKED.
CREATE TABLE remediation_dispatches (
    execution_id         uuid NOT NULL,
    tenant_id            uuid NOT NULL,
    cluster_id           uuid NOT NULL,
    remediation_id       uuid NOT NULL,
    remediation_version  bigint NOT NULL,
    operation            text NOT NULL CHECK (operation IN ('apply', 'rollback')),
    state                text NOT NULL CHECK (state IN ('pending', 'sent', 'acked', 'done', 'dead')),
    attempts             integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts         integer NOT NULL CHECK (max_attempts >= 1),
    next_attempt_at      timestamptz NOT NULL,
    last_error           text NOT NULL DEFAULT '',
    last_phase           text NOT NULL DEFAULT '',
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, execution_id),
    CONSTRAINT remediation_dispatches_remediation_fk FOREIGN KEY (tenant_id, remediation_id)
        REFERENCES remediations (tenant_id, id),
    CONSTRAINT remediation_dispatches_cluster_fk FOREIGN KEY (tenant_id, cluster_id)
        REFERENCES clusters (tenant_id, id)
);
CREATE INDEX remediation_dispatches_due_idx ON remediation_dispatches
    (tenant_id, cluster_id, next_attempt_at) WHERE state IN ('pending', 'sent', 'acked');

-- ------------------------------------------------------------------ verification runs
-- One per execution that reported probe results (the unique key makes a
-- resent report a no-op).
CREATE TABLE verification_runs (
    id                   uuid NOT NULL,
    tenant_id            uuid NOT NULL,
    remediation_id       uuid NOT NULL,
    remediation_version  bigint NOT NULL,
    execution_id         uuid NOT NULL,
    result               text NOT NULL CHECK (result IN ('success', 'failure')),
    probes               jsonb NOT NULL DEFAULT '[]',
    started_at           timestamptz,
    ended_at             timestamptz,
    created_at           timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT verification_runs_execution_uq UNIQUE (tenant_id, execution_id),
    CONSTRAINT verification_runs_remediation_fk FOREIGN KEY (tenant_id, remediation_id)
        REFERENCES remediations (tenant_id, id)
);
CREATE INDEX verification_runs_remediation_idx ON verification_runs
    (tenant_id, remediation_id, created_at DESC, id DESC);

-- ------------------------------------------------------------------ dead letters
CREATE TABLE dead_letters (
    id              uuid NOT NULL,
    tenant_id       uuid NOT NULL,
    remediation_id  uuid NOT NULL,
    cluster_id      uuid NOT NULL,
    execution_id    uuid NOT NULL,
    operation       text NOT NULL CHECK (operation IN ('apply', 'rollback')),
    attempts        integer NOT NULL,
    last_error      text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL,
    replayed_at     timestamptz,
    replayed_by     text,
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT dead_letters_remediation_fk FOREIGN KEY (tenant_id, remediation_id)
        REFERENCES remediations (tenant_id, id),
    CONSTRAINT dead_letters_cluster_fk FOREIGN KEY (tenant_id, cluster_id)
        REFERENCES clusters (tenant_id, id)
);
CREATE INDEX dead_letters_created_idx ON dead_letters (tenant_id, created_at DESC, id DESC);

-- ------------------------------------------------------------------ privileges
GRANT SELECT, INSERT, UPDATE, DELETE ON
    remediation_approvals, approval_policies, remediation_dispatches, verification_runs,
    dead_letters
    TO zen_app;

-- ------------------------------------------------------------------ row-level security
ALTER TABLE remediation_approvals ENABLE ROW LEVEL SECURITY;
ALTER TABLE remediation_approvals FORCE ROW LEVEL SECURITY;
CREATE POLICY remediation_approvals_isolation ON remediation_approvals
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
           OR (SELECT current_setting('app.platform_admin', true) = 'on'))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
                OR (SELECT current_setting('app.platform_admin', true) = 'on'));

ALTER TABLE approval_policies ENABLE ROW LEVEL SECURITY;
ALTER TABLE approval_policies FORCE ROW LEVEL SECURITY;
CREATE POLICY approval_policies_isolation ON approval_policies
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
           OR (SELECT current_setting('app.platform_admin', true) = 'on'))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
                OR (SELECT current_setting('app.platform_admin', true) = 'on'));

ALTER TABLE remediation_dispatches ENABLE ROW LEVEL SECURITY;
ALTER TABLE remediation_dispatches FORCE ROW LEVEL SECURITY;
CREATE POLICY remediation_dispatches_isolation ON remediation_dispatches
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
           OR (SELECT current_setting('app.platform_admin', true) = 'on'))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
                OR (SELECT current_setting('app.platform_admin', true) = 'on'));

ALTER TABLE verification_runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE verification_runs FORCE ROW LEVEL SECURITY;
CREATE POLICY verification_runs_isolation ON verification_runs
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
           OR (SELECT current_setting('app.platform_admin', true) = 'on'))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
                OR (SELECT current_setting('app.platform_admin', true) = 'on'));

ALTER TABLE dead_letters ENABLE ROW LEVEL SECURITY;
ALTER TABLE dead_letters FORCE ROW LEVEL SECURITY;
CREATE POLICY dead_letters_isolation ON dead_letters
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
           OR (SELECT current_setting('app.platform_admin', true) = 'on'))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
                OR (SELECT current_setting('app.platform_admin', true) = 'on'));
