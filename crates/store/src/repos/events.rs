//! Security events: batched, idempotent, folding ingestion; lists; the tail
//! watchers follow (with the tenant's remediation changes merged in, which
//! take their seqs from the same sequence head).
//!
//! One `ingest` call is a fixed number of statements whatever the batch size
//! (each binds whole columns, see [`Rows`]):
//!
//! 1. lock the tenant's `event_seq_heads` row and reserve seqs (one per
//!    (origin, fingerprint) group of the batch, an upper bound);
//! 2. look up each group's fold target: its newest row, if its
//!    `last_seen_at >= now - fold_window` (else the group's row-to-be gets a
//!    fresh id);
//! 3. claim a receipt per (origin, source_event_id) key, naming its group's
//!    event: `INSERT … ON CONFLICT DO NOTHING RETURNING` tells the new keys
//!    from resends;
//! 4. only if there were resends: read the event their receipts name;
//! 5. `INSERT` the new rows; upsert the folds (count, last_seen_at, details,
//!    seq) through the primary key: no indexed column changes, so with the
//!    table's free page space a fold is a HOT update that touches no index;
//! 6. append one `event_changes` row per event written (the watchers' tail).
//!
//! The head row lock of step 1 is held to the commit, so a tenant's ingest
//! transactions run one after the other from step 1 on. That makes steps
//! 2-6 free of races (no second row for a fingerprint, no double count of a
//! resend racing its original) and makes seqs become visible in increasing
//! order, which is what lets watchers follow `seq > n` without missing rows.
//!
//! Lookups are correlated sub-queries and writes go through the primary
//! key, so every row costs one index probe whatever the planner believes
//! about the tables (a join planned on stale statistics turned a 5 ms lookup
//! into seconds).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::{Keyset, SqlTx};
use crate::db::{args, micros, Column, Row, Rows, Sql};
use crate::error::{Result, StoreError};
use crate::model::*;
use crate::page::{Page, PageRequest};
use crate::repo::EventRepo;
use crate::store::BackendKind;
use crate::validate;

/// Most events one `ingest` call takes.
pub const MAX_INGEST_BATCH: usize = 10_000;
/// Most events one `tail` call returns; larger limits are clamped.
pub const MAX_TAIL_LIMIT: i64 = 1_000;

/// Most serialized `resource` + `details` bytes one `ingest` call takes (a
/// batch is bound as one array per column; PostgreSQL and SQLite refuse
/// values above 1 GiB).
const MAX_BATCH_JSON_BYTES: usize = 64 << 20;
const MAX_ID: usize = 256;
const MAX_TEXT: usize = 1024;
const MAX_RESOURCE_BYTES: usize = 16 * 1024;
const MAX_DETAILS_BYTES: usize = 256 * 1024;

macro_rules! event_cols {
    () => {
        "id, tenant_id, cluster_id, seq, source_event_id, source, source_name, category, \
         severity, type, title, resource, details, fingerprint, count, detected_at, \
         received_at, last_seen_at"
    };
    (e) => {
        "e.id, e.tenant_id, e.cluster_id, e.seq, e.source_event_id, e.source, e.source_name, \
         e.category, e.severity, e.type, e.title, e.resource, e.details, e.fingerprint, \
         e.count, e.detected_at, e.received_at, e.last_seen_at"
    };
}

fn event_from(r: &Row) -> Result<Event> {
    Ok(Event {
        id: r.uuid("id")?,
        tenant_id: r.uuid("tenant_id")?,
        cluster_id: r.opt_uuid("cluster_id")?,
        seq: r.get("seq")?,
        source_event_id: r.text("source_event_id")?,
        source: r.text("source")?,
        source_name: r.opt_text("source_name")?,
        category: r.text("category")?,
        severity: r.get("severity")?,
        event_type: r.text("type")?,
        title: r.text("title")?,
        resource: r.json("resource")?,
        details: r.json("details")?,
        fingerprint: r.text("fingerprint")?,
        count: r.get("count")?,
        detected_at: r.ts("detected_at")?,
        received_at: r.ts("received_at")?,
        last_seen_at: r.ts("last_seen_at")?,
    })
}

/// An input event, checked, with what the statements need.
struct Checked<'a> {
    event: &'a NewEvent,
    origin: String,
    resource: String,
    details: String,
    detected_at: DateTime<Utc>,
}

/// `Invalid { field }` naming the event's position in the batch.
fn at(i: usize, e: StoreError) -> StoreError {
    match e {
        StoreError::Invalid { field, reason } => {
            StoreError::invalid(field, format!("event {i}: {reason}"))
        }
        other => other,
    }
}

fn one_of(field: &'static str, v: &str, allowed: &[&str]) -> Result<()> {
    if allowed.contains(&v) {
        Ok(())
    } else {
        Err(StoreError::invalid(
            field,
            format!("must be one of {}", allowed.join(", ")),
        ))
    }
}

fn severity(field: &'static str, v: i16) -> Result<()> {
    if (1..=5).contains(&v) {
        Ok(())
    } else {
        Err(StoreError::invalid(
            field,
            "must be 1 (info) to 5 (critical)",
        ))
    }
}

/// Years 1970-9999: within both backends' range, and SQLite's fixed-width
/// text form keeps sorting as time.
fn timestamp(field: &'static str, t: DateTime<Utc>) -> Result<DateTime<Utc>> {
    if (1970..=9999).contains(&t.year()) {
        Ok(micros(t))
    } else {
        Err(StoreError::invalid(field, "must be in the years 1970-9999"))
    }
}

/// A JSON object (`null` → `{}`), serialized, at most `max` bytes, without
/// NUL characters (PostgreSQL's `jsonb` refuses `\u0000`).
fn json_object(field: &'static str, v: &Value, max: usize) -> Result<String> {
    let text = match v {
        Value::Null => return Ok("{}".to_owned()),
        Value::Object(_) => v.to_string(),
        _ => return Err(StoreError::invalid(field, "must be a JSON object")),
    };
    if text.len() > max {
        return Err(StoreError::invalid(
            field,
            format!("must be at most {max} bytes serialized"),
        ));
    }
    if has_nul(v) {
        return Err(StoreError::invalid(
            field,
            "must not contain NUL characters",
        ));
    }
    Ok(text)
}

/// A NUL character in any key or string of `v`.
fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Who sent the event: its cluster (agents), or `webhook:<source_name>`
/// (webhook sources, and every event whose source is `webhook`, even one
/// attributed to a cluster).
fn origin(cluster_id: Option<Uuid>, e: &NewEvent) -> Result<String> {
    match cluster_id {
        Some(c) if e.source != "webhook" => Ok(c.hyphenated().to_string()),
        _ => match e.source_name.as_deref() {
            Some(name) if !name.is_empty() => Ok(format!("webhook:{name}")),
            _ => Err(StoreError::invalid(
                "source_name",
                "names the webhook source: required for webhook events",
            )),
        },
    }
}

fn check(cluster_id: Option<Uuid>, e: &NewEvent) -> Result<Checked<'_>> {
    validate::text("source_event_id", &e.source_event_id, MAX_ID, false)?;
    one_of("source", &e.source, EVENT_SOURCES)?;
    validate::opt_text("source_name", e.source_name.as_deref(), MAX_ID)?;
    one_of("category", &e.category, EVENT_CATEGORIES)?;
    severity("severity", e.severity)?;
    validate::text("event_type", &e.event_type, MAX_TEXT, false)?;
    validate::text("title", &e.title, MAX_TEXT, true)?;
    validate::text("fingerprint", &e.fingerprint, MAX_ID, false)?;
    Ok(Checked {
        event: e,
        origin: origin(cluster_id, e)?,
        resource: json_object("resource", &e.resource, MAX_RESOURCE_BYTES)?,
        details: json_object("details", &e.details, MAX_DETAILS_BYTES)?,
        detected_at: timestamp("detected_at", e.detected_at)?,
    })
}

/// The oldest `last_seen_at` a fold target may have.
fn fold_cutoff(now: DateTime<Utc>, window: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(window)
        .ok()
        .and_then(|w| now.checked_sub_signed(w))
        .map_or(DateTime::<Utc>::UNIX_EPOCH, |t| {
            t.max(DateTime::<Utc>::UNIX_EPOCH)
        })
}

/// One (origin, fingerprint) of the batch.
struct Group {
    /// Its first event in the batch.
    first: usize,
    /// The seq its row gets if anything new lands in it.
    seq: i64,
    /// The row it folds into, if one is inside the window.
    target: Option<Uuid>,
    /// The event it ends up in: the target, or the new row's id.
    id: Uuid,
    /// Its events that are new (not duplicates), in batch order.
    fresh: Vec<usize>,
}

/// A text column: `f` of each of `rows`.
fn texts<'a>(rows: &[usize], f: impl Fn(usize) -> &'a String) -> Column {
    Column::Text(rows.iter().map(|&i| f(i).clone()).collect())
}

/// A broken invariant of this module (never expected; no panic on input).
fn internal(what: &'static str) -> StoreError {
    StoreError::Database(sqlx::Error::Protocol(format!("event ingest: {what}")))
}

/// What [`write_rows`] needs of an `ingest` call.
struct Batch<'a> {
    tenant: Uuid,
    cluster_id: Option<Uuid>,
    now: DateTime<Utc>,
    checked: &'a [Checked<'a>],
    groups: &'a [Group],
}

/// The statement writing `rows` (group, event id): an `INSERT` of new
/// rows, or with `fold` an upsert whose conflict branch folds into the
/// existing row. A row takes its group's first fresh occurrence, the latest
/// one's details, and counts every fresh occurrence.
fn write_rows(backend: BackendKind, b: &Batch<'_>, rows: &[(usize, Uuid)], fold: bool) -> Sql {
    let (checked, groups) = (b.checked, b.groups);
    let firsts: Vec<usize> = rows.iter().map(|&(g, _)| groups[g].fresh[0]).collect();
    let lasts: Vec<usize> = rows
        .iter()
        .map(|&(g, _)| groups[g].fresh[groups[g].fresh.len() - 1])
        .collect();
    let ev = |i: usize| checked[i].event;
    let mut sql = Sql::new(concat!(
        "INSERT INTO events (",
        event_cols!(),
        ", origin) SELECT k.id, "
    ));
    sql.bind(b.tenant)
        .push(
            ", k.cluster_id, k.seq, k.source_event_id, k.source, k.source_name, \
             k.category, k.severity, k.type, k.title, k.resource, k.details, \
             k.fingerprint, k.count, k.detected_at, ",
        )
        .bind(b.now)
        .push(", ")
        .bind(b.now)
        .push(", k.origin FROM ")
        .rows(
            backend,
            "k",
            Rows::new()
                .col("id", Column::Uuid(rows.iter().map(|&(_, id)| id).collect()))
                .col(
                    "cluster_id",
                    Column::OptUuid(rows.iter().map(|_| b.cluster_id).collect()),
                )
                .col(
                    "seq",
                    Column::I64(rows.iter().map(|&(g, _)| groups[g].seq).collect()),
                )
                .col(
                    "source_event_id",
                    texts(&firsts, |i| &ev(i).source_event_id),
                )
                .col("source", texts(&firsts, |i| &ev(i).source))
                .col(
                    "source_name",
                    Column::OptText(firsts.iter().map(|&i| ev(i).source_name.clone()).collect()),
                )
                .col("category", texts(&firsts, |i| &ev(i).category))
                .col(
                    "severity",
                    Column::I16(firsts.iter().map(|&i| ev(i).severity).collect()),
                )
                .col("type", texts(&firsts, |i| &ev(i).event_type))
                .col("title", texts(&firsts, |i| &ev(i).title))
                .col(
                    "resource",
                    // A fold keeps the stored resource: send the cheapest
                    // valid value for the row the upsert only proposes.
                    Column::Json(
                        firsts
                            .iter()
                            .map(|&i| {
                                if fold {
                                    "{}".to_owned()
                                } else {
                                    checked[i].resource.clone()
                                }
                            })
                            .collect(),
                    ),
                )
                .col(
                    "details",
                    Column::Json(lasts.iter().map(|&i| checked[i].details.clone()).collect()),
                )
                .col("fingerprint", texts(&firsts, |i| &ev(i).fingerprint))
                .col(
                    "count",
                    Column::I64(
                        rows.iter()
                            .map(|&(g, _)| groups[g].fresh.len() as i64)
                            .collect(),
                    ),
                )
                .col(
                    "detected_at",
                    Column::Ts(firsts.iter().map(|&i| checked[i].detected_at).collect()),
                )
                .col("origin", texts(&firsts, |i| &checked[i].origin)),
        );
    if fold {
        // `WHERE true`: SQLite needs it to parse `INSERT … SELECT … ON CONFLICT`.
        sql.push(
            " WHERE true ON CONFLICT (tenant_id, id) DO UPDATE SET \
             count = events.count + excluded.count, seq = excluded.seq, \
             details = excluded.details, \
             last_seen_at = CASE WHEN events.last_seen_at > excluded.last_seen_at \
             THEN events.last_seen_at ELSE excluded.last_seen_at END",
        );
    }
    sql
}

impl SqlTx {
    /// Takes the next seq of the scope's tenant's change sequence for one
    /// change that is not an event (a remediation's create or change). Like
    /// `ingest`, it row-locks the tenant's sequence head until the
    /// transaction ends, so the change becomes visible only after every
    /// smaller seq: it waits for the tenant's running ingest transaction, and
    /// ingestion waits for it. Call it after every other row lock the
    /// transaction takes on remediations, and before appending audit
    /// records (docs/STORAGE.md, "Lock order").
    pub(crate) async fn next_change_seq(&mut self, now: DateTime<Utc>) -> Result<i64> {
        let tenant = self.tenant()?;
        self.conn
            .fetch_one(
                "INSERT INTO event_seq_heads (tenant_id, last_seq, updated_at) VALUES ($1, 1, $2) \
                 ON CONFLICT (tenant_id) DO UPDATE \
                 SET last_seq = event_seq_heads.last_seq + 1, updated_at = excluded.updated_at \
                 RETURNING last_seq",
                args![tenant, micros(now)],
            )
            .await
            .map_err(|e| e.on_foreign_key("tenant"))?
            .get("last_seq")
    }
}

#[async_trait]
impl EventRepo for SqlTx {
    async fn ingest(
        &mut self,
        cluster_id: Option<Uuid>,
        events: &[NewEvent],
        fold_window: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<EventOutcome>> {
        let tenant = self.tenant()?;
        if events.is_empty() {
            return Ok(Vec::new());
        }
        if events.len() > MAX_INGEST_BATCH {
            return Err(StoreError::invalid(
                "events",
                format!("at most {MAX_INGEST_BATCH} events per batch"),
            ));
        }
        let now = timestamp("now", now)?;
        let cutoff = fold_cutoff(now, fold_window);
        let checked = events
            .iter()
            .enumerate()
            .map(|(i, e)| check(cluster_id, e).map_err(|err| at(i, err)))
            .collect::<Result<Vec<_>>>()?;
        let bytes: usize = checked
            .iter()
            .map(|c| c.details.len() + c.resource.len())
            .sum();
        if bytes > MAX_BATCH_JSON_BYTES {
            return Err(StoreError::invalid(
                "events",
                format!(
                    "at most {} MiB of resource and details per batch",
                    MAX_BATCH_JSON_BYTES >> 20
                ),
            ));
        }

        // Keys and groups, in batch order. `first_of[i]` is the first event
        // of the batch with event i's (origin, source_event_id).
        let mut key_index: HashMap<(&str, &str), usize> = HashMap::new();
        let mut first_of = Vec::with_capacity(checked.len());
        let mut group_index: HashMap<(&str, &str), usize> = HashMap::new();
        let mut group_of = Vec::with_capacity(checked.len());
        let mut groups: Vec<Group> = Vec::new();
        for (i, c) in checked.iter().enumerate() {
            first_of.push(
                *key_index
                    .entry((&c.origin, &c.event.source_event_id))
                    .or_insert(i),
            );
            let g = *group_index
                .entry((&c.origin, &c.event.fingerprint))
                .or_insert_with(|| {
                    groups.push(Group {
                        first: i,
                        seq: 0,
                        target: None,
                        id: Uuid::now_v7(),
                        fresh: Vec::new(),
                    });
                    groups.len() - 1
                });
            group_of.push(g);
        }
        let keys: Vec<usize> = (0..checked.len()).filter(|&i| first_of[i] == i).collect();
        let backend = self.conn.backend();

        // 1. Lock the tenant's sequence head; reserve one seq per group.
        let reserved = groups.len() as i64;
        let top: i64 = self
            .conn
            .fetch_one(
                "INSERT INTO event_seq_heads (tenant_id, last_seq, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (tenant_id) DO UPDATE \
                 SET last_seq = event_seq_heads.last_seq + excluded.last_seq, \
                     updated_at = excluded.updated_at \
                 RETURNING last_seq",
                args![tenant, reserved, now],
            )
            .await
            .map_err(|e| e.on_foreign_key("tenant"))?
            .get("last_seq")?;
        for (g, group) in groups.iter_mut().enumerate() {
            group.seq = top - reserved + 1 + g as i64;
        }

        // 2. The fold target of each group: its newest row (by received_at,
        //    which a fold never changes, so that folds leave the index
        //    alone) if its last_seen_at is inside the window. Rows of a
        //    group do not overlap in time, so when the newest is outside
        //    the window the older ones are too (the scan just reads them
        //    to say so). A correlated sub-query: one index probe per group,
        //    whatever the planner believes about the table's size. A group
        //    without a target keeps the fresh id its new row will get.
        let mut sql = Sql::new("SELECT k.n AS n, (SELECT e.id FROM events e WHERE e.tenant_id = ");
        let firsts: Vec<usize> = groups.iter().map(|g| g.first).collect();
        sql.bind(tenant)
            .push(
                " AND e.origin = k.origin AND e.fingerprint = k.fingerprint AND e.last_seen_at >= ",
            )
            .bind(cutoff)
            .push(" ORDER BY e.received_at DESC LIMIT 1) AS id FROM ")
            .rows(
                backend,
                "k",
                Rows::new()
                    .col("n", Column::I64((0..groups.len() as i64).collect()))
                    .col("origin", texts(&firsts, |i| &checked[i].origin))
                    .col(
                        "fingerprint",
                        texts(&firsts, |i| &checked[i].event.fingerprint),
                    ),
            );
        for row in self.conn.fetch_all(sql.text, sql.args).await? {
            if let Some(id) = row.opt_uuid("id")? {
                let n = usize::try_from(row.get::<i64>("n")?).unwrap_or(usize::MAX);
                let group = groups
                    .get_mut(n)
                    .ok_or_else(|| internal("the fold lookup answered for an unknown group"))?;
                group.target = Some(id);
                group.id = id;
            }
        }

        // 3. Claim a receipt for every key of the batch, naming the event
        //    its group ends up in. Keys already claimed by an earlier batch
        //    are resends: nothing changes for them. (Under the head lock no
        //    other transaction claims receipts of this tenant meanwhile.)
        let mut sql = Sql::new(
            "INSERT INTO event_receipts (tenant_id, origin, source_event_id, event_id, \
             received_at) SELECT ",
        );
        sql.bind(tenant)
            .push(", k.origin, k.source_event_id, k.event_id, ")
            .bind(now)
            .push(" FROM ")
            .rows(
                backend,
                "k",
                Rows::new()
                    .col("origin", texts(&keys, |i| &checked[i].origin))
                    .col(
                        "source_event_id",
                        texts(&keys, |i| &checked[i].event.source_event_id),
                    )
                    .col(
                        "event_id",
                        Column::Uuid(keys.iter().map(|&i| groups[group_of[i]].id).collect()),
                    ),
            )
            // `WHERE true`: SQLite needs it to parse `INSERT … SELECT … ON CONFLICT`.
            .push(
                " WHERE true ON CONFLICT (tenant_id, origin, source_event_id) DO NOTHING \
                 RETURNING origin, source_event_id",
            );
        let mut claimed = vec![false; checked.len()];
        for row in self.conn.fetch_all(sql.text, sql.args).await? {
            let (origin, id) = (row.text("origin")?, row.text("source_event_id")?);
            let i = key_index
                .get(&(origin.as_str(), id.as_str()))
                .ok_or_else(|| internal("a receipt was claimed for an unknown key"))?;
            claimed[*i] = true;
        }
        let mut outcome: Vec<Option<EventOutcome>> = vec![None; checked.len()];
        let mut resent = Vec::new();
        for &i in &keys {
            if claimed[i] {
                groups[group_of[i]].fresh.push(i);
            } else {
                resent.push(i);
            }
        }

        // 4. Resends answer with the event their first delivery went to.
        if !resent.is_empty() {
            let mut sql = Sql::new(
                "SELECT k.n AS n, (SELECT r.event_id FROM event_receipts r WHERE r.tenant_id = ",
            );
            sql.bind(tenant)
                .push(
                    " AND r.origin = k.origin AND r.source_event_id = k.source_event_id) \
                     AS event_id FROM ",
                )
                .rows(
                    backend,
                    "k",
                    Rows::new()
                        .col("n", Column::I64(resent.iter().map(|&i| i as i64).collect()))
                        .col("origin", texts(&resent, |i| &checked[i].origin))
                        .col(
                            "source_event_id",
                            texts(&resent, |i| &checked[i].event.source_event_id),
                        ),
                );
            for row in self.conn.fetch_all(sql.text, sql.args).await? {
                let n = usize::try_from(row.get::<i64>("n")?).unwrap_or(usize::MAX);
                let slot = outcome
                    .get_mut(n)
                    .ok_or_else(|| internal("the receipt lookup answered for an unknown key"))?;
                *slot = Some(EventOutcome::Duplicate {
                    event_id: row.uuid("event_id")?,
                });
            }
        }

        // Decide. A group with fresh events and a target folds into it;
        // one without a target becomes a new row (its first fresh event),
        // the rest of the group folding into that.
        let mut rows: Vec<(usize, Uuid)> = Vec::new(); // (group, event id)
        for (g, group) in groups.iter().enumerate() {
            if group.fresh.is_empty() {
                continue;
            }
            let id = group.id;
            let mut first = match group.target {
                Some(_) => EventOutcome::Folded { event_id: id },
                None => EventOutcome::Accepted { event_id: id },
            };
            rows.push((g, id));
            for &i in &group.fresh {
                outcome[i] = Some(first);
                first = EventOutcome::Folded { event_id: id };
            }
        }

        // 5. Write: the new rows with a plain INSERT, the folds with an
        //    upsert on the primary key that always takes its UPDATE branch
        //    (an index probe per row, no join for the planner to get wrong;
        //    a HOT update, as no indexed column changes).
        let (folds, news): (Vec<_>, Vec<_>) = rows
            .iter()
            .copied()
            .partition(|&(g, _)| groups[g].target.is_some());
        let batch = Batch {
            tenant,
            cluster_id,
            now,
            checked: &checked,
            groups: &groups,
        };
        for (part, fold) in [(news, false), (folds, true)] {
            if !part.is_empty() {
                let sql = write_rows(backend, &batch, &part, fold);
                self.conn
                    .execute(sql.text, sql.args)
                    .await
                    .map_err(|e| e.on_foreign_key("cluster"))?;
            }
        }

        // 6. The changes, for watchers: one per event written.
        if !rows.is_empty() {
            let mut sql = Sql::new("INSERT INTO event_changes (tenant_id, seq, event_id) SELECT ");
            sql.bind(tenant).push(", k.seq, k.event_id FROM ").rows(
                backend,
                "k",
                Rows::new()
                    .col(
                        "seq",
                        Column::I64(rows.iter().map(|&(g, _)| groups[g].seq).collect()),
                    )
                    .col(
                        "event_id",
                        Column::Uuid(rows.iter().map(|&(_, id)| id).collect()),
                    ),
            );
            self.conn.execute(sql.text, sql.args).await?;
        }

        // Duplicates inside the batch answer like their first delivery.
        (0..checked.len())
            .map(|i| match outcome[first_of[i]] {
                Some(o) if first_of[i] == i => Ok(o),
                Some(o) => Ok(EventOutcome::Duplicate {
                    event_id: o.event_id(),
                }),
                None => Err(internal("an event was left without an outcome")),
            })
            .collect()
    }

    async fn get(&mut self, id: Uuid) -> Result<Event> {
        let tenant = self.tenant()?;
        self.one(
            concat!(
                "SELECT ",
                event_cols!(),
                " FROM events WHERE tenant_id = $1 AND id = $2"
            ),
            args![tenant, id],
            "event",
            event_from,
        )
        .await
    }

    async fn list(&mut self, filter: &EventFilter, page: &PageRequest) -> Result<Page<Event>> {
        let tenant = self.tenant()?;
        let mut sql = Sql::new(concat!(
            "SELECT ",
            event_cols!(),
            " FROM events WHERE tenant_id = "
        ));
        sql.bind(tenant);
        if let Some(c) = filter.cluster_id {
            sql.push(" AND cluster_id = ").bind(c);
        }
        if let Some(s) = &filter.source {
            one_of("source", s, EVENT_SOURCES)?;
            sql.push(" AND source = ").bind(s.as_str());
        }
        if let Some(c) = &filter.category {
            one_of("category", c, EVENT_CATEGORIES)?;
            sql.push(" AND category = ").bind(c.as_str());
        }
        if let Some(s) = filter.min_severity {
            severity("min_severity", s)?;
            sql.push(" AND severity >= ").bind(i32::from(s));
        }
        if let Some(t) = &filter.event_type {
            sql.push(" AND type = ").bind(t.as_str());
        }
        if let Some(n) = &filter.source_name {
            sql.push(" AND source_name = ").bind(n.as_str());
        }
        if let Some(t) = filter.since {
            sql.push(" AND received_at >= ").bind(micros(t));
        }
        if let Some(t) = filter.until {
            sql.push(" AND received_at < ").bind(micros(t));
        }
        self.keyset_page(
            sql,
            page,
            Keyset {
                time: "received_at",
                id: "id",
                descending: true,
            },
            event_from,
            |e| (e.received_at, e.id),
        )
        .await
    }

    async fn tail(&mut self, after_seq: i64, limit: i64) -> Result<Vec<Event>> {
        let tenant = self.tenant()?;
        if limit < 1 {
            return Err(StoreError::invalid("limit", "must be at least 1"));
        }
        // Changes in seq order, each joined to its event by primary key;
        // a change superseded by a later one of the same event is skipped
        // (the event comes at its latest seq). `c CROSS JOIN e` keeps the
        // changes the outer loop on SQLite too.
        self.all(
            concat!(
                "SELECT ",
                event_cols!(e),
                " FROM event_changes c CROSS JOIN events e \
                 WHERE c.tenant_id = $1 AND c.seq > $2 \
                 AND e.tenant_id = c.tenant_id AND e.id = c.event_id AND e.seq = c.seq \
                 ORDER BY c.seq LIMIT $3"
            ),
            args![tenant, after_seq, limit.min(MAX_TAIL_LIMIT)],
            event_from,
        )
        .await
    }

    async fn changes(&mut self, after_seq: i64, limit: i64) -> Result<Vec<Change>> {
        let tenant = self.tenant()?;
        if limit < 1 {
            return Err(StoreError::invalid("limit", "must be at least 1"));
        }
        let limit = limit.min(MAX_TAIL_LIMIT);
        // Two tables are read by two statements, which on PostgreSQL see two
        // snapshots: a change committed between them could show up in the
        // second read while a smaller seq committed just before it is missing
        // from the first, and a watcher moving past it would never see it.
        // So both reads stop at the head's committed `last_seq`: seqs are
        // handed out under the head's row lock, so every seq up to the
        // committed head belongs to a transaction that has committed, and both
        // statements (started later) see it.
        let upto: i64 = match self
            .conn
            .fetch_optional(
                "SELECT last_seq FROM event_seq_heads WHERE tenant_id = $1",
                args![tenant],
            )
            .await?
        {
            Some(row) => row.get("last_seq")?,
            None => 0,
        };
        if upto <= after_seq {
            return Ok(Vec::new());
        }
        let events = self
            .all(
                concat!(
                    "SELECT ",
                    event_cols!(e),
                    " FROM event_changes c CROSS JOIN events e \
                     WHERE c.tenant_id = $1 AND c.seq > $2 AND c.seq <= $3 \
                     AND e.tenant_id = c.tenant_id AND e.id = c.event_id AND e.seq = c.seq \
                     ORDER BY c.seq LIMIT $4"
                ),
                args![tenant, after_seq, upto, limit],
                event_from,
            )
            .await?;
        let remediations = self.remediations_changed(after_seq, upto, limit).await?;
        // Merge the two seq-ordered lists; the first `limit` of the merge are
        // within the first `limit` of each.
        let mut merged = Vec::with_capacity(events.len() + remediations.len());
        let mut events = events.into_iter().peekable();
        let mut remediations = remediations.into_iter().peekable();
        while (merged.len() as i64) < limit {
            let next = match (events.peek(), remediations.peek()) {
                (Some(e), Some((seq, _))) if e.seq < *seq => events.next().map(Change::Event),
                (_, Some(_)) => remediations.next().map(|(seq, r)| Change::Remediation {
                    seq,
                    remediation: r,
                }),
                (Some(_), None) => events.next().map(Change::Event),
                (None, None) => None,
            };
            match next {
                Some(change) => merged.push(change),
                None => break,
            }
        }
        Ok(merged)
    }

    async fn count_received_since(&mut self, since: DateTime<Utc>) -> Result<i64> {
        let tenant = self.tenant()?;
        self.one(
            "SELECT count(*) AS n FROM events WHERE tenant_id = $1 AND received_at >= $2",
            args![tenant, micros(since)],
            "tenant",
            |r| r.get("n"),
        )
        .await
    }

    async fn last_seq(&mut self) -> Result<i64> {
        let tenant = self.tenant()?;
        self.one(
            "SELECT COALESCE(MAX(m.seq), 0) AS n FROM ( \
             SELECT MAX(seq) AS seq FROM event_changes WHERE tenant_id = $1 \
             UNION ALL SELECT MAX(seq) AS seq FROM remediations \
             WHERE tenant_id = $1 AND seq IS NOT NULL) m",
            args![tenant],
            "tenant",
            |r| r.get("n"),
        )
        .await
    }
}
