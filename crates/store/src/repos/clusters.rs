use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::Value;
use uuid::Uuid;

use super::{push_name_prefix, SqlTx};
use crate::db::{args, micros, now, Row, Sql};
use crate::error::{Result, StoreError};
use crate::model::*;
use crate::page::{Page, PageRequest, BY_NAME};
use crate::repo::ClusterRepo;
use crate::validate;

macro_rules! cluster_cols {
    () => {
        "id, tenant_id, name, display_name, status, connection_state, agent_version, \
         last_seen_at, api_endpoint, labels, metadata, version, created_at, updated_at, deleted_at"
    };
}

/// Clusters are listed by name (the contract's order), bytewise.
fn cluster_from(r: &Row) -> Result<Cluster> {
    let labels = match r.json("labels")? {
        Value::Null => BTreeMap::new(),
        v => serde_json::from_value(v).map_err(|e| StoreError::invalid("labels", e.to_string()))?,
    };
    Ok(Cluster {
        id: r.uuid("id")?,
        tenant_id: r.uuid("tenant_id")?,
        name: r.text("name")?,
        display_name: r.text("display_name")?,
        status: r.parse("status")?,
        connection_state: r.parse("connection_state")?,
        agent_version: r.opt_text("agent_version")?,
        last_seen_at: r.opt_ts("last_seen_at")?,
        api_endpoint: r.opt_text("api_endpoint")?,
        labels,
        metadata: r.json("metadata")?,
        version: r.get("version")?,
        created_at: r.ts("created_at")?,
        updated_at: r.ts("updated_at")?,
        deleted_at: r.opt_ts("deleted_at")?,
    })
}

fn labels_json(labels: &BTreeMap<String, String>) -> Result<Value> {
    if labels.len() > 64 {
        return Err(StoreError::invalid("labels", "at most 64 labels"));
    }
    for (k, v) in labels {
        validate::text("labels", k, 63, false)?;
        validate::text("labels", v, 253, true)?;
    }
    Ok(serde_json::to_value(labels).unwrap_or_default())
}

fn check_endpoint(endpoint: Option<&str>) -> Result<()> {
    validate::opt_text("api_endpoint", endpoint, 2048)
}

/// `UPDATE clusters SET <assignments> … WHERE` one live cluster of the
/// scope's tenant, `RETURNING` it. `$1` is the tenant, `$2` the cluster.
macro_rules! update_live_cluster {
    ($set:literal) => {
        update_live_cluster!($set, "")
    };
    ($set:literal, $and:literal) => {
        concat!(
            "UPDATE clusters SET ",
            $set,
            " WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL",
            $and,
            " RETURNING ",
            cluster_cols!()
        )
    };
}

/// The probe behind a versioned cluster UPDATE that matched nothing.
const CLUSTER_VERSION: &str =
    "SELECT version FROM clusters WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL";

#[async_trait]
impl ClusterRepo for SqlTx {
    async fn create(&mut self, new: NewCluster) -> Result<Cluster> {
        let tenant = self.tenant()?;
        validate::dns_label("name", &new.name)?;
        let display_name = validate::display_name(&new.display_name, &new.name)?;
        check_endpoint(new.api_endpoint.as_deref())?;
        let labels = labels_json(&new.labels)?;
        let metadata = match new.metadata {
            Value::Null => Value::Object(Default::default()),
            v @ Value::Object(_) => v,
            _ => return Err(StoreError::invalid("metadata", "must be a JSON object")),
        };
        // Quota check under the tenant row lock: concurrent creates of one
        // tenant serialize here, so they cannot overshoot together.
        let max_clusters = self.lock_active_tenant(tenant).await?;
        if self.count_live().await? >= i64::from(max_clusters) {
            return Err(StoreError::QuotaExceeded {
                what: "clusters",
                limit: max_clusters.into(),
            });
        }
        let at = now();
        self.one(
            concat!(
                "INSERT INTO clusters (id, tenant_id, name, display_name, status, \
                 connection_state, api_endpoint, labels, metadata, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, 'provisioning', 'unknown', $5, $6, $7, $8, $8) \
                 RETURNING ",
                cluster_cols!()
            ),
            args![
                Uuid::now_v7(),
                tenant,
                new.name,
                display_name,
                new.api_endpoint,
                labels,
                metadata,
                at
            ],
            "cluster",
            cluster_from,
        )
        .await
        .map_err(|e| e.on_unique("cluster"))
    }

    async fn get(&mut self, id: Uuid) -> Result<Cluster> {
        let tenant = self.tenant()?;
        self.one(
            concat!(
                "SELECT ",
                cluster_cols!(),
                " FROM clusters WHERE tenant_id = $1 AND id = $2"
            ),
            args![tenant, id],
            "cluster",
            cluster_from,
        )
        .await
    }

    async fn list(&mut self, filter: &ClusterFilter, page: &PageRequest) -> Result<Page<Cluster>> {
        let tenant = self.tenant()?;
        let mut sql = Sql::new(concat!(
            "SELECT ",
            cluster_cols!(),
            " FROM clusters WHERE tenant_id = "
        ));
        sql.bind(tenant).push(" AND deleted_at IS NULL");
        if let Some(status) = filter.status {
            sql.push(" AND status = ").bind(status.as_str());
        }
        push_name_prefix(&mut sql, "name", filter.name_prefix.as_deref())?;
        self.text_page(sql, page, BY_NAME, cluster_from, |c| (c.name.clone(), c.id))
            .await
    }

    async fn update(
        &mut self,
        id: Uuid,
        expected_version: Option<i64>,
        update: ClusterUpdate,
    ) -> Result<Cluster> {
        let tenant = self.tenant()?;
        if let Some(d) = &update.display_name {
            validate::text("display_name", d.trim(), 200, false)?;
        }
        if let Some(e) = &update.api_endpoint {
            check_endpoint(e.as_deref())?;
        }
        let labels = update.labels.as_ref().map(labels_json).transpose()?;
        let (set_endpoint, endpoint) = match update.api_endpoint {
            Some(e) => (true, e),
            None => (false, None),
        };
        self.lock_active_tenant(tenant).await?;
        let row = self
            .conn
            .fetch_optional(
                update_live_cluster!(
                    "display_name = COALESCE($3, display_name), \
                     api_endpoint = CASE WHEN $4 THEN $5 ELSE api_endpoint END, \
                     labels = COALESCE($6, labels), updated_at = $7, version = version + 1",
                    " AND ($8 IS NULL OR version = $8)"
                ),
                args![
                    tenant,
                    id,
                    update.display_name.map(|d| d.trim().to_owned()),
                    set_endpoint,
                    endpoint,
                    labels,
                    now(),
                    expected_version
                ],
            )
            .await?;
        match row {
            Some(row) => cluster_from(&row),
            None => {
                self.explain_miss(
                    CLUSTER_VERSION,
                    args![tenant, id],
                    "cluster",
                    expected_version,
                )
                .await
            }
        }
    }

    async fn set_status(&mut self, id: Uuid, status: ClusterStatus) -> Result<Cluster> {
        let tenant = self.tenant()?;
        if status == ClusterStatus::Deleting {
            return Err(StoreError::invalid(
                "status",
                "use soft_delete to delete a cluster",
            ));
        }
        self.one(
            update_live_cluster!("status = $3, updated_at = $4, version = version + 1"),
            args![tenant, id, status.as_str(), now()],
            "cluster",
            cluster_from,
        )
        .await
    }

    async fn record_agent(&mut self, id: Uuid, report: AgentReport) -> Result<Cluster> {
        let tenant = self.tenant()?;
        validate::opt_text("agent_version", report.agent_version.as_deref(), 128)?;
        self.one(
            update_live_cluster!(
                "connection_state = $3, agent_version = COALESCE($4, agent_version), \
                 last_seen_at = $5, updated_at = $6"
            ),
            args![
                tenant,
                id,
                report.connection_state.as_str(),
                report.agent_version,
                micros(report.seen_at),
                now()
            ],
            "cluster",
            cluster_from,
        )
        .await
    }

    async fn soft_delete(&mut self, id: Uuid, expected_version: Option<i64>) -> Result<Cluster> {
        let tenant = self.tenant()?;
        let row = self
            .conn
            .fetch_optional(
                update_live_cluster!(
                    "status = 'deleting', deleted_at = $3, updated_at = $3, \
                     version = version + 1",
                    " AND ($4 IS NULL OR version = $4)"
                ),
                args![tenant, id, now(), expected_version],
            )
            .await?;
        match row {
            Some(row) => cluster_from(&row),
            None => {
                self.explain_miss(
                    CLUSTER_VERSION,
                    args![tenant, id],
                    "cluster",
                    expected_version,
                )
                .await
            }
        }
    }

    async fn count_live(&mut self) -> Result<i64> {
        let tenant = self.tenant()?;
        self.one(
            "SELECT count(*) AS n FROM clusters WHERE tenant_id = $1 AND deleted_at IS NULL",
            args![tenant],
            "tenant",
            |r| r.get("n"),
        )
        .await
    }

    async fn heartbeats(&mut self, limit: i64) -> Result<Vec<ClusterHeartbeat>> {
        if !self.scope.platform_admin {
            return Err(StoreError::PermissionDenied {
                reason: "every tenant's clusters are for the platform scope only".into(),
            });
        }
        self.all(
            "SELECT tenant_id, id, connection_state, last_seen_at FROM clusters \
             WHERE deleted_at IS NULL \
             ORDER BY last_seen_at DESC NULLS LAST, id LIMIT $1",
            args![limit],
            |r| {
                Ok(ClusterHeartbeat {
                    tenant_id: r.uuid("tenant_id")?,
                    cluster_id: r.uuid("id")?,
                    connection_state: r.parse("connection_state")?,
                    last_seen_at: r.opt_ts("last_seen_at")?,
                })
            },
        )
        .await
    }
}
