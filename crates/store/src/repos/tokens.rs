//! The one-use secrets: tenant invites and cluster bootstrap tokens. Both
//! store only `sha256(token)`, expire, and are redeemed by one conditional
//! UPDATE, so two concurrent redeemers cannot both succeed.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::SqlTx;
use crate::db::{args, micros, now, Row};
use crate::error::{precondition, Result, StoreError};
use crate::model::*;
use crate::repo::{BootstrapTokenRepo, InviteRepo};
use crate::{hash_token, validate};

/// Checks shared by both kinds of secret at issue time; returns "now".
fn check_issue(token: &str, expires_at: DateTime<Utc>) -> Result<DateTime<Utc>> {
    validate::token(token)?;
    let at = now();
    if expires_at <= at {
        return Err(StoreError::invalid("expires_at", "must be in the future"));
    }
    Ok(at)
}

// ------------------------------------------------------------------ invites

macro_rules! invite_cols {
    () => {
        "id, tenant_id, email, role, expires_at, accepted_at, accepted_by, created_by, created_at"
    };
}

fn invite_from(r: &Row) -> Result<Invite> {
    Ok(Invite {
        id: r.uuid("id")?,
        tenant_id: r.uuid("tenant_id")?,
        email: r.text("email")?,
        role: r.parse("role")?,
        expires_at: r.ts("expires_at")?,
        accepted_at: r.opt_ts("accepted_at")?,
        accepted_by: r.opt_uuid("accepted_by")?,
        created_by: r.opt_uuid("created_by")?,
        created_at: r.ts("created_at")?,
    })
}

#[async_trait]
impl InviteRepo for SqlTx {
    async fn create(&mut self, new: NewInvite, token: &str) -> Result<Invite> {
        let tenant = self.tenant()?;
        validate::email(&new.email)?;
        let at = check_issue(token, new.expires_at)?;
        self.lock_active_tenant(tenant).await?;
        self.one(
            concat!(
                "INSERT INTO invites (id, tenant_id, email, role, token_hash, expires_at, \
                 created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ",
                invite_cols!()
            ),
            args![
                Uuid::now_v7(),
                tenant,
                new.email,
                new.role.as_str(),
                hash_token(token),
                micros(new.expires_at),
                new.created_by,
                at
            ],
            "invite",
            invite_from,
        )
        .await
        .map_err(|e| e.on_unique("invite").on_foreign_key("tenant"))
    }

    async fn list_pending(&mut self) -> Result<Vec<Invite>> {
        let tenant = self.tenant()?;
        self.all(
            concat!(
                "SELECT ",
                invite_cols!(),
                " FROM invites WHERE tenant_id = $1 AND accepted_at IS NULL \
                 ORDER BY created_at DESC, id DESC"
            ),
            args![tenant],
            invite_from,
        )
        .await
    }

    async fn get(&mut self, id: Uuid) -> Result<Invite> {
        let tenant = self.tenant()?;
        self.one(
            concat!(
                "SELECT ",
                invite_cols!(),
                " FROM invites WHERE tenant_id = $1 AND id = $2"
            ),
            args![tenant, id],
            "invite",
            invite_from,
        )
        .await
    }

    async fn accept(
        &mut self,
        invite_id: Uuid,
        token: &str,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Member> {
        let tenant = self.tenant()?;
        let hash = hash_token(token);
        let now = micros(now);
        // One statement decides: concurrent accepts of the same invite
        // serialize on the row and the loser matches nothing. The id and
        // the token hash are both in the WHERE: a token of another invite
        // opens nothing.
        let accepted = self
            .conn
            .fetch_optional(
                concat!(
                    "UPDATE invites SET accepted_at = $4, accepted_by = $5 \
                     WHERE tenant_id = $1 AND id = $2 AND token_hash = $3 \
                     AND accepted_at IS NULL AND expires_at > $4 \
                     AND EXISTS (SELECT 1 FROM tenants t WHERE t.id = invites.tenant_id \
                                 AND t.deleted_at IS NULL) \
                     RETURNING ",
                    invite_cols!()
                ),
                args![tenant, invite_id, hash.as_str(), now, user_id],
            )
            .await?;
        let invite = match accepted {
            Some(row) => invite_from(&row)?,
            None => {
                // Why not? Only the holder of the right token learns more
                // than "not found".
                let invite = self
                    .one(
                        concat!(
                            "SELECT ",
                            invite_cols!(),
                            " FROM invites WHERE tenant_id = $1 AND id = $2 AND token_hash = $3"
                        ),
                        args![tenant, invite_id, hash],
                        "invite",
                        invite_from,
                    )
                    .await?;
                return Err(if invite.accepted_at.is_some() {
                    StoreError::precondition(
                        precondition::INVITE_NOT_PENDING,
                        "the invite was already accepted",
                    )
                } else if invite.expires_at <= now {
                    StoreError::precondition(
                        precondition::INVITE_NOT_PENDING,
                        "the invite has expired",
                    )
                } else {
                    StoreError::NotFound { what: "tenant" }
                });
            }
        };
        self.insert_member(user_id, invite.role, invite.created_by)
            .await
    }
}

// ------------------------------------------------------------------ bootstrap tokens

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
        let at = check_issue(token, new.expires_at)?;
        self.lock_active_tenant(tenant).await?;
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
        // The tenant row lock orders enrolment against a concurrent
        // suspension. A missing (or deleted) tenant is not an answer yet:
        // the token lookup below decides what the caller learns.
        let active = match self.lock_tenant(tenant).await {
            Ok((status, _)) => status == TenantStatus::Active,
            Err(StoreError::NotFound { .. }) => false,
            Err(e) => return Err(e),
        };
        // One conditional UPDATE: of two concurrent consumers, the second
        // re-checks `used_at IS NULL` after the first commits and matches
        // nothing. `tenant_id = $1`: a token presented under another
        // tenant's scope is never found.
        let used = self
            .conn
            .fetch_optional(
                concat!(
                    "UPDATE bootstrap_tokens SET used_at = $3 \
                     WHERE tenant_id = $1 AND token_hash = $2 AND used_at IS NULL \
                     AND expires_at > $3 AND $4 \
                     AND EXISTS (SELECT 1 FROM clusters c WHERE c.tenant_id = bootstrap_tokens.tenant_id \
                                 AND c.id = bootstrap_tokens.cluster_id AND c.deleted_at IS NULL) \
                     RETURNING ",
                    token_cols!()
                ),
                args![tenant, hash.as_str(), now, active],
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
                    ", EXISTS (SELECT 1 FROM clusters c WHERE c.tenant_id = bootstrap_tokens.tenant_id \
                     AND c.id = bootstrap_tokens.cluster_id AND c.deleted_at IS NULL) AS cluster_live \
                     FROM bootstrap_tokens WHERE tenant_id = $1 AND token_hash = $2"
                ),
                args![tenant, hash],
                "bootstrap token",
                |r| Ok((token_from(r)?, r.get::<bool>("cluster_live")?)),
            )
            .await?;
        let invalid = |reason| {
            Err(StoreError::precondition(
                precondition::BOOTSTRAP_TOKEN_INVALID,
                reason,
            ))
        };
        match found {
            (t, _) if t.used_at.is_some() => invalid("the bootstrap token was already used"),
            (t, _) if t.expires_at <= now => invalid("the bootstrap token has expired"),
            // A deleted tenant's clusters are deleted with it.
            (_, false) => invalid("the cluster of the bootstrap token is deleted"),
            _ => Err(StoreError::precondition(
                precondition::TENANT_SUSPENDED,
                "the tenant is suspended",
            )),
        }
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
