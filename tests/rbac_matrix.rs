//! The RBAC matrix: every RPC of every Zen service, and who may call it.
//!
//! The policies live in the contracts (`(zen.common.v1.policy)` on each method). This test
//! renders, for every RPC, the decision of [`zen::authz::decide`] for each kind of caller and
//! compares it with the reviewed matrix in `tests/rbac_matrix.txt`, so no RPC is added or
//! loosened without the change showing up in review. Regenerate it with
//! `UPDATE_RBAC_MATRIX=1 cargo test --test rbac_matrix` and read the diff.

use uuid::Uuid;
use zen::authz::{decide, Caller, PolicyTable};
use zen_store::Role;

/// The callers of the matrix, with the role each holds in the addressed tenant.
fn callers() -> Vec<(&'static str, Caller, Option<Role>)> {
    let user = |platform_admin| Caller::User {
        user_id: Uuid::nil(),
        platform_admin,
    };
    vec![
        ("anonymous", Caller::Anonymous, None),
        (
            "agent",
            Caller::Agent {
                tenant_id: Uuid::nil(),
                cluster_id: Uuid::nil(),
            },
            None,
        ),
        (
            "service",
            Caller::Service {
                name: "gateway".into(),
            },
            None,
        ),
        ("operator", Caller::Operator { name: "ops".into() }, None),
        ("non-member", user(false), None),
        ("viewer", user(false), Some(Role::Viewer)),
        ("approver", user(false), Some(Role::Approver)),
        ("admin", user(false), Some(Role::Admin)),
        ("owner", user(false), Some(Role::Owner)),
        ("platform-admin", user(true), None),
    ]
}

fn render(table: &PolicyTable) -> String {
    let callers = callers();
    let mut lines = vec![format!(
        "# method | {}",
        callers
            .iter()
            .map(|(n, _, _)| *n)
            .collect::<Vec<_>>()
            .join(" ")
    )];
    let mut paths: Vec<&str> = table.paths().collect();
    paths.sort();
    for path in paths {
        let cells: Vec<&str> = callers
            .iter()
            .map(
                |(_, caller, role)| match decide(table.get(path), caller, *role) {
                    Ok(()) => "Y",
                    Err(_) => "-",
                },
            )
            .collect();
        lines.push(format!("{path} | {}", cells.join(" ")));
    }
    lines.join("\n") + "\n"
}

#[test]
fn every_rpc_has_a_policy_and_the_matrix_is_the_reviewed_one() {
    let table = PolicyTable::from_descriptor_set(zen::proto::FILE_DESCRIPTOR_SET).unwrap();
    let missing: Vec<&str> = table.paths().filter(|p| table.get(p).is_none()).collect();
    assert!(missing.is_empty(), "RPCs without a policy: {missing:?}");
    for service in zen::grpc::services::SERVICE_NAMES {
        let prefix = format!("/{service}/");
        assert!(
            table.paths().any(|p| p.starts_with(&prefix)),
            "{service} has no RPCs"
        );
    }

    let rendered = render(&table);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/rbac_matrix.txt");
    if std::env::var_os("UPDATE_RBAC_MATRIX").is_some() {
        std::fs::write(path, &rendered).unwrap();
    }
    let reviewed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        rendered == reviewed,
        "the RBAC matrix changed; review and regenerate tests/rbac_matrix.txt:\n{rendered}"
    );
}

#[test]
fn an_rpc_without_policy_is_refused_for_everyone() {
    for (name, caller, role) in callers() {
        assert!(decide(None, &caller, role).is_err(), "{name} passed");
    }
}

#[test]
fn roles_are_ordered_viewer_approver_admin_owner() {
    let table = PolicyTable::from_descriptor_set(zen::proto::FILE_DESCRIPTOR_SET).unwrap();
    let user = Caller::User {
        user_id: Uuid::nil(),
        platform_admin: false,
    };
    let create_cluster = table
        .get("/zen.tenancy.v1.TenancyService/CreateCluster")
        .expect("policy");
    let outcomes: Vec<bool> = [Role::Viewer, Role::Approver, Role::Admin, Role::Owner]
        .into_iter()
        .map(|role| decide(Some(create_cluster), &user, Some(role)).is_ok())
        .collect();
    assert_eq!(outcomes, [false, false, true, true]);
}
