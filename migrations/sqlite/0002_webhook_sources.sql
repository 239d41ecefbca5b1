-- Webhook sources for SQLite: the same tables as
-- migrations/postgres/0002_webhook_sources.sql (types as in 0001).

CREATE TABLE webhook_sources (
    id                TEXT PRIMARY KEY NOT NULL,
    tenant_id         TEXT NOT NULL REFERENCES tenants (id),
    name              TEXT NOT NULL,
    display_name      TEXT NOT NULL,
    description       TEXT NOT NULL DEFAULT '',
    enabled           INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    scheme            TEXT NOT NULL,
    spec              TEXT NOT NULL DEFAULT '{}',
    cluster_id        TEXT,
    last_delivery_at  TEXT,
    version           INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    deleted_at        TEXT,
    CONSTRAINT webhook_sources_tenant_id_uq UNIQUE (tenant_id, id),
    CONSTRAINT webhook_sources_cluster_fk FOREIGN KEY (tenant_id, cluster_id)
        REFERENCES clusters (tenant_id, id)
);
CREATE UNIQUE INDEX webhook_sources_name_live_uq ON webhook_sources (tenant_id, name)
    WHERE deleted_at IS NULL;

CREATE TABLE webhook_secrets (
    id          TEXT PRIMARY KEY NOT NULL,
    tenant_id   TEXT NOT NULL,
    source_id   TEXT NOT NULL,
    sealed      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT,
    CONSTRAINT webhook_secrets_source_fk FOREIGN KEY (tenant_id, source_id)
        REFERENCES webhook_sources (tenant_id, id)
);
CREATE INDEX webhook_secrets_source_idx ON webhook_secrets (tenant_id, source_id, created_at DESC);

CREATE TABLE webhook_routes (
    source_id   TEXT PRIMARY KEY NOT NULL,
    tenant_id   TEXT NOT NULL,
    CONSTRAINT webhook_routes_source_fk FOREIGN KEY (tenant_id, source_id)
        REFERENCES webhook_sources (tenant_id, id)
);
