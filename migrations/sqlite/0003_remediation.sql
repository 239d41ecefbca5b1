-- Zen schema v3 (SQLite): the remediation workflow; see the PostgreSQL twin
-- and docs/REMEDIATION.md. SQLite cannot drop a NOT NULL, so `remediations`
-- is rebuilt (rows of 0001 are copied; nothing referenced it yet).

CREATE TABLE remediations_v3 (
    id                         TEXT PRIMARY KEY NOT NULL,
    tenant_id                  TEXT NOT NULL REFERENCES tenants (id),
    cluster_id                 TEXT NOT NULL,
    event_id                   TEXT,
    status                     TEXT NOT NULL CHECK (status IN (
        'proposed', 'pending_approval', 'approved', 'dispatched', 'executing', 'verifying',
        'succeeded', 'failed', 'rolling_back', 'rolled_back', 'rejected', 'cancelled', 'expired')),
    version                    INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at                 TEXT NOT NULL,
    title                      TEXT NOT NULL DEFAULT '',
    description                TEXT NOT NULL DEFAULT '',
    action                     TEXT NOT NULL DEFAULT '{}',
    rollback_action            TEXT,
    probes                     TEXT NOT NULL DEFAULT '[]',
    risk                       TEXT NOT NULL DEFAULT 'medium'
                               CHECK (risk IN ('low', 'medium', 'high', 'critical')),
    status_reason              TEXT NOT NULL DEFAULT '',
    revision                   INTEGER NOT NULL DEFAULT 1 CHECK (revision >= 1),
    required_approvals         INTEGER NOT NULL DEFAULT 0 CHECK (required_approvals >= 0),
    break_glass                INTEGER NOT NULL DEFAULT 0,
    break_glass_justification  TEXT NOT NULL DEFAULT '',
    proposed_by                TEXT NOT NULL DEFAULT '',
    updated_at                 TEXT,
    expires_at                 TEXT,
    dispatched_at              TEXT,
    completed_at               TEXT,
    last_error                 TEXT NOT NULL DEFAULT '',
    execution_id               TEXT,
    attempts                   INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    executed                   INTEGER NOT NULL DEFAULT 0,
    -- latest place in the tenant's change sequence (see the PostgreSQL twin)
    seq                        INTEGER CHECK (seq >= 1),
    CONSTRAINT remediations_tenant_id_uq UNIQUE (tenant_id, id),
    CONSTRAINT remediations_event_fk FOREIGN KEY (tenant_id, event_id)
        REFERENCES events (tenant_id, id),
    CONSTRAINT remediations_cluster_fk FOREIGN KEY (tenant_id, cluster_id)
        REFERENCES clusters (tenant_id, id)
);
INSERT INTO remediations_v3 (id, tenant_id, cluster_id, event_id, status, version, created_at)
    SELECT id, tenant_id, cluster_id, event_id, status, version, created_at FROM remediations;
DROP TABLE remediations;
ALTER TABLE remediations_v3 RENAME TO remediations;
CREATE INDEX remediations_status_idx ON remediations (tenant_id, status);
CREATE INDEX remediations_created_idx ON remediations (tenant_id, created_at DESC);
CREATE INDEX remediations_event_idx ON remediations (tenant_id, event_id);
CREATE INDEX remediations_list_idx ON remediations (tenant_id, created_at DESC, id DESC);
CREATE INDEX remediations_expiry_idx ON remediations (expires_at)
    WHERE status IN ('proposed', 'pending_approval');
CREATE UNIQUE INDEX remediations_seq_idx ON remediations (tenant_id, seq) WHERE seq IS NOT NULL;

CREATE TABLE remediation_approvals (
    tenant_id            TEXT NOT NULL,
    remediation_id       TEXT NOT NULL,
    revision             INTEGER NOT NULL,
    approver_id          TEXT NOT NULL,
    approver_role        TEXT NOT NULL CHECK (approver_role IN ('owner', 'admin', 'approver', 'viewer')),
    comment              TEXT NOT NULL DEFAULT '',
    remediation_version  INTEGER NOT NULL,
    created_at           TEXT NOT NULL,
    PRIMARY KEY (tenant_id, remediation_id, revision, approver_id),
    CONSTRAINT remediation_approvals_remediation_fk FOREIGN KEY (tenant_id, remediation_id)
        REFERENCES remediations (tenant_id, id)
);

CREATE TABLE approval_policies (
    tenant_id                 TEXT PRIMARY KEY NOT NULL REFERENCES tenants (id),
    required_low              INTEGER NOT NULL CHECK (required_low BETWEEN 0 AND 10),
    required_medium           INTEGER NOT NULL CHECK (required_medium BETWEEN 0 AND 10),
    required_high             INTEGER NOT NULL CHECK (required_high BETWEEN 0 AND 10),
    required_critical         INTEGER NOT NULL CHECK (required_critical BETWEEN 0 AND 10),
    min_approver_role         TEXT NOT NULL CHECK (min_approver_role IN ('owner', 'admin', 'approver')),
    allow_self_approval       INTEGER NOT NULL,
    approval_windows          TEXT NOT NULL DEFAULT '[]',
    pending_expiry_seconds    INTEGER NOT NULL CHECK (pending_expiry_seconds > 0),
    auto_rollback_on_failure  INTEGER NOT NULL,
    max_dispatch_attempts     INTEGER NOT NULL CHECK (max_dispatch_attempts BETWEEN 1 AND 20),
    version                   INTEGER NOT NULL CHECK (version >= 1),
    updated_at                TEXT NOT NULL,
    updated_by                TEXT NOT NULL DEFAULT ''
);

CREATE TABLE remediation_dispatches (
    execution_id         TEXT NOT NULL,
    tenant_id            TEXT NOT NULL,
    cluster_id           TEXT NOT NULL,
    remediation_id       TEXT NOT NULL,
    remediation_version  INTEGER NOT NULL,
    operation            TEXT NOT NULL CHECK (operation IN ('apply', 'rollback')),
    state                TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'acked', 'done', 'dead')),
    attempts             INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts         INTEGER NOT NULL CHECK (max_attempts >= 1),
    next_attempt_at      TEXT NOT NULL,
    last_error           TEXT NOT NULL DEFAULT '',
    last_phase           TEXT NOT NULL DEFAULT '',
    created_at           TEXT NOT NULL,
    updated_at           TEXT NOT NULL,
    PRIMARY KEY (tenant_id, execution_id),
    CONSTRAINT remediation_dispatches_remediation_fk FOREIGN KEY (tenant_id, remediation_id)
        REFERENCES remediations (tenant_id, id),
    CONSTRAINT remediation_dispatches_cluster_fk FOREIGN KEY (tenant_id, cluster_id)
        REFERENCES clusters (tenant_id, id)
);
CREATE INDEX remediation_dispatches_due_idx ON remediation_dispatches
    (tenant_id, cluster_id, next_attempt_at) WHERE state IN ('pending', 'sent', 'acked');

CREATE TABLE verification_runs (
    id                   TEXT NOT NULL,
    tenant_id            TEXT NOT NULL,
    remediation_id       TEXT NOT NULL,
    remediation_version  INTEGER NOT NULL,
    execution_id         TEXT NOT NULL,
    result               TEXT NOT NULL CHECK (result IN ('success', 'failure')),
    probes               TEXT NOT NULL DEFAULT '[]',
    started_at           TEXT,
    ended_at             TEXT,
    created_at           TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT verification_runs_execution_uq UNIQUE (tenant_id, execution_id),
    CONSTRAINT verification_runs_remediation_fk FOREIGN KEY (tenant_id, remediation_id)
        REFERENCES remediations (tenant_id, id)
);
CREATE INDEX verification_runs_remediation_idx ON verification_runs
    (tenant_id, remediation_id, created_at DESC, id DESC);

CREATE TABLE dead_letters (
    id              TEXT NOT NULL,
    tenant_id       TEXT NOT NULL,
    remediation_id  TEXT NOT NULL,
    cluster_id      TEXT NOT NULL,
    execution_id    TEXT NOT NULL,
    operation       TEXT NOT NULL CHECK (operation IN ('apply', 'rollback')),
    attempts        INTEGER NOT NULL,
    last_error      TEXT NOT NULL DEFAULT '',
    created_at      TEXT NOT NULL,
    replayed_at     TEXT,
    replayed_by     TEXT,
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT dead_letters_remediation_fk FOREIGN KEY (tenant_id, remediation_id)
        REFERENCES remediations (tenant_id, id),
    CONSTRAINT dead_letters_cluster_fk FOREIGN KEY (tenant_id, cluster_id)
        REFERENCES clusters (tenant_id, id)
);
CREATE INDEX dead_letters_created_idx ON dead_letters (tenant_id, created_at DESC, id DESC);
