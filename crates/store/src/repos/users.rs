use async_trait::async_trait;
use uuid::Uuid;

use super::SqlTx;
use crate::db::{args, now, Row};
use crate::error::{Result, StoreError};
use crate::model::*;
use crate::repo::UserRepo;
use crate::scope::Scope;
use crate::validate;

macro_rules! user_cols {
    () => {
        "id, issuer, subject, email, display_name, password_hash, is_platform_admin, \
         created_at, updated_at"
    };
}

fn user_from(r: &Row) -> Result<User> {
    Ok(User {
        id: r.uuid("id")?,
        issuer: r.text("issuer")?,
        subject: r.text("subject")?,
        email: r.opt_text("email")?,
        display_name: r.opt_text("display_name")?,
        password_hash: r.opt_text("password_hash")?,
        is_platform_admin: r.get("is_platform_admin")?,
        created_at: r.ts("created_at")?,
        updated_at: r.ts("updated_at")?,
    })
}

const BY_ISSUER_SUBJECT: &str = concat!(
    "SELECT ",
    user_cols!(),
    " FROM users WHERE issuer = $1 AND subject = $2"
);

impl SqlTx {
    /// Bind the transaction to `user_id` (the login is that user acting),
    /// so the `users` RLS policy lets it write its own row. Platform admins
    /// keep their scope (their escape already allows the write). Refused
    /// when the scope already belongs to another user.
    async fn bind_user(&mut self, user_id: Uuid) -> Result<()> {
        match self.scope.user_id {
            _ if self.scope.platform_admin => Ok(()),
            Some(u) if u == user_id => Ok(()),
            Some(_) => Err(StoreError::invalid(
                "scope",
                "the transaction already acts for another user",
            )),
            None => {
                self.rescope(Scope {
                    user_id: Some(user_id),
                    ..self.scope.clone()
                })
                .await
            }
        }
    }
}

fn check_identity(issuer: &str, subject: &str) -> Result<()> {
    validate::text("issuer", issuer, 512, false)?;
    validate::text("subject", subject, 512, false)
}

#[async_trait]
impl UserRepo for SqlTx {
    async fn upsert_external(&mut self, identity: ExternalIdentity) -> Result<User> {
        check_identity(&identity.issuer, &identity.subject)?;
        if identity.issuer == LOCAL_ISSUER {
            return Err(StoreError::invalid(
                "issuer",
                "the local issuer is reserved for local users",
            ));
        }
        if let Some(e) = &identity.email {
            validate::email(e)?;
        }
        validate::opt_text("display_name", identity.display_name.as_deref(), 200)?;
        let at = now();
        let found = self
            .conn
            .fetch_optional(
                BY_ISSUER_SUBJECT,
                args![identity.issuer.as_str(), identity.subject.as_str()],
            )
            .await?;
        let id = match found {
            Some(row) => row.uuid("id")?,
            None => {
                let id = Uuid::now_v7();
                self.bind_user(id).await?;
                // A concurrent first login of the same identity inserts
                // nothing here and falls through to the update below.
                let inserted = self
                    .conn
                    .fetch_optional(
                        concat!(
                            "INSERT INTO users (id, issuer, subject, email, display_name, \
                             password_hash, is_platform_admin, created_at, updated_at) \
                             VALUES ($1, $2, $3, $4, $5, NULL, $6, $7, $7) \
                             ON CONFLICT (issuer, subject) DO NOTHING RETURNING ",
                            user_cols!()
                        ),
                        args![
                            id,
                            identity.issuer.as_str(),
                            identity.subject.as_str(),
                            identity.email.clone(),
                            identity.display_name.clone(),
                            false,
                            at
                        ],
                    )
                    .await?;
                if let Some(row) = inserted {
                    return user_from(&row);
                }
                self.one(
                    BY_ISSUER_SUBJECT,
                    args![identity.issuer.as_str(), identity.subject.as_str()],
                    "user",
                    |r| r.uuid("id"),
                )
                .await?
            }
        };
        self.bind_user(id).await?;
        self.one(
            concat!(
                "UPDATE users SET email = $2, display_name = $3, updated_at = $4 \
                 WHERE id = $1 RETURNING ",
                user_cols!()
            ),
            args![id, identity.email, identity.display_name, at],
            "user",
            user_from,
        )
        .await
    }

    async fn create_local(&mut self, new: NewLocalUser) -> Result<User> {
        let ok = !new.username.is_empty()
            && new.username.len() <= 64
            && new.username.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            });
        if !ok {
            return Err(StoreError::invalid(
                "username",
                "must be 1-64 of lowercase letters, digits, '.', '_' or '-'",
            ));
        }
        if !new.password_hash.starts_with("$argon2id$") {
            return Err(StoreError::invalid(
                "password_hash",
                "must be an argon2id PHC string ($argon2id$...), never a password",
            ));
        }
        if let Some(e) = &new.email {
            validate::email(e)?;
        }
        validate::opt_text("display_name", new.display_name.as_deref(), 200)?;
        let id = Uuid::now_v7();
        self.bind_user(id).await?;
        self.one(
            concat!(
                "INSERT INTO users (id, issuer, subject, email, display_name, password_hash, \
                 is_platform_admin, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING ",
                user_cols!()
            ),
            args![
                id,
                LOCAL_ISSUER,
                new.username,
                new.email,
                new.display_name,
                new.password_hash,
                false,
                now()
            ],
            "user",
            user_from,
        )
        .await
        .map_err(|e| e.on_unique("user"))
    }

    async fn get(&mut self, id: Uuid) -> Result<User> {
        self.one(
            concat!("SELECT ", user_cols!(), " FROM users WHERE id = $1"),
            args![id],
            "user",
            user_from,
        )
        .await
    }

    async fn get_by_issuer_subject(&mut self, issuer: &str, subject: &str) -> Result<User> {
        self.one(BY_ISSUER_SUBJECT, args![issuer, subject], "user", user_from)
            .await
    }

    async fn get_by_username(&mut self, username: &str) -> Result<User> {
        self.get_by_issuer_subject(LOCAL_ISSUER, username).await
    }

    async fn get_by_email(&mut self, email: &str) -> Result<User> {
        self.one(
            concat!(
                "SELECT ",
                user_cols!(),
                " FROM users WHERE lower(email) = lower($1) ORDER BY created_at, id LIMIT 1"
            ),
            args![email],
            "user",
            user_from,
        )
        .await
    }

    async fn set_platform_admin(&mut self, id: Uuid, admin: bool) -> Result<User> {
        if !self.scope.platform_admin {
            return Err(StoreError::PermissionDenied {
                reason: "only platform admins grant platform admin".into(),
            });
        }
        self.one(
            concat!(
                "UPDATE users SET is_platform_admin = $2, updated_at = $3 WHERE id = $1 RETURNING ",
                user_cols!()
            ),
            args![id, admin, now()],
            "user",
            user_from,
        )
        .await
    }
}
