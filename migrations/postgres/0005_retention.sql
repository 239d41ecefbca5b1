-- Zen schema v5: data retention (docs/RETENTION.md).
--
-- Per-tenant retention windows (days; 0 = the platform default), the indexes the janitor
-- deletes by, the janitor's lease, and audit checkpoints: the audit log is pruned only up to a
-- checkpoint that records the exported segment's head hash, so the remaining chain verifies
-- from the cut and no record leaves without a trace.

ALTER TABLE tenants
    ADD COLUMN retention_events_days        integer NOT NULL DEFAULT 0
        CHECK (retention_events_days BETWEEN 0 AND 36500),
    ADD COLUMN retention_receipts_days      integer NOT NULL DEFAULT 0
        CHECK (retention_receipts_days BETWEEN 0 AND 36500),
    ADD COLUMN retention_remediations_days  integer NOT NULL DEFAULT 0
        CHECK (retention_remediations_days BETWEEN 0 AND 36500),
    ADD COLUMN retention_dead_letters_days  integer NOT NULL DEFAULT 0
        CHECK (retention_dead_letters_days BETWEEN 0 AND 36500);

-- receipts expire by age, oldest first
CREATE INDEX event_receipts_received_idx ON event_receipts (tenant_id, received_at);
-- a finished remediation is deleted with its children
CREATE INDEX remediation_dispatches_remediation_idx ON remediation_dispatches (tenant_id, remediation_id);
CREATE INDEX dead_letters_remediation_idx ON dead_letters (tenant_id, remediation_id);
-- the events list index (tenant_id, received_at DESC, id DESC) serves the events' sweep

-- One row per background job that must run on one replica at a time.
CREATE TABLE janitor_leases (
    name        text PRIMARY KEY,
    holder      text NOT NULL,
    expires_at  timestamptz NOT NULL,
    last_run_at timestamptz
);
GRANT SELECT, INSERT, UPDATE ON janitor_leases TO zen_app;

-- The audit log's cuts: records of `tenant_id` with seq <= through_seq were exported (signed
-- segment, `segment_sha256`) and may be deleted; `head_hash` is the hash of record
-- `through_seq`, the `prev_hash` the first remaining record must carry.
CREATE TABLE audit_checkpoints (
    tenant_id       uuid NOT NULL,
    through_seq     bigint NOT NULL CHECK (through_seq >= 1),
    head_hash       text NOT NULL,
    cut_before      timestamptz NOT NULL,
    segment_sha256  text NOT NULL,
    key_id          text NOT NULL,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, through_seq)
);
GRANT SELECT, INSERT ON audit_checkpoints TO zen_app;
ALTER TABLE audit_checkpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_checkpoints FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_checkpoints_isolation ON audit_checkpoints
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
           OR (SELECT current_setting('app.platform_admin', true) = 'on'))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
                OR (SELECT current_setting('app.platform_admin', true) = 'on'));

-- The application may delete audit records only below a checkpoint of their chain; UPDATE
-- stays forbidden.
GRANT DELETE ON audit_logs TO zen_app;
CREATE POLICY audit_logs_prune ON audit_logs FOR DELETE
    USING ((tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
            OR (SELECT current_setting('app.platform_admin', true) = 'on'))
           AND seq <= (SELECT COALESCE(MAX(c.through_seq), 0) FROM audit_checkpoints c
                       WHERE c.tenant_id = audit_logs.tenant_id));
