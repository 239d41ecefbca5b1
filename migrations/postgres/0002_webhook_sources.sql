-- Webhook sources (see docs/WEBHOOKS.md): per-tenant endpoints registered at
-- run time, their secrets (sealed with the platform's webhook secret key,
-- never stored in the clear), and the directory that tells the public
-- webhook endpoint which tenant owns a source id.

CREATE TABLE webhook_sources (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL REFERENCES tenants (id),
    name              text NOT NULL,
    display_name      text NOT NULL,
    description       text NOT NULL DEFAULT '',
    enabled           boolean NOT NULL DEFAULT true,
    scheme            text NOT NULL,
    -- verification settings, tolerance, JSON Schema, mapping, dedup window
    -- and rate limit, as the service encodes them (docs/WEBHOOKS.md)
    spec              jsonb NOT NULL DEFAULT '{}',
    cluster_id        uuid,
    last_delivery_at  timestamptz,
    version           bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    deleted_at        timestamptz,
    CONSTRAINT webhook_sources_tenant_id_uq UNIQUE (tenant_id, id),
    -- a source's events are attributed to a cluster of its own tenant only
    CONSTRAINT webhook_sources_cluster_fk FOREIGN KEY (tenant_id, cluster_id)
        REFERENCES clusters (tenant_id, id)
);
CREATE UNIQUE INDEX webhook_sources_name_live_uq ON webhook_sources (tenant_id, name)
    WHERE deleted_at IS NULL;

CREATE TABLE webhook_secrets (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    source_id   uuid NOT NULL,
    -- `v1.<key id>.<nonce and ciphertext>`, bound to tenant/source/secret id
    sealed      text NOT NULL,
    created_at  timestamptz NOT NULL,
    -- NULL for the current secret; set when a rotation retires it
    expires_at  timestamptz,
    CONSTRAINT webhook_secrets_source_fk FOREIGN KEY (tenant_id, source_id)
        REFERENCES webhook_sources (tenant_id, id)
);
CREATE INDEX webhook_secrets_source_idx ON webhook_secrets (tenant_id, source_id, created_at DESC);

-- The public endpoint knows only the source id and must learn its tenant
-- before it can open a tenant-scoped transaction. This directory holds that
-- one fact and nothing else: it is readable without a tenant scope, while a
-- route can only be written by its own tenant, for one of its own sources.
CREATE TABLE webhook_routes (
    source_id   uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    CONSTRAINT webhook_routes_source_fk FOREIGN KEY (tenant_id, source_id)
        REFERENCES webhook_sources (tenant_id, id)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_sources, webhook_secrets TO zen_app;
GRANT SELECT, INSERT ON webhook_routes TO zen_app;

ALTER TABLE webhook_routes ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_routes FORCE ROW LEVEL SECURITY;
CREATE POLICY webhook_routes_lookup ON webhook_routes FOR SELECT USING (true);
CREATE POLICY webhook_routes_insert ON webhook_routes FOR INSERT
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid));

ALTER TABLE webhook_sources ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_sources FORCE ROW LEVEL SECURITY;
CREATE POLICY webhook_sources_isolation ON webhook_sources
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
           OR (SELECT current_setting('app.platform_admin', true) = 'on'))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
                OR (SELECT current_setting('app.platform_admin', true) = 'on'));

ALTER TABLE webhook_secrets ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_secrets FORCE ROW LEVEL SECURITY;
CREATE POLICY webhook_secrets_isolation ON webhook_secrets
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
           OR (SELECT current_setting('app.platform_admin', true) = 'on'))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
                OR (SELECT current_setting('app.platform_admin', true) = 'on'));
