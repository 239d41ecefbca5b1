//! Connecting: URL forms and backend settings.

mod common;

use std::str::FromStr;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use zen_store::*;

#[tokio::test]
async fn unknown_scheme_is_refused() {
    let err = Store::connect("mysql://localhost/zen").await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Invalid {
                field: "database_url",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn sqlite_file_is_created_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("dir").join("zen.db");
    let url = format!("sqlite://{}", path.display());
    let store = Store::connect(&url).await.unwrap();
    assert_eq!(store.kind(), BackendKind::Sqlite);
    assert!(path.exists(), "the file and its directories are created");
    store.migrate().await.unwrap();
    store.check_migrations().await.unwrap();
    store.ping().await.unwrap();

    let mut raw = SqliteConnectOptions::from_str(&url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut raw)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    raw.close().await.unwrap();
    store.close().await;
}

#[tokio::test]
async fn sqlite_in_memory_works() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let mut tx = store.begin(&Scope::anonymous()).await.unwrap();
    tx.audit()
        .append(NewAuditRecord::new(
            "system",
            "boot",
            "server",
            AuditOutcome::Success,
        ))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin_read(&Scope::anonymous()).await.unwrap();
    assert!(tx
        .audit()
        .verify_chain(PLATFORM_TENANT)
        .await
        .unwrap()
        .is_ok());
}

#[tokio::test]
async fn debug_output_hides_the_password() {
    let Some(h) = common::Harness::new(BackendKind::Postgres, false).await else {
        return;
    };
    let with_password = h.url.replacen("postgres@", "postgres:s3cr3t-pw@", 1);
    let store = Store::connect(&with_password).await.unwrap();
    let shown = format!("{store:?}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
    assert!(shown.contains("Postgres"), "{shown}");
    store.close().await;
}
