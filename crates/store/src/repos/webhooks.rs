//! Webhook sources, their sealed secrets and the public route directory.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::{push_name_prefix, SqlTx};
use crate::db::{args, micros, now, Row, Sql};
use crate::error::{Result, StoreError};
use crate::page::{Page, PageRequest, BY_NAME};
use crate::repo::WebhookSourceRepo;
use crate::validate;
use crate::webhook::*;

macro_rules! source_cols {
    () => {
        "id, tenant_id, name, display_name, description, enabled, scheme, spec, cluster_id, \
         last_delivery_at, version, created_at, updated_at, deleted_at"
    };
}

/// Secrets verifying at once per source (each is tried on every delivery).
const MAX_VERIFYING_SECRETS: usize = 5;

/// Serialized `spec` limit: schemas and mappings are configuration, not data.
const MAX_SPEC_BYTES: usize = 256 * 1024;

fn source_from(r: &Row) -> Result<WebhookSource> {
    Ok(WebhookSource {
        id: r.uuid("id")?,
        tenant_id: r.uuid("tenant_id")?,
        name: r.text("name")?,
        display_name: r.text("display_name")?,
        description: r.text("description")?,
        enabled: r.get("enabled")?,
        scheme: r.text("scheme")?,
        spec: r.json("spec")?,
        cluster_id: r.opt_uuid("cluster_id")?,
        last_delivery_at: r.opt_ts("last_delivery_at")?,
        version: r.get("version")?,
        created_at: r.ts("created_at")?,
        updated_at: r.ts("updated_at")?,
        deleted_at: r.opt_ts("deleted_at")?,
        secrets: Vec::new(),
    })
}

fn secret_from(r: &Row) -> Result<SealedWebhookSecret> {
    Ok(SealedWebhookSecret {
        id: r.uuid("id")?,
        sealed: r.text("sealed")?,
        created_at: r.ts("created_at")?,
        expires_at: r.opt_ts("expires_at")?,
    })
}

fn check_spec(spec: &Value) -> Result<Value> {
    match spec {
        Value::Null => Ok(Value::Object(Default::default())),
        Value::Object(_) => {
            let size = serde_json::to_vec(spec).map(|v| v.len()).unwrap_or(0);
            if size > MAX_SPEC_BYTES {
                return Err(StoreError::invalid(
                    "spec",
                    format!("serialized at most {MAX_SPEC_BYTES} bytes"),
                ));
            }
            Ok(spec.clone())
        }
        _ => Err(StoreError::invalid("spec", "must be a JSON object")),
    }
}

fn check_scheme(scheme: &str) -> Result<()> {
    validate::text("scheme", scheme, 64, false)
}

fn check_texts(display_name: Option<&str>, description: Option<&str>) -> Result<()> {
    if let Some(d) = display_name {
        validate::text("display_name", d.trim(), 200, true)?;
    }
    if let Some(d) = description {
        validate::text("description", d, 2000, true)?;
    }
    Ok(())
}

/// `UPDATE webhook_sources SET <assignments> … WHERE` one live source of the
/// scope's tenant, `RETURNING` it. `$1` is the tenant, `$2` the source.
macro_rules! update_live_source {
    ($set:literal, $and:literal) => {
        concat!(
            "UPDATE webhook_sources SET ",
            $set,
            " WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL",
            $and,
            " RETURNING ",
            source_cols!()
        )
    };
}

const SOURCE_VERSION: &str =
    "SELECT version FROM webhook_sources WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL";

const SECRETS_OF: &str = "SELECT id, sealed, created_at, expires_at FROM webhook_secrets \
     WHERE tenant_id = $1 AND source_id = $2 AND (expires_at IS NULL OR expires_at > $3) \
     ORDER BY created_at DESC, id DESC";

impl SqlTx {
    /// The source's unexpired secrets, newest first.
    async fn unexpired_secrets(
        &mut self,
        tenant: Uuid,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Vec<SealedWebhookSecret>> {
        self.all(SECRETS_OF, args![tenant, id, micros(at)], secret_from)
            .await
    }

    async fn with_secrets(&mut self, mut source: WebhookSource) -> Result<WebhookSource> {
        source.secrets = self
            .unexpired_secrets(source.tenant_id, source.id, now())
            .await?
            .into_iter()
            .map(|s| WebhookSecretMeta {
                id: s.id,
                created_at: s.created_at,
                expires_at: s.expires_at,
            })
            .collect();
        Ok(source)
    }

    async fn insert_secret(
        &mut self,
        tenant: Uuid,
        source: Uuid,
        secret: &NewWebhookSecret,
        at: DateTime<Utc>,
    ) -> Result<()> {
        validate::text("secret", &secret.sealed, 4096, false)?;
        self.conn
            .execute(
                "INSERT INTO webhook_secrets (id, tenant_id, source_id, sealed, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
                args![secret.id, tenant, source, secret.sealed.clone(), at],
            )
            .await?;
        Ok(())
    }
}

#[async_trait]
impl WebhookSourceRepo for SqlTx {
    async fn create(
        &mut self,
        new: NewWebhookSource,
        secret: NewWebhookSecret,
    ) -> Result<WebhookSource> {
        let tenant = self.tenant()?;
        validate::dns_label("name", &new.name)?;
        check_texts(Some(&new.display_name), Some(&new.description))?;
        let display_name = validate::display_name(&new.display_name, &new.name)?;
        check_scheme(&new.scheme)?;
        let spec = check_spec(&new.spec)?;
        self.lock_active_tenant(tenant).await?;
        let at = now();
        let source = self
            .one(
                concat!(
                    "INSERT INTO webhook_sources (id, tenant_id, name, display_name, description, \
                     enabled, scheme, spec, cluster_id, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) RETURNING ",
                    source_cols!()
                ),
                args![
                    new.id,
                    tenant,
                    new.name,
                    display_name,
                    new.description,
                    new.enabled,
                    new.scheme,
                    spec,
                    new.cluster_id,
                    at
                ],
                "webhook source",
                source_from,
            )
            .await
            // the composite foreign key: no such cluster in this tenant
            .map_err(|e| e.on_unique("webhook source").on_foreign_key("cluster"))?;
        self.insert_secret(tenant, source.id, &secret, at).await?;
        self.conn
            .execute(
                "INSERT INTO webhook_routes (source_id, tenant_id) VALUES ($1, $2)",
                args![source.id, tenant],
            )
            .await?;
        self.with_secrets(source).await
    }

    async fn get(&mut self, id: Uuid) -> Result<WebhookSource> {
        let tenant = self.tenant()?;
        let source = self
            .one(
                concat!(
                    "SELECT ",
                    source_cols!(),
                    " FROM webhook_sources WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL"
                ),
                args![tenant, id],
                "webhook source",
                source_from,
            )
            .await?;
        self.with_secrets(source).await
    }

    async fn list(
        &mut self,
        filter: &WebhookSourceFilter,
        page: &PageRequest,
    ) -> Result<Page<WebhookSource>> {
        let tenant = self.tenant()?;
        let mut sql = Sql::new(concat!(
            "SELECT ",
            source_cols!(),
            " FROM webhook_sources WHERE tenant_id = "
        ));
        sql.bind(tenant).push(" AND deleted_at IS NULL");
        if let Some(scheme) = filter.scheme.as_deref().filter(|s| !s.is_empty()) {
            sql.push(" AND scheme = ").bind(scheme.to_owned());
        }
        push_name_prefix(&mut sql, "name", filter.name_prefix.as_deref())?;
        let page = self
            .text_page(sql, page, BY_NAME, source_from, |s| (s.name.clone(), s.id))
            .await?;
        let mut items = Vec::with_capacity(page.items.len());
        for source in page.items {
            items.push(self.with_secrets(source).await?);
        }
        Ok(Page {
            items,
            next_page_token: page.next_page_token,
        })
    }

    async fn update(
        &mut self,
        id: Uuid,
        expected_version: Option<i64>,
        update: WebhookSourceUpdate,
    ) -> Result<WebhookSource> {
        let tenant = self.tenant()?;
        check_texts(
            update.display_name.as_deref(),
            update.description.as_deref(),
        )?;
        if let Some(s) = &update.scheme {
            check_scheme(s)?;
        }
        let spec = update.spec.as_ref().map(check_spec).transpose()?;
        let (set_cluster, cluster) = match update.cluster_id {
            Some(c) => (true, c),
            None => (false, None),
        };
        self.lock_active_tenant(tenant).await?;
        let row = self
            .conn
            .fetch_optional(
                update_live_source!(
                    "display_name = COALESCE($3, display_name), \
                     description = COALESCE($4, description), \
                     enabled = CASE WHEN $5 THEN $6 ELSE enabled END, \
                     scheme = COALESCE($7, scheme), spec = COALESCE($8, spec), \
                     cluster_id = CASE WHEN $9 THEN $10 ELSE cluster_id END, \
                     updated_at = $11, version = version + 1",
                    " AND ($12 IS NULL OR version = $12)"
                ),
                args![
                    tenant,
                    id,
                    update.display_name.map(|d| d.trim().to_owned()),
                    update.description,
                    update.enabled.is_some(),
                    update.enabled.unwrap_or_default(),
                    update.scheme,
                    spec,
                    set_cluster,
                    cluster,
                    now(),
                    expected_version
                ],
            )
            .await
            .map_err(|e| e.on_foreign_key("cluster"))?;
        match row {
            Some(row) => {
                let source = source_from(&row)?;
                self.with_secrets(source).await
            }
            None => {
                self.explain_miss(
                    SOURCE_VERSION,
                    args![tenant, id],
                    "webhook source",
                    expected_version,
                )
                .await
            }
        }
    }

    async fn soft_delete(
        &mut self,
        id: Uuid,
        expected_version: Option<i64>,
    ) -> Result<WebhookSource> {
        let tenant = self.tenant()?;
        let at = now();
        let row = self
            .conn
            .fetch_optional(
                update_live_source!(
                    "enabled = false, deleted_at = $3, updated_at = $3, version = version + 1",
                    " AND ($4 IS NULL OR version = $4)"
                ),
                args![tenant, id, at, expected_version],
            )
            .await?;
        let Some(row) = row else {
            return self
                .explain_miss(
                    SOURCE_VERSION,
                    args![tenant, id],
                    "webhook source",
                    expected_version,
                )
                .await;
        };
        // Secrets of a deleted source stop verifying at once.
        self.conn
            .execute(
                "UPDATE webhook_secrets SET expires_at = $3 WHERE tenant_id = $1 \
                 AND source_id = $2 AND (expires_at IS NULL OR expires_at > $3)",
                args![tenant, id, at],
            )
            .await?;
        source_from(&row)
    }

    async fn rotate_secret(
        &mut self,
        id: Uuid,
        expected_version: Option<i64>,
        secret: NewWebhookSecret,
        old_expires_at: DateTime<Utc>,
    ) -> Result<WebhookSource> {
        let tenant = self.tenant()?;
        self.lock_active_tenant(tenant).await?;
        let at = now();
        let row = self
            .conn
            .fetch_optional(
                update_live_source!(
                    "updated_at = $3, version = version + 1",
                    " AND ($4 IS NULL OR version = $4)"
                ),
                args![tenant, id, at, expected_version],
            )
            .await?;
        let Some(row) = row else {
            return self
                .explain_miss(
                    SOURCE_VERSION,
                    args![tenant, id],
                    "webhook source",
                    expected_version,
                )
                .await;
        };
        // Expired secrets are of no use to anyone: drop them.
        self.conn
            .execute(
                "DELETE FROM webhook_secrets WHERE tenant_id = $1 AND source_id = $2 \
                 AND expires_at IS NOT NULL AND expires_at <= $3",
                args![tenant, id, at],
            )
            .await?;
        let verifying = self.unexpired_secrets(tenant, id, at).await?.len();
        if verifying >= MAX_VERIFYING_SECRETS && old_expires_at > at {
            return Err(StoreError::precondition(
                crate::precondition::INVALID_STATE,
                format!(
                    "{verifying} secrets still verify for this source (at most \
                     {MAX_VERIFYING_SECRETS}): wait for one to expire, or rotate with a zero \
                     overlap"
                ),
            ));
        }
        // Earlier secrets verify until `old_expires_at` at the latest: a
        // rotation shortens an overlap, never lengthens it.
        let until = micros(old_expires_at.max(at));
        self.conn
            .execute(
                "UPDATE webhook_secrets SET expires_at = $3 WHERE tenant_id = $1 \
                 AND source_id = $2 AND (expires_at IS NULL OR expires_at > $3)",
                args![tenant, id, until],
            )
            .await?;
        self.insert_secret(tenant, id, &secret, at).await?;
        let source = source_from(&row)?;
        self.with_secrets(source).await
    }

    async fn secrets(&mut self, id: Uuid, at: DateTime<Utc>) -> Result<Vec<SealedWebhookSecret>> {
        let tenant = self.tenant()?;
        self.unexpired_secrets(tenant, id, at).await
    }

    async fn record_delivery(&mut self, id: Uuid, at: DateTime<Utc>) -> Result<()> {
        let tenant = self.tenant()?;
        // At most one write per source and second: under load every delivery
        // would otherwise queue on this one row's lock.
        let stale = at - chrono::Duration::seconds(1);
        self.conn
            .execute(
                "UPDATE webhook_sources SET last_delivery_at = $3 WHERE tenant_id = $1 \
                 AND id = $2 AND (last_delivery_at IS NULL OR last_delivery_at < $4)",
                args![tenant, id, micros(at), micros(stale)],
            )
            .await?;
        Ok(())
    }

    async fn route(&mut self, source_id: Uuid) -> Result<Option<Uuid>> {
        let row = self
            .conn
            .fetch_optional(
                "SELECT tenant_id FROM webhook_routes WHERE source_id = $1",
                args![source_id],
            )
            .await?;
        row.map(|r| r.uuid("tenant_id")).transpose()
    }
}
