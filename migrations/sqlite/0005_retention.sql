-- Zen schema v5 (SQLite): see the PostgreSQL twin.
ALTER TABLE tenants ADD COLUMN retention_events_days INTEGER NOT NULL DEFAULT 0
    CHECK (retention_events_days BETWEEN 0 AND 36500);
ALTER TABLE tenants ADD COLUMN retention_receipts_days INTEGER NOT NULL DEFAULT 0
    CHECK (retention_receipts_days BETWEEN 0 AND 36500);
ALTER TABLE tenants ADD COLUMN retention_remediations_days INTEGER NOT NULL DEFAULT 0
    CHECK (retention_remediations_days BETWEEN 0 AND 36500);
ALTER TABLE tenants ADD COLUMN retention_dead_letters_days INTEGER NOT NULL DEFAULT 0
    CHECK (retention_dead_letters_days BETWEEN 0 AND 36500);

CREATE INDEX event_receipts_received_idx ON event_receipts (tenant_id, received_at);
-- a finished remediation is deleted with its children
CREATE INDEX remediation_dispatches_remediation_idx ON remediation_dispatches (tenant_id, remediation_id);
CREATE INDEX dead_letters_remediation_idx ON dead_letters (tenant_id, remediation_id);

CREATE TABLE janitor_leases (
    name        TEXT PRIMARY KEY NOT NULL,
    holder      TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    last_run_at TEXT
);

CREATE TABLE audit_checkpoints (
    tenant_id       TEXT NOT NULL,
    through_seq     INTEGER NOT NULL CHECK (through_seq >= 1),
    head_hash       TEXT NOT NULL,
    cut_before      TEXT NOT NULL,
    segment_sha256  TEXT NOT NULL,
    key_id          TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    PRIMARY KEY (tenant_id, through_seq)
);
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only');
END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only');
END;

-- Audit records may be deleted only below a checkpoint of their chain.
DROP TRIGGER audit_logs_no_delete;
CREATE TRIGGER audit_logs_no_delete BEFORE DELETE ON audit_logs
WHEN OLD.seq > (SELECT COALESCE(MAX(c.through_seq), 0) FROM audit_checkpoints c
                WHERE c.tenant_id = OLD.tenant_id)
BEGIN
    SELECT RAISE(ABORT, 'audit_logs is append-only');
END;
