use async_trait::async_trait;
use serde_json::Value;
use uuid::Uuid;

use super::SqlTx;
use crate::audit::{canonical_json, record_hash, redact, ChainWalker, GENESIS_HASH};
use crate::db::{args, now, Column, Row, Rows, Sql};
use crate::error::{Result, StoreError};
use crate::model::*;
use crate::page::{seq_token, Page, PageRequest};
use crate::repo::AuditRepo;
use crate::validate;

/// Records read per round trip by `verify_chain`.
const VERIFY_BATCH: i64 = 1000;

macro_rules! audit_cols {
    () => {
        "id, tenant_id, seq, actor_type, actor_id, action, resource_type, resource_id, \
         outcome, request_id, client_address, user_agent, created_at, details, prev_hash, hash"
    };
}

fn record_from(r: &Row) -> Result<AuditRecord> {
    Ok(AuditRecord {
        id: r.uuid("id")?,
        tenant_id: r.uuid("tenant_id")?,
        seq: r.get("seq")?,
        entry: NewAuditRecord {
            actor_type: r.text("actor_type")?,
            actor_id: r.opt_text("actor_id")?,
            action: r.text("action")?,
            resource_type: r.text("resource_type")?,
            resource_id: r.opt_text("resource_id")?,
            outcome: r.parse("outcome")?,
            request_id: r.opt_text("request_id")?,
            client_address: r.opt_text("client_address")?,
            user_agent: r.opt_text("user_agent")?,
            details: r.json("details")?,
        },
        created_at: r.ts("created_at")?,
        prev_hash: r.text("prev_hash")?,
        hash: r.text("hash")?,
    })
}

fn head_from(r: &Row) -> Result<ChainHead> {
    Ok(ChainHead {
        tenant_id: r.uuid("tenant_id")?,
        last_seq: r.get("last_seq")?,
        last_hash: r.text("last_hash")?,
    })
}

/// Bounds of the free-text fields of a record (characters). What a caller sent (a user agent,
/// a request id, an address) is evidence, not input to refuse: a longer value is cut at its
/// bound and control characters are replaced, the record says which fields were cut
/// (`details.truncated`), and the record is written. Refusing it would turn a hostile header
/// into a refused request that leaves no trace.
const FREE_TEXT_BOUNDS: [(&str, usize); 5] = [
    ("actor_id", 256),
    ("resource_id", 256),
    ("request_id", 256),
    ("client_address", 256),
    ("user_agent", 1024),
];

/// Checks the fields Zen itself names and bounds the ones callers supply (see
/// [`FREE_TEXT_BOUNDS`]).
fn bound_new(r: &mut NewAuditRecord) -> Result<()> {
    validate::text("actor_type", &r.actor_type, 64, false)?;
    validate::text("action", &r.action, 128, false)?;
    validate::text("resource_type", &r.resource_type, 128, false)?;
    let mut truncated = Vec::new();
    for (field, max) in FREE_TEXT_BOUNDS {
        let value = match field {
            "actor_id" => &mut r.actor_id,
            "resource_id" => &mut r.resource_id,
            "request_id" => &mut r.request_id,
            "client_address" => &mut r.client_address,
            _ => &mut r.user_agent,
        };
        if let Some(text) = value.as_mut() {
            if bound_text(text, max) {
                truncated.push(field);
            }
        }
    }
    if !truncated.is_empty() {
        if !r.details.is_object() {
            r.details = Value::Object(Default::default());
        }
        r.details["truncated"] = Value::from(truncated);
    }
    Ok(())
}

/// Cuts `text` to `max` characters and replaces control characters (NUL included, which
/// PostgreSQL cannot store) with U+FFFD; true when it was cut.
pub(crate) fn bound_text(text: &mut String, max: usize) -> bool {
    let cut = text.chars().count() > max;
    if cut || text.chars().any(char::is_control) {
        *text = text
            .chars()
            .take(max)
            .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
            .collect();
    }
    cut
}

impl SqlTx {
    /// A chain is read by its own tenant's scope, or by platform admins.
    fn check_chain_access(&self, tenant_id: Uuid) -> Result<()> {
        if !self.scope.platform_admin && tenant_id != self.scope.chain_tenant() {
            return Err(StoreError::PermissionDenied {
                reason: "the audit chain of another tenant".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl AuditRepo for SqlTx {
    async fn append(&mut self, new: NewAuditRecord) -> Result<AuditRecord> {
        self.append_all(vec![new]).await?.pop().ok_or_else(|| {
            StoreError::Database(sqlx::Error::Protocol("audit append: no record".into()))
        })
    }

    async fn append_all(&mut self, records: Vec<NewAuditRecord>) -> Result<Vec<AuditRecord>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut entries = Vec::with_capacity(records.len());
        for mut new in records {
            bound_new(&mut new)?;
            let details = match canonical_json(redact(new.details)) {
                Value::Null => Value::Object(Default::default()),
                v => v,
            };
            entries.push(NewAuditRecord { details, ..new });
        }
        let tenant = self.scope.chain_tenant();
        let count = entries.len() as i64;
        // Reserve the next `count` seqs and read the previous hash in one statement that
        // creates or row-locks the chain head: concurrent appenders of one tenant queue here
        // until this transaction ends, so the chain never forks. (SQLite: the write
        // transaction already holds the lock.)
        let head = self
            .conn
            .fetch_one(
                "INSERT INTO audit_chain_heads (tenant_id, last_seq, last_hash, updated_at) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (tenant_id) DO UPDATE \
                 SET last_seq = audit_chain_heads.last_seq + excluded.last_seq, \
                 updated_at = excluded.updated_at \
                 RETURNING last_seq, last_hash",
                args![tenant, count, GENESIS_HASH, now()],
            )
            .await?;
        let first_seq = head.get::<i64>("last_seq")? - count + 1;
        let mut prev_hash = head.text("last_hash")?;
        let created_at = now();
        let mut written = Vec::with_capacity(entries.len());
        for (i, entry) in entries.into_iter().enumerate() {
            let mut record = AuditRecord {
                id: Uuid::now_v7(),
                tenant_id: tenant,
                seq: first_seq + i as i64,
                entry,
                created_at,
                prev_hash,
                hash: String::new(),
            };
            record.hash = record_hash(&record);
            prev_hash = record.hash.clone();
            written.push(record);
        }
        let backend = self.conn.backend();
        let opt = |f: fn(&NewAuditRecord) -> &Option<String>| {
            Column::OptText(written.iter().map(|r| f(&r.entry).clone()).collect())
        };
        let text = |f: fn(&AuditRecord) -> &str| {
            Column::Text(written.iter().map(|r| f(r).to_owned()).collect())
        };
        let mut sql = Sql::new(concat!(
            "INSERT INTO audit_logs (",
            audit_cols!(),
            ") SELECT k.id, "
        ));
        sql.bind(tenant)
            .push(
                ", k.seq, k.actor_type, k.actor_id, k.action, k.resource_type, k.resource_id, \
                 k.outcome, k.request_id, k.client_address, k.user_agent, k.created_at, \
                 k.details, k.prev_hash, k.hash FROM ",
            )
            .rows(
                backend,
                "k",
                Rows::new()
                    .col("id", Column::Uuid(written.iter().map(|r| r.id).collect()))
                    .col("seq", Column::I64(written.iter().map(|r| r.seq).collect()))
                    .col("actor_type", text(|r| &r.entry.actor_type))
                    .col("actor_id", opt(|e| &e.actor_id))
                    .col("action", text(|r| &r.entry.action))
                    .col("resource_type", text(|r| &r.entry.resource_type))
                    .col("resource_id", opt(|e| &e.resource_id))
                    .col("outcome", text(|r| r.entry.outcome.as_str()))
                    .col("request_id", opt(|e| &e.request_id))
                    .col("client_address", opt(|e| &e.client_address))
                    .col("user_agent", opt(|e| &e.user_agent))
                    .col(
                        "created_at",
                        Column::Ts(written.iter().map(|r| r.created_at).collect()),
                    )
                    .col(
                        "details",
                        Column::Json(
                            written
                                .iter()
                                .map(|r| r.entry.details.to_string())
                                .collect(),
                        ),
                    )
                    .col("prev_hash", text(|r| &r.prev_hash))
                    .col("hash", text(|r| &r.hash)),
            );
        self.conn.execute(sql.text, sql.args).await?;
        self.conn
            .execute(
                "UPDATE audit_chain_heads SET last_hash = $2 WHERE tenant_id = $1",
                args![tenant, prev_hash.as_str()],
            )
            .await?;
        // Written in its transaction (counted before that commits: a stalled audit pipeline
        // shows as pending records with no appends at all).
        metrics::counter!("zen_audit_records_appended_total").increment(written.len() as u64);
        Ok(written)
    }

    async fn list(
        &mut self,
        filter: &AuditFilter,
        page: &PageRequest,
    ) -> Result<Page<AuditRecord>> {
        let limit = page.limit();
        let mut sql = Sql::new(concat!(
            "SELECT ",
            audit_cols!(),
            " FROM audit_logs WHERE tenant_id = "
        ));
        sql.bind(self.scope.chain_tenant());
        let text_filters = [
            (" AND actor_type = ", &filter.actor_type),
            (" AND actor_id = ", &filter.actor_id),
            (" AND action = ", &filter.action),
            (" AND resource_type = ", &filter.resource_type),
            (" AND resource_id = ", &filter.resource_id),
            (" AND request_id = ", &filter.request_id),
        ];
        for (clause, value) in text_filters {
            if let Some(v) = value {
                sql.push(clause).bind(v.as_str());
            }
        }
        if let Some(o) = filter.outcome {
            sql.push(" AND outcome = ").bind(o.as_str());
        }
        if let Some(t) = filter.since {
            sql.push(" AND created_at >= ").bind(crate::db::micros(t));
        }
        if let Some(t) = filter.until {
            sql.push(" AND created_at < ").bind(crate::db::micros(t));
        }
        if let Some(seq) = page.seq_cursor()? {
            sql.push(" AND seq < ").bind(seq);
        }
        sql.push(" ORDER BY seq DESC LIMIT ").bind(limit + 1);
        let items = self.all(sql.text, sql.args, record_from).await?;
        Ok(Page::from_overfetch(items, limit, |r| seq_token(r.seq)))
    }

    async fn verify_chain(&mut self, tenant_id: Uuid) -> Result<ChainVerification> {
        self.check_chain_access(tenant_id)?;
        let head = self
            .conn
            .fetch_optional(
                "SELECT tenant_id, last_seq, last_hash FROM audit_chain_heads WHERE tenant_id = $1",
                args![tenant_id],
            )
            .await?
            .map(|r| head_from(&r))
            .transpose()?;
        // The chain kept starts after the newest checkpoint (records below it were exported).
        let mut walker = match self.checkpoint(tenant_id).await? {
            Some(c) => ChainWalker::resume(c.through_seq, &c.head_hash),
            None => ChainWalker::new(),
        };
        let mut problem = None;
        'walk: loop {
            let batch = self
                .all(
                    concat!(
                        "SELECT ",
                        audit_cols!(),
                        " FROM audit_logs WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
                    ),
                    args![tenant_id, walker.last_seq(), VERIFY_BATCH],
                    record_from,
                )
                .await?;
            let done = (batch.len() as i64) < VERIFY_BATCH;
            for record in &batch {
                if let Err(p) = walker.check(record) {
                    problem = Some(p);
                    break 'walk;
                }
            }
            if done {
                break;
            }
        }
        if problem.is_none() {
            problem = walker.finish(head.as_ref()).err();
        }
        Ok(ChainVerification {
            tenant_id,
            records_checked: walker.checked,
            head_seq: head.map_or(0, |h| h.last_seq),
            problem,
        })
    }

    async fn records(
        &mut self,
        tenant_id: Uuid,
        after_seq: i64,
        through_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditRecord>> {
        self.check_chain_access(tenant_id)?;
        self.all(
            concat!(
                "SELECT ",
                audit_cols!(),
                " FROM audit_logs WHERE tenant_id = $1 AND seq > $2 AND seq <= $3 \
                 ORDER BY seq LIMIT $4"
            ),
            args![tenant_id, after_seq, through_seq, limit],
            record_from,
        )
        .await
    }

    async fn checkpoint(&mut self, tenant_id: Uuid) -> Result<Option<AuditCheckpoint>> {
        self.check_chain_access(tenant_id)?;
        let row = self
            .conn
            .fetch_optional(
                "SELECT tenant_id, through_seq, head_hash, cut_before, segment_sha256, key_id, \
                 created_at FROM audit_checkpoints WHERE tenant_id = $1 \
                 ORDER BY through_seq DESC LIMIT 1",
                args![tenant_id],
            )
            .await?;
        row.map(|r| {
            Ok(AuditCheckpoint {
                tenant_id: r.uuid("tenant_id")?,
                through_seq: r.get("through_seq")?,
                head_hash: r.text("head_hash")?,
                cut_before: r.ts("cut_before")?,
                segment_sha256: r.text("segment_sha256")?,
                key_id: r.text("key_id")?,
                created_at: r.ts("created_at")?,
            })
        })
        .transpose()
    }

    async fn add_checkpoint(&mut self, c: &AuditCheckpoint) -> Result<()> {
        let previous = self
            .checkpoint(c.tenant_id)
            .await?
            .map_or(0, |p| p.through_seq);
        if c.through_seq <= previous {
            return Err(StoreError::invalid(
                "through_seq",
                format!("the chain is already cut at seq {previous}"),
            ));
        }
        let stored = self
            .conn
            .fetch_optional(
                "SELECT hash FROM audit_logs WHERE tenant_id = $1 AND seq = $2",
                args![c.tenant_id, c.through_seq],
            )
            .await?;
        match stored.map(|r| r.text("hash")).transpose()? {
            Some(hash) if hash == c.head_hash => {}
            _ => {
                return Err(StoreError::invalid(
                    "head_hash",
                    format!("is not the stored hash of record {}", c.through_seq),
                ))
            }
        }
        self.conn
            .execute(
                "INSERT INTO audit_checkpoints (tenant_id, through_seq, head_hash, cut_before, \
                 segment_sha256, key_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                args![
                    c.tenant_id,
                    c.through_seq,
                    c.head_hash.as_str(),
                    crate::db::micros(c.cut_before),
                    c.segment_sha256.as_str(),
                    c.key_id.as_str(),
                    crate::db::micros(c.created_at)
                ],
            )
            .await?;
        Ok(())
    }

    async fn prune(&mut self, tenant_id: Uuid, limit: i64) -> Result<u64> {
        let Some(cut) = self.checkpoint(tenant_id).await? else {
            return Ok(0);
        };
        self.conn
            .execute(
                "DELETE FROM audit_logs WHERE tenant_id = $1 AND seq IN ( \
                 SELECT seq FROM audit_logs WHERE tenant_id = $1 AND seq <= $2 \
                 ORDER BY seq LIMIT $3)",
                args![tenant_id, cut.through_seq, limit],
            )
            .await
    }

    async fn heads(&mut self) -> Result<Vec<ChainHead>> {
        let mut sql = Sql::new("SELECT tenant_id, last_seq, last_hash FROM audit_chain_heads");
        if !self.scope.platform_admin {
            sql.push(" WHERE tenant_id = ")
                .bind(self.scope.chain_tenant());
        }
        sql.push(" ORDER BY tenant_id");
        self.all(sql.text, sql.args, head_from).await
    }
}
