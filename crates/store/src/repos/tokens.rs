use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::SqlTx;
use crate::db::{args, micros, now, Row};
use crate::error::{Result, StoreError};
use crate::model::*;
use crate::repo::BootstrapTokenRepo;
use crate::{hash_token, validate};

macro_rules! token_cols {
    () => {
        "id, tenant_id, cluster_id, expires_at, used_at, created_by, created_at"
    };
}

fn token_from(r: &Row) -> Result<BootstrapToken> {
    Ok(BootstrapToken {
        id: r.uuid("id")?,
        tenant_id: r.uuid("tenant_id")?,
        cluster_id: r.uuid("cluster_id")?,
        expires_at: r.ts("expires_at")?,
        used_at: r.opt_ts("used_at")?,
        created_by: r.opt_uuid("created_by")?,
        created_at: r.ts("created_at")?,
    })
}

#[async_trait]
impl BootstrapTokenRepo for SqlTx {
    async fn create(&mut self, new: NewBootstrapToken, token: &str) -> Result<BootstrapToken> {
        let tenant = self.tenant()?;
        validate::token(token)?;
        let at = now();
        if new.expires_at <= at {
            return Err(StoreError::invalid("expires_at", "must be in the future"));
        }
        // Only for a live cluster of this tenant (the composite foreign key
        // guarantees the tenant; this adds "not deleted").
        self.one(
            "SELECT id FROM clusters WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL",
            args![tenant, new.cluster_id],
            "cluster",
            |r| r.uuid("id"),
        )
        .await?;
        self.one(
            concat!(
                "INSERT INTO bootstrap_tokens (id, tenant_id, cluster_id, token_hash, expires_at, \
                 created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING ",
                token_cols!()
            ),
            args![
                Uuid::now_v7(),
                tenant,
                new.cluster_id,
                hash_token(token),
                micros(new.expires_at),
                new.created_by,
                at
            ],
            "bootstrap token",
            token_from,
        )
        .await
        .map_err(|e| e.on_unique("bootstrap token").on_foreign_key("cluster"))
    }

    async fn consume(&mut self, token: &str, now: DateTime<Utc>) -> Result<BootstrapToken> {
        let tenant = self.tenant()?;
        let hash = hash_token(token);
        let now = micros(now);
        // One conditional UPDATE: of two concurrent consumers, the second
        // re-checks `used_at IS NULL` after the first commits and matches
        // nothing.
        let used = self
            .conn
            .fetch_optional(
                concat!(
                    "UPDATE bootstrap_tokens SET used_at = $3 \
                     WHERE tenant_id = $1 AND token_hash = $2 AND used_at IS NULL \
                     AND expires_at > $3 \
                     AND EXISTS (SELECT 1 FROM clusters c WHERE c.tenant_id = bootstrap_tokens.tenant_id \
                                 AND c.id = bootstrap_tokens.cluster_id AND c.deleted_at IS NULL) \
                     RETURNING ",
                    token_cols!()
                ),
                args![tenant, hash.as_str(), now],
            )
            .await?;
        if let Some(row) = used {
            return token_from(&row);
        }
        let found = self
            .one(
                concat!(
                    "SELECT ",
                    token_cols!(),
                    " FROM bootstrap_tokens WHERE tenant_id = $1 AND token_hash = $2"
                ),
                args![tenant, hash],
                "bootstrap token",
                token_from,
            )
            .await?;
        Err(StoreError::precondition(if found.used_at.is_some() {
            "bootstrap token already used"
        } else if found.expires_at <= now {
            "bootstrap token expired"
        } else {
            "cluster is deleted"
        }))
    }

    async fn list_for_cluster(&mut self, cluster_id: Uuid) -> Result<Vec<BootstrapToken>> {
        let tenant = self.tenant()?;
        self.all(
            concat!(
                "SELECT ",
                token_cols!(),
                " FROM bootstrap_tokens WHERE tenant_id = $1 AND cluster_id = $2 \
                 ORDER BY created_at DESC, id DESC"
            ),
            args![tenant, cluster_id],
            token_from,
        )
        .await
    }
}
