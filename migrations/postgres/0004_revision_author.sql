-- Zen schema v4: who authored a remediation's current revision. Approval policies treat the
-- revision's author like its proposer (no self-approval), so revising an action and then
-- approving it alone is refused. Empty means "not revised" (the proposer authored it).
ALTER TABLE remediations ADD COLUMN revised_by text NOT NULL DEFAULT '';
