-- Zen schema v4 (SQLite): see the PostgreSQL twin.
ALTER TABLE remediations ADD COLUMN revised_by TEXT NOT NULL DEFAULT '';
