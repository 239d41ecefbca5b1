//! Opening the store for the server and the CLI: connect, then apply or check migrations so a
//! half-applied or unknown migration stops the start with a clear message.

use anyhow::Context;
use uuid::Uuid;
use zen_store::{NewLocalUser, Scope, Store};

use crate::config::{redact_url, Config};

/// Connects to the configured database (creating the data dir for SQLite), naming the
/// database without its password when that fails.
async fn connect(config: &Config) -> anyhow::Result<Store> {
    if config.database_url.starts_with("sqlite:") {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("creating the data directory {}", config.data_dir.display())
        })?;
    }
    // A PostgreSQL that cannot be reached fails a request within the dependency timeout
    // (503) instead of holding it; SQLite is in-process and keeps its own lock timeouts.
    let mut options = zen_store::StoreOptions::default();
    if !config.database_url.starts_with("sqlite:") {
        options.acquire_timeout = config.limits.dependency_timeout;
    }
    Store::connect_with(&config.database_url, options)
        .await
        .with_context(|| format!("connecting to {}", redact_url(&config.database_url)))
}

/// Connects to the configured database and brings its schema up to date (or, with
/// auto-migration disabled, refuses to start on a schema that is not current). With
/// `--database-read-url`, adds the read replica that serves list pages while it is fresh; it is
/// never migrated (a standby replays the primary's schema) and never checked here: a replica
/// that is down only leaves the lists on the primary.
pub async fn open(config: &Config) -> anyhow::Result<Store> {
    let mut store = connect(config).await?;
    if let Some(read_url) = &config.database_read_url {
        // A list that cannot get a replica connection quickly is better answered by the
        // primary than held: the replica's pool waits at most half a freshness interval.
        let options = zen_store::StoreOptions {
            acquire_timeout: config
                .limits
                .dependency_timeout
                .min(std::time::Duration::from_millis(500)),
            ..Default::default()
        };
        store = store
            .with_read_replica(read_url, options)
            .with_context(|| format!("the read replica {}", redact_url(read_url)))?;
        tracing::info!(replica = %redact_url(read_url), "lists read the replica while it is fresh");
    }
    if config.auto_migrate {
        let status = store.migrate().await.context("applying migrations")?;
        tracing::info!(applied = status.applied.len(), "database schema is current");
    } else {
        store
            .check_migrations()
            .await
            .context("checking migrations (ZEN_AUTO_MIGRATE=false; run `zen migrate`)")?;
    }
    Ok(store)
}

/// `zen migrate [--status]`.
pub async fn migrate_command(config: &Config, status_only: bool) -> anyhow::Result<()> {
    let store = connect(config).await?;
    let status = if status_only {
        store.migration_status().await?
    } else {
        store.migrate().await.context("applying migrations")?
    };
    for migration in &status.applied {
        println!("applied  {} {}", migration.version, migration.description);
    }
    for migration in &status.pending {
        println!("pending  {} {}", migration.version, migration.description);
    }
    store.close().await;
    match status.problem() {
        Some(problem) => anyhow::bail!(problem),
        None => Ok(()),
    }
}

/// `zen audit verify [--tenant T]`: verifies one chain or every chain, as a platform admin.
pub async fn verify_audit_command(config: &Config, tenant: Option<Uuid>) -> anyhow::Result<()> {
    let store = connect(config).await?;
    store
        .check_migrations()
        .await
        .context("checking migrations")?;
    let mut tx = store.begin_read(&Scope::platform_admin(None)).await?;
    let tenants = match tenant {
        Some(tenant) => vec![tenant],
        None => tx
            .audit()
            .heads()
            .await?
            .into_iter()
            .map(|h| h.tenant_id)
            .collect(),
    };
    let mut broken = 0;
    for tenant in &tenants {
        let verification = tx.audit().verify_chain(*tenant).await?;
        match &verification.problem {
            None => println!(
                "ok      {tenant}  {} record(s)",
                verification.records_checked
            ),
            Some(problem) => {
                broken += 1;
                println!(
                    "BROKEN  {tenant}  first bad record: seq {} ({:?}): {}",
                    problem.seq, problem.kind, problem.reason
                );
            }
        }
    }
    drop(tx);
    store.close().await;
    if broken > 0 {
        anyhow::bail!(
            "{broken} of {} audit chain(s) failed verification",
            tenants.len()
        );
    }
    Ok(())
}

/// `zen audit export --before T --out DIR [--tenant T] [--prune]`: one signed segment per
/// chain with records before the cut (docs/RETENTION.md).
pub async fn export_audit_command(
    config: &Config,
    before: &str,
    out: &std::path::Path,
    tenant: Option<Uuid>,
    prune: bool,
) -> anyhow::Result<()> {
    let before = parse_cut(before, chrono::Utc::now())?;
    let create = config.environment == crate::config::Environment::Development;
    let key = crate::audit_archive::SigningKey::load(&config.audit_signing_key, create)?;
    let store = connect(config).await?;
    store
        .check_migrations()
        .await
        .context("checking migrations")?;
    let tenants = match tenant {
        Some(tenant) => vec![tenant],
        None => {
            let mut tx = store.begin_read(&Scope::platform_admin(None)).await?;
            tx.audit()
                .heads()
                .await?
                .into_iter()
                .map(|h| h.tenant_id)
                .collect()
        }
    };
    let batch = prune.then_some(config.retention.batch_size);
    for tenant in tenants {
        match crate::audit_archive::export(&store, &key, tenant, before, out, batch).await? {
            Some(done) => println!(
                "exported {tenant}  seq {}..={}  {} record(s)  -> {}{}",
                done.summary.first_seq,
                done.summary.last_seq,
                done.summary.records,
                done.path.display(),
                if prune {
                    format!("  ({} deleted from the database)", done.pruned)
                } else {
                    String::new()
                }
            ),
            None => println!("nothing   {tenant}  (no records before {before} left to export)"),
        }
    }
    store.close().await;
    Ok(())
}

/// An RFC 3339 time, or an age before `now` such as `90d`, `12h`, `30m`.
pub fn parse_cut(
    text: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let amount: i64 = number.parse().map_err(|_| {
        anyhow::anyhow!("--before `{text}` is neither an RFC 3339 time nor an age like 90d")
    })?;
    let age = match unit {
        "d" => chrono::Duration::days(amount),
        "h" => chrono::Duration::hours(amount),
        "m" => chrono::Duration::minutes(amount),
        _ => anyhow::bail!("--before `{text}`: an age ends in d, h or m"),
    };
    anyhow::ensure!(amount >= 0, "--before `{text}`: an age cannot be negative");
    Ok(now - age)
}

/// `zen user add`: a local user with an Argon2id hash, optionally a platform admin.
pub async fn add_user_command(
    config: &Config,
    username: String,
    email: Option<String>,
    admin: bool,
    password: &str,
) -> anyhow::Result<()> {
    let hash = zen_security::password::hash_password(password)?;
    let store = open(config).await?;
    let mut tx = store.begin(&Scope::platform_admin(None)).await?;
    let mut user = tx
        .users()
        .create_local(NewLocalUser {
            username,
            email,
            display_name: None,
            password_hash: hash,
        })
        .await?;
    if admin {
        user = tx.users().set_platform_admin(user.id, true).await?;
    }
    let mut record = zen_store::NewAuditRecord::new(
        "system",
        "user.create",
        "user",
        zen_store::AuditOutcome::Success,
    );
    record.actor_id = Some("zen-cli".into());
    record.resource_id = Some(user.id.to_string());
    record.details = serde_json::json!({ "username": user.subject, "platform_admin": admin });
    tx.audit().append(record).await?;
    tx.commit().await?;
    println!("created user {} ({})", user.subject, user.id);
    store.close().await;
    Ok(())
}
