//! `zen dlq list|replay`: the dead-letter queue from the command line. Like `zen audit
//! verify`, it talks to the store directly with the operator's database credentials (no
//! server, no certificate needed; whoever holds the database URL is the platform operator);
//! the replay is audited in the tenant's chain as a system action, and a running server's
//! dispatcher picks the requeued execution up at its next poll.

use anyhow::Context;
use uuid::Uuid;
use zen_store::{AuditOutcome, DeadLetterFilter, NewAuditRecord, PageRequest, Scope, Store};

use crate::config::{redact_url, Config};

async fn open(config: &Config) -> anyhow::Result<Store> {
    let store = Store::connect(&config.database_url)
        .await
        .with_context(|| format!("connecting to {}", redact_url(&config.database_url)))?;
    store
        .check_migrations()
        .await
        .context("checking migrations")?;
    Ok(store)
}

/// The operator acting inside one tenant.
fn scope(tenant_id: Uuid) -> Scope {
    Scope::platform_admin(None).with_tenant(tenant_id)
}

/// Prints the tenant's dead letters, newest first, one per line.
pub async fn list(config: &Config, tenant_id: Uuid, all: bool) -> anyhow::Result<()> {
    let store = open(config).await?;
    let mut tx = store.begin_read(&scope(tenant_id)).await?;
    let filter = DeadLetterFilter {
        show_replayed: all,
        ..Default::default()
    };
    let mut page = PageRequest::first(500);
    loop {
        let result = tx.remediations().list_dead_letters(&filter, &page).await?;
        for d in &result.items {
            println!(
                "{}  remediation {}  cluster {}  {}  attempts {}  {}  {}",
                d.id,
                d.remediation_id,
                d.cluster_id,
                d.operation,
                d.attempts,
                d.replayed_at
                    .map(|t| format!("replayed {}", t.to_rfc3339()))
                    .unwrap_or_else(|| "pending".into()),
                d.last_error
            );
        }
        match result.next_page_token {
            Some(token) => page = PageRequest::next(500, token),
            None => break,
        }
    }
    Ok(())
}

/// Replays one dead letter and prints the remediation's new status.
pub async fn replay(config: &Config, tenant_id: Uuid, dead_letter_id: Uuid) -> anyhow::Result<()> {
    let store = open(config).await?;
    let mut tx = store.begin(&scope(tenant_id)).await?;
    let (_, remediation, details) = super::replay(tx.as_mut(), dead_letter_id, "operator:cli")
        .await
        .context("replaying the dead letter")?;
    let mut record = NewAuditRecord::new(
        "system",
        "dead_letter.replay",
        "dead_letter",
        AuditOutcome::Success,
    );
    record.actor_id = Some("zen dlq replay".into());
    record.resource_id = Some(dead_letter_id.to_string());
    record.details = details;
    tx.audit().append(record).await?;
    tx.commit().await?;
    println!(
        "replayed {dead_letter_id}: remediation {} is {} (execution {})",
        remediation.id,
        remediation.status,
        remediation
            .execution_id
            .map(|e| e.to_string())
            .unwrap_or_default()
    );
    Ok(())
}
