use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::SqlTx;
use crate::db::{args, micros, now, Row};
use crate::error::{Result, StoreError};
use crate::model::*;
use crate::repo::InviteRepo;
use crate::{hash_token, validate};

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
        validate::token(token)?;
        let at = now();
        if new.expires_at <= at {
            return Err(StoreError::invalid("expires_at", "must be in the future"));
        }
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

    async fn accept(&mut self, token: &str, user_id: Uuid, now: DateTime<Utc>) -> Result<Member> {
        let tenant = self.tenant()?;
        let hash = hash_token(token);
        // One statement decides: concurrent accepts of the same invite
        // serialize on the row and the loser matches nothing.
        let accepted = self
            .conn
            .fetch_optional(
                concat!(
                    "UPDATE invites SET accepted_at = $3, accepted_by = $4 \
                     WHERE tenant_id = $1 AND token_hash = $2 AND accepted_at IS NULL \
                     AND expires_at > $3 RETURNING ",
                    invite_cols!()
                ),
                args![tenant, hash.as_str(), micros(now), user_id],
            )
            .await?;
        let invite = match accepted {
            Some(row) => invite_from(&row)?,
            None => {
                let invite = self
                    .one(
                        concat!(
                            "SELECT ",
                            invite_cols!(),
                            " FROM invites WHERE tenant_id = $1 AND token_hash = $2"
                        ),
                        args![tenant, hash],
                        "invite",
                        invite_from,
                    )
                    .await?;
                return Err(StoreError::precondition(if invite.accepted_at.is_some() {
                    "invite already accepted"
                } else {
                    "invite expired"
                }));
            }
        };
        self.insert_member(user_id, invite.role, invite.created_by)
            .await
    }
}
