//! The storage suite, run on each backend (#25): SQLite with files in a temporary folder (the embedded
//! default), a real Postgres server (`common::postgres`, one fresh database per test) with local files, and
//! Postgres with a real S3-compatible store (`common::seaweed`, one fresh prefix per test). Each test below
//! runs three times, as `<test>::sqlite`, `<test>::postgres` and `<test>::postgres_s3`. The first tests hold
//! the two migration sets to one schema.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::{Connection, Executor, Row};
use t2i_align::error::Error;
use t2i_align::storage::{
    BlobConfig, Database, Durability, FeedbackQuery, JobStatus, Label, NewFeedback, Storage, StorageConfig,
    StoredImage, VersionKind, VersionRecord,
};

/// One Postgres server for this test binary; it stops when the process ends (its watchdog sees to that).
fn server() -> &'static common::postgres::Postgres {
    static SERVER: OnceLock<common::postgres::Postgres> = OnceLock::new();
    SERVER.get_or_init(common::postgres::Postgres::start)
}

/// One SeaweedFS for this test binary, stopped the same way.
fn seaweed() -> &'static common::seaweed::Seaweed {
    static STORE: OnceLock<common::seaweed::Seaweed> = OnceLock::new();
    STORE.get_or_init(common::seaweed::Seaweed::start)
}

/// A test's storage: a temporary data directory, its database on one backend, and its object store.
struct TestDb {
    dir: tempfile::TempDir,
    database: Database,
    blobs: BlobConfig,
}

impl TestDb {
    fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let database = Database::Sqlite(dir.path().join("t2i-align.db"));
        TestDb {
            dir,
            database,
            blobs: BlobConfig::default(),
        }
    }

    /// A new, empty database on the shared server.
    async fn postgres() -> TestDb {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let server = server();
        let name = format!("storage_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let mut admin = sqlx::PgConnection::connect(&server.url()).await.unwrap();
        admin.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
        admin.close().await.unwrap();
        TestDb {
            dir: tempfile::tempdir().unwrap(),
            database: Database::Postgres(server.url_of(&name)),
            blobs: BlobConfig::default(),
        }
    }

    /// A new Postgres database, and a new prefix in the shared SeaweedFS bucket.
    async fn postgres_s3() -> TestDb {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let store = seaweed();
        let prefix = format!(
            "storage-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        TestDb {
            blobs: BlobConfig {
                url: Some(format!("s3://{}/{prefix}", common::seaweed::BUCKET)),
                s3_endpoint: Some(store.endpoint()),
                s3_region: None,
                s3_access_key: Some(common::seaweed::ACCESS_KEY.into()),
                s3_secret_key: Some(common::seaweed::SECRET_KEY.into()),
                s3_conditional_put: true,
            },
            ..TestDb::postgres().await
        }
    }

    /// Whether files live in the data directory (and a crash's half-written ones can be made by hand).
    fn local_files(&self) -> bool {
        self.blobs.url.is_none()
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn config(&self, image_retention: u64) -> StorageConfig {
        StorageConfig {
            data_dir: self.dir().to_path_buf(),
            database: self.database.clone(),
            blobs: self.blobs.clone(),
            image_retention,
            durability: Durability::Full,
        }
    }

    async fn open(&self, image_retention: u64) -> Storage {
        Storage::connect(&self.config(image_retention)).await.unwrap()
    }

    async fn open_with(&self, image_retention: u64, durability: Durability) -> Storage {
        let config = StorageConfig {
            durability,
            ..self.config(image_retention)
        };
        Storage::connect(&config).await.unwrap()
    }
}

/// `on_both_backends!(name)` runs `async fn name(db: TestDb)` as `name::sqlite`, `name::postgres` and
/// `name::postgres_s3`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::TestDb::sqlite()).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$name(super::TestDb::postgres().await).await
            }
            #[tokio::test]
            async fn postgres_s3() {
                super::$name(super::TestDb::postgres_s3().await).await
            }
        }
    )*};
}

on_both_backends!(
    a_reopen_sweeps_what_a_crash_left_and_keeps_what_was_recorded,
    keeps_the_newest_and_survives_a_reopen,
    a_damaged_file_is_noticed,
    feedback_outlives_its_image_and_pages_with_filters,
    retention_zero_stores_nothing,
    an_unwritable_data_dir_is_a_clear_error,
    jobs_move_once_to_a_final_status_and_page_newest_first,
    racing_workers_claim_each_job_once,
    a_lost_lease_fences_every_write,
    stopped_workers_jobs_run_again_until_their_attempts_are_spent,
    one_version_is_active,
    many_writers_at_once_lose_nothing,
    a_folder_version_keeps_its_source,
    a_version_registers_once_and_every_replica_fetches_it_intact,
    keys_are_stored_revoked_touched_and_audited,
    each_tenant_sees_only_its_own_rows,
);

// ---- One schema on both backends -------------------------------------------------------------------------

/// table → [(column, nullable)], sorted by column.
type Columns = BTreeMap<String, Vec<(String, bool)>>;

async fn migrator(backend: &str) -> Migrator {
    let dir = common::repo_path(&format!("src/storage/migrations/{backend}"));
    Migrator::new(Path::new(&dir)).await.expect("read the migrations")
}

#[tokio::test]
async fn both_backends_have_the_same_migrations() {
    let (sqlite, postgres) = (migrator("sqlite").await, migrator("postgres").await);
    let list = |migrator: &Migrator| -> Vec<(i64, String)> {
        migrator
            .iter()
            .map(|migration| (migration.version, migration.description.to_string()))
            .collect()
    };
    assert!(!list(&sqlite).is_empty());
    assert_eq!(list(&sqlite), list(&postgres));
}

async fn sqlite_columns() -> Columns {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    migrator("sqlite").await.run(&pool).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_%' ESCAPE '\\' \
         AND name NOT LIKE 'sqlite%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut columns = Columns::new();
    for table in tables {
        let rows = sqlx::query(&format!("PRAGMA table_info({table})"))
            .fetch_all(&pool)
            .await
            .unwrap();
        let mut list: Vec<(String, bool)> = rows
            .iter()
            .map(|row| {
                let primary: i64 = row.get("pk");
                let not_null: i64 = row.get("notnull");
                (row.get("name"), primary == 0 && not_null == 0)
            })
            .collect();
        // SQLite's implicit rowid, which Postgres spells out as a column.
        list.push(("rowid".to_string(), false));
        list.sort();
        columns.insert(table, list);
    }
    columns
}

async fn postgres_columns(url: &str) -> Columns {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap();
    migrator("postgres").await.run(&pool).await.unwrap();
    let rows = sqlx::query(
        "SELECT table_name::text AS table_name, column_name::text AS column_name, is_nullable::text AS nullable \
         FROM information_schema.columns WHERE table_schema = 'public' AND table_name NOT LIKE '\\_%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut columns = Columns::new();
    for row in rows {
        let nullable: String = row.get("nullable");
        columns
            .entry(row.get("table_name"))
            .or_default()
            .push((row.get("column_name"), nullable == "YES"));
    }
    for list in columns.values_mut() {
        list.sort();
    }
    pool.close().await;
    columns
}

#[tokio::test]
async fn both_backends_have_the_same_tables_and_columns() {
    let Database::Postgres(url) = TestDb::postgres().await.database else {
        unreachable!()
    };
    let (sqlite, postgres) = (sqlite_columns().await, postgres_columns(&url).await);
    assert!(
        sqlite.contains_key("feedback") && sqlite.contains_key("fine_tunes"),
        "{sqlite:?}"
    );
    assert_eq!(sqlite, postgres);
}

// ---- Errors that name the database ------------------------------------------------------------------------

#[tokio::test]
async fn an_unreachable_postgres_is_a_clear_error_without_its_password() {
    let port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("postgres://app:s3cret@127.0.0.1:{port}/t2i");
    let config = StorageConfig {
        database: Database::from_url(Some(&url), dir.path()).unwrap(),
        ..StorageConfig::embedded(dir.path(), 1)
    };
    let started = std::time::Instant::now();
    let err = Storage::connect(&config).await.err().unwrap();
    let text = err.to_string();
    assert!(
        text.contains(&format!("postgres://app:***@127.0.0.1:{port}/t2i")),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn ping_fails_once_the_database_is_gone() {
    let db = TestDb::postgres().await;
    let storage = db.open(1).await;
    storage.ping().await.unwrap();
    let Database::Postgres(url) = &db.database else {
        unreachable!()
    };
    let name = url.rsplit('/').next().unwrap().to_string();
    let mut admin = sqlx::PgConnection::connect(&server().url()).await.unwrap();
    admin
        .execute(format!("DROP DATABASE {name} WITH (FORCE)").as_str())
        .await
        .unwrap();
    let err = storage.ping().await.unwrap_err();
    assert_eq!(err.kind(), "unavailable", "{err}");
    assert!(err.to_string().contains(&name), "{err}");
}

// ---- The suite ----------------------------------------------------------------------------------------------

fn image(seed: u64) -> StoredImage {
    StoredImage {
        png: Arc::new(vec![seed as u8; 16]),
        prompt: "a red circle".into(),
        seed,
        model: "shapes-sd".into(),
        reward: Some(0.5),
        tenant: "default".into(),
    }
}

async fn a_reopen_sweeps_what_a_crash_left_and_keeps_what_was_recorded(db: TestDb) {
    let storage = db.open(5).await;
    let kept = storage.insert_image(&image(1)).await.unwrap().unwrap();
    // A crash between writing a file and committing its row, and (in a local folder) one in the middle of
    // writing a file.
    let orphan = "images/img_0123456789abcdef0123456789abcdef.png";
    storage.blobs().put(orphan, b"orphan".to_vec()).await.unwrap();
    storage
        .blobs()
        .put("feedback/fb_orphan.png", b"orphan".to_vec())
        .await
        .unwrap();
    if db.local_files() {
        std::fs::write(db.dir().join("images/img_x.png#17"), b"half").unwrap();
        std::fs::write(db.dir().join("images/img_y.partial-0123"), b"half").unwrap();
    }
    drop(storage);
    let reopened = db.open_with(5, Durability::Normal).await;
    let listed = |folder: &'static str| {
        let storage = &reopened;
        async move {
            let mut keys: Vec<String> = storage
                .blobs()
                .list(folder)
                .await
                .unwrap()
                .into_iter()
                .map(|b| b.key)
                .collect();
            keys.sort();
            keys
        }
    };
    if reopened.orphan_grace().is_zero() {
        // SQLite and a local folder: this process alone writes them, so the start-up sweep removes every orphan.
        assert_eq!(listed("images").await, vec![format!("images/{kept}.png")]);
        assert!(listed("feedback").await.is_empty());
        let left: Vec<String> = std::fs::read_dir(db.dir().join("images"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec![format!("{kept}.png")], "half-written files go too");
    } else {
        // A shared store: another replica may be about to commit the row of a young file, so it stays until
        // it is older than the grace.
        assert!(listed("images").await.contains(&orphan.to_string()));
        assert_eq!(reopened.sweep(std::time::Duration::from_secs(600)).await.unwrap(), 0);
        assert!(reopened.sweep(std::time::Duration::ZERO).await.unwrap() >= 2);
        assert_eq!(listed("images").await, vec![format!("images/{kept}.png")]);
        assert!(listed("feedback").await.is_empty());
    }
    assert_eq!(reopened.image(&kept, "id", None).await.unwrap().seed, 1);
    assert_eq!(
        db.dir().join("images").exists(),
        db.local_files(),
        "files live in the data directory only when no object store is named"
    );
}

async fn keeps_the_newest_and_survives_a_reopen(db: TestDb) {
    let storage = db.open(2).await;
    let first = storage.insert_image(&image(1)).await.unwrap().unwrap();
    let second = storage.insert_image(&image(2)).await.unwrap().unwrap();
    let third = storage.insert_image(&image(u64::MAX)).await.unwrap().unwrap();
    assert!(first.starts_with("img_") && first.len() == 36);
    assert_eq!(storage.image_count().await.unwrap(), 2);
    let err = storage.image(&first, "image_ids[1]", None).await.unwrap_err();
    assert_eq!(err.param(), Some("image_ids[1]"));
    assert!(err.to_string().contains("last 2 generated images"), "{err}");
    assert!(
        !storage.blobs().exists(&format!("images/{first}.png")).await.unwrap(),
        "the old file is gone too"
    );
    drop(storage);

    let reopened = db.open(2).await;
    assert_eq!(reopened.image(&second, "id", None).await.unwrap().seed, 2);
    let last = reopened.image(&third, "id", None).await.unwrap();
    assert_eq!(last.seed, u64::MAX);
    assert_eq!(last.reward, Some(0.5));
    assert_eq!(*last.png, vec![255u8; 16]);
}

/// Above 200 images of retention, the oldest are swept after every hundredth of the retention, so storing an
/// image does not read every stored image's age each time: the count stays within that many of the limit.
#[tokio::test]
async fn a_large_retention_is_kept_by_sweeps_within_a_hundredth_of_it() {
    let db = TestDb::sqlite();
    assert_eq!(t2i_align::storage::retention_sweep_every(199), 1);
    assert_eq!(t2i_align::storage::retention_sweep_every(300), 3);
    let storage = db.open(300).await;
    let mut ids = Vec::new();
    for seed in 0..310u64 {
        ids.push(storage.insert_image(&image(seed)).await.unwrap().unwrap());
        let count = storage.image_count().await.unwrap();
        assert!(
            count <= 302 && count <= seed + 1,
            "{count} images after {} stored",
            seed + 1
        );
    }
    // The 309th image swept the store down to 300; the 310th is one more.
    assert_eq!(storage.image_count().await.unwrap(), 301);
    assert!(storage.image(&ids[8], "id", None).await.is_err(), "the oldest are gone");
    assert_eq!(storage.image(&ids[9], "id", None).await.unwrap().seed, 9);
    assert!(!storage.blobs().exists(&format!("images/{}.png", ids[0])).await.unwrap());
}

async fn a_damaged_file_is_noticed(db: TestDb) {
    let storage = db.open(5).await;
    let id = storage.insert_image(&image(3)).await.unwrap().unwrap();
    // Damaged in place, as a disk or a store's bug would.
    storage
        .blobs()
        .put(&format!("images/{id}.png"), b"garbage".to_vec())
        .await
        .unwrap();
    let err = storage.image(&id, "id", None).await.unwrap_err();
    assert!(err.to_string().contains("SHA-256"), "{err}");
}

async fn feedback_outlives_its_image_and_pages_with_filters(db: TestDb) {
    let storage = db.open(1).await;
    let id = storage.insert_image(&image(1)).await.unwrap().unwrap();
    let stored = storage.image(&id, "image_id", None).await.unwrap();
    let mut ids = Vec::new();
    for (index, label) in [Label::Good, Label::Bad, Label::Good, Label::Skip]
        .into_iter()
        .enumerate()
    {
        let feedback = storage
            .insert_feedback(&NewFeedback {
                image_id: Some(id.clone()),
                model: (index < 3).then(|| stored.model.clone()),
                prompt: stored.prompt.clone(),
                label,
                rater: Some(if index < 2 { "ann" } else { "bob" }.into()),
                image: stored.png.clone(),
                extension: "png",
                tenant: "default".into(),
            })
            .await
            .unwrap();
        ids.push(feedback.id);
    }
    // The image expires; its ratings keep their copy.
    storage.insert_image(&image(2)).await.unwrap();
    assert!(storage.image(&id, "image_id", None).await.is_err());
    let query = |label, rater: Option<&str>, after: Option<&String>, limit| FeedbackQuery {
        label,
        rater: rater.map(str::to_string),
        image_id: None,
        model: None,
        after: after.cloned(),
        limit,
        tenant: None,
    };
    let (page, more) = storage.list_feedback(&query(None, None, None, 3)).await.unwrap();
    assert_eq!(page.len(), 3);
    assert!(more);
    let (rest, more) = storage
        .list_feedback(&query(None, None, Some(&page[2].id), 3))
        .await
        .unwrap();
    assert_eq!(rest.iter().map(|f| &f.id).collect::<Vec<_>>(), vec![&ids[3]]);
    assert!(!more);
    let (good, _) = storage
        .list_feedback(&query(Some(Label::Good), None, None, 10))
        .await
        .unwrap();
    assert_eq!(good.len(), 2);
    let (bob_good, _) = storage
        .list_feedback(&query(Some(Label::Good), Some("bob"), None, 10))
        .await
        .unwrap();
    assert_eq!(bob_good.len(), 1);
    assert_eq!(*storage.feedback_image(&bob_good[0]).await.unwrap(), vec![1u8; 16]);
    // The generating model is kept with the rating, after the image has gone.
    let (by_model, _) = storage
        .list_feedback(&FeedbackQuery {
            model: Some(stored.model.clone()),
            ..query(None, None, None, 10)
        })
        .await
        .unwrap();
    assert_eq!(
        by_model.iter().map(|f| &f.id).collect::<Vec<_>>(),
        ids[..3].iter().collect::<Vec<_>>()
    );
    assert!(by_model
        .iter()
        .all(|f| f.model.as_deref() == Some(stored.model.as_str())));
    let (other, _) = storage
        .list_feedback(&FeedbackQuery {
            model: Some("ft-other".into()),
            ..query(None, None, None, 10)
        })
        .await
        .unwrap();
    assert!(other.is_empty());
    let err = storage
        .list_feedback(&query(None, None, Some(&"fb_nope".to_string()), 3))
        .await
        .unwrap_err();
    assert_eq!(err.param(), Some("after"));
    let gone = storage
        .list_feedback(&query(
            None,
            None,
            Some(&"fb_0123456789abcdef0123456789abcdef".to_string()),
            3,
        ))
        .await
        .unwrap_err();
    assert_eq!(gone.kind(), "not_found", "{gone}");
}

async fn keys_are_stored_revoked_touched_and_audited(db: TestDb) {
    let storage = db.open(1).await;
    let new = |name: &str, tenant: &str| t2i_align::storage::NewKey {
        name: name.into(),
        tenant: tenant.into(),
        scopes: vec!["inference".into(), "feedback".into()],
        digest: format!("{:0>64}", name.len()),
        prefix: "t2i_00000000".into(),
        created_by: Some("ops".into()),
        expires_at: Some(i64::MAX),
        requests_per_minute: Some(5),
        work_per_minute: None,
    };
    let a = storage.insert_key(&new("a", "acme")).await.unwrap();
    let b = storage.insert_key(&new("bb", "other")).await.unwrap();
    assert_eq!(a.scopes, ["inference", "feedback"]);
    assert_eq!(
        storage.get_key(&a.id).await.unwrap().unwrap().requests_per_minute,
        Some(5)
    );
    // Rate windows count atomically and are pruned once done with.
    assert_eq!(storage.count_rate("key:a", 60_000, 1, 0).await.unwrap(), (1, 0));
    assert_eq!(storage.count_rate("key:a", 60_000, 1, 7).await.unwrap(), (2, 7));
    assert_eq!(storage.count_rate("key:a", 120_000, 1, 0).await.unwrap(), (1, 0));
    assert_eq!(storage.prune_rate_windows(120_000).await.unwrap(), 1);
    assert_eq!(storage.list_keys(None).await.unwrap().len(), 2);
    assert_eq!(
        storage.list_keys(Some("other")).await.unwrap(),
        std::slice::from_ref(&b)
    );
    // A digest is stored once.
    assert!(storage.insert_key(&new("c", "acme")).await.is_err());
    // Last use only moves forward, whatever order replicas write in.
    storage
        .touch_keys(&[(a.id.clone(), 50), (b.id.clone(), 7)])
        .await
        .unwrap();
    storage.touch_keys(&[(a.id.clone(), 40)]).await.unwrap();
    let a_now = storage.get_key(&a.id).await.unwrap().unwrap();
    assert_eq!(a_now.last_used_at, Some(50));
    // Revocation keeps its first time; an unknown id is None.
    let revoked = storage.revoke_key(&a.id).await.unwrap().unwrap();
    let at = revoked.revoked_at.unwrap();
    assert_eq!(storage.revoke_key(&a.id).await.unwrap().unwrap().revoked_at, Some(at));
    assert!(storage.revoke_key("key_none").await.unwrap().is_none());
    // The audit log pages newest first, by tenant too.
    let mut ids = Vec::new();
    for (tenant, action) in [("acme", "key.create"), ("other", "key.create"), ("acme", "key.revoke")] {
        let entry = t2i_align::storage::NewAudit {
            key_name: Some("ops"),
            tenant,
            action,
            target: &a.id,
            detail: Some(serde_json::json!({"n": ids.len()})),
        };
        ids.push(storage.audit(&entry).await.unwrap());
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let page = storage.list_audit(None, None, 2).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        [&ids[2], &ids[1]]
    );
    let rest = storage.list_audit(None, Some(&ids[1]), 10).await.unwrap();
    assert_eq!(rest.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), [&ids[0]]);
    let acme = storage.list_audit(Some("acme"), None, 10).await.unwrap();
    assert_eq!(acme.len(), 2);
    assert_eq!(acme[0].detail.as_deref(), Some(r#"{"n":2}"#));
    let unknown = storage.list_audit(None, Some("aud_none"), 10).await.unwrap_err();
    assert_eq!(unknown.kind(), "not_found", "{unknown}");
}

async fn each_tenant_sees_only_its_own_rows(db: TestDb) {
    let storage = db.open(10).await;
    let mut ids = Vec::new();
    for tenant in ["acme", "other", "acme"] {
        let id = storage
            .insert_image(&StoredImage {
                tenant: tenant.into(),
                ..image(ids.len() as u64)
            })
            .await
            .unwrap()
            .unwrap();
        ids.push(id);
    }
    // Images: another tenant's id reads as unknown, and listings hold only the tenant's.
    assert_eq!(storage.image(&ids[0], "id", Some("acme")).await.unwrap().tenant, "acme");
    let hidden = storage.image(&ids[1], "image_ids[0]", Some("acme")).await.unwrap_err();
    assert_eq!(hidden.param(), Some("image_ids[0]"));
    assert!(storage.image(&ids[1], "id", None).await.is_ok());
    let (acme, _) = storage.list_images(Some("acme"), None, 10).await.unwrap();
    assert_eq!(
        acme.iter().map(|record| &record.id).collect::<Vec<_>>(),
        [&ids[0], &ids[2]]
    );
    let (all, _) = storage.list_images(None, None, 10).await.unwrap();
    assert_eq!(all.len(), 3);
    // Another tenant's id is no cursor for it.
    let cursor = storage.list_images(Some("acme"), Some(&ids[1]), 10).await.unwrap_err();
    assert_eq!(cursor.kind(), "not_found", "{cursor}");
    // Ratings: listed, paged and deleted per tenant.
    let mut ratings = Vec::new();
    for tenant in ["acme", "other"] {
        let rating = storage
            .insert_feedback(&NewFeedback {
                image_id: None,
                model: None,
                prompt: "a red circle".into(),
                label: Label::Good,
                rater: None,
                image: Arc::new(vec![1; 8]),
                extension: "png",
                tenant: tenant.into(),
            })
            .await
            .unwrap();
        ratings.push(rating);
    }
    let only = |tenant: Option<&str>| FeedbackQuery {
        limit: 10,
        tenant: tenant.map(String::from),
        ..FeedbackQuery::default()
    };
    let (page, _) = storage.list_feedback(&only(Some("other"))).await.unwrap();
    assert_eq!(page, [ratings[1].clone()]);
    assert_eq!(storage.list_feedback(&only(None)).await.unwrap().0.len(), 2);
    assert!(storage
        .delete_feedback(&ratings[1].id, Some("acme"))
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        storage.list_feedback(&only(None)).await.unwrap().0.len(),
        2,
        "nothing was deleted"
    );
    assert!(storage
        .delete_feedback(&ratings[1].id, Some("other"))
        .await
        .unwrap()
        .is_some());
    // Jobs: recorded with their tenant, listed per tenant.
    let spec = serde_json::json!({});
    storage.insert_job("ft_a", "base", &spec, "acme").await.unwrap();
    storage.insert_job("ft_b", "base", &spec, "other").await.unwrap();
    assert_eq!(storage.job("ft_b").await.unwrap().unwrap().tenant, "other");
    let (acme_jobs, _) = storage.list_jobs(Some("acme"), None, None, 10).await.unwrap();
    assert_eq!(
        acme_jobs.iter().map(|job| job.id.as_str()).collect::<Vec<_>>(),
        ["ft_a"]
    );
    assert!(storage.list_jobs(Some("acme"), None, Some("ft_b"), 10).await.is_err());
    // A tenant's use of jobs: queued and running ones count, and run time within the window.
    let now = t2i_align::storage::now_millis();
    assert_eq!(
        storage.tenant_job_use("acme", now, 86_400_000).await.unwrap(),
        (1, 0, 0)
    );
    assert_eq!(
        storage.tenant_job_use("nobody", now, 86_400_000).await.unwrap(),
        (0, 0, 0)
    );
}

async fn retention_zero_stores_nothing(db: TestDb) {
    let storage = db.open(0).await;
    assert!(storage.insert_image(&image(1)).await.unwrap().is_none());
    assert_eq!(storage.image_count().await.unwrap(), 0);
}

async fn an_unwritable_data_dir_is_a_clear_error(db: TestDb) {
    let blocker = db.dir().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let config = StorageConfig {
        data_dir: blocker.join("data"),
        ..db.config(1)
    };
    let err = Storage::connect(&config).await.err().unwrap();
    assert!(err.to_string().contains("cannot create it"), "{err}");
}

async fn jobs_move_once_to_a_final_status_and_page_newest_first(db: TestDb) {
    let storage = db.open(1).await;
    let spec = serde_json::json!({"steps": 3});
    storage.insert_job("ft_a", "base", &spec, "default").await.unwrap();
    storage.insert_job("ft_b", "base", &spec, "default").await.unwrap();
    let (job, lease) = storage.claim_job("w1", LEASE, 2).await.unwrap().unwrap();
    assert_eq!(
        (job.id.as_str(), job.attempt, job.worker.as_deref()),
        ("ft_a", 1, Some("w1"))
    );
    assert_eq!(job.status, JobStatus::Running);
    assert!(job.started_at.is_some() && job.lease_expires_at.is_some());
    assert!(storage
        .set_job_status("ft_b", JobStatus::Cancelled, None)
        .await
        .unwrap());
    assert!(!storage.set_job_status("ft_b", JobStatus::Running, None).await.unwrap());
    assert!(
        storage.claim_job("w2", LEASE, 2).await.unwrap().is_none(),
        "a cancelled job is not claimed"
    );
    assert!(storage
        .finish_job(&lease, JobStatus::Failed, Some("boom"))
        .await
        .unwrap());
    assert!(
        !storage.finish_job(&lease, JobStatus::Succeeded, None).await.unwrap(),
        "final once"
    );
    drop(storage);

    let storage = db.open(1).await;
    let job = storage.job("ft_a").await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.error.as_deref(), Some("boom"));
    assert!(job.finished_at.is_some() && job.lease_expires_at.is_none());
    let (jobs, more) = storage.list_jobs(None, None, None, 1).await.unwrap();
    assert_eq!(jobs[0].id, "ft_b", "newest first");
    assert!(more);
    let (jobs, more) = storage.list_jobs(None, None, Some("ft_b"), 5).await.unwrap();
    assert_eq!(jobs.iter().map(|job| job.id.as_str()).collect::<Vec<_>>(), vec!["ft_a"]);
    assert!(!more);
    let (failed, _) = storage.list_jobs(None, Some(JobStatus::Failed), None, 5).await.unwrap();
    assert_eq!(failed.len(), 1);
}

/// A long lease, for claims that must not expire during a test.
const LEASE: Duration = Duration::from_secs(600);

/// Waits until a lease of `Duration::ZERO` taken now has expired (the clock is in milliseconds).
async fn past_expiry() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}

async fn racing_workers_claim_each_job_once(db: TestDb) {
    let storage = Arc::new(db.open(1).await);
    let spec = serde_json::json!({});
    for index in 0..6 {
        storage
            .insert_job(&format!("ft_{index}"), "base", &spec, "default")
            .await
            .unwrap();
    }
    // Twelve workers claim at once: six get one job each, and the rest get none.
    let claims = futures_util::future::join_all((0..12).map(|worker| {
        let storage = storage.clone();
        async move { storage.claim_job(&format!("w{worker}"), LEASE, 2).await.unwrap() }
    }))
    .await;
    let mut claimed: Vec<String> = claims.iter().flatten().map(|(job, _)| job.id.clone()).collect();
    claimed.sort();
    assert_eq!(claimed, (0..6).map(|index| format!("ft_{index}")).collect::<Vec<_>>());
    assert!(claims
        .iter()
        .flatten()
        .all(|(job, lease)| job.attempt == 1 && lease.attempt == 1));
}

async fn a_lost_lease_fences_every_write(db: TestDb) {
    let storage = db.open(1).await;
    storage
        .insert_job("ft_a", "base", &serde_json::json!({}), "default")
        .await
        .unwrap();
    // w1's lease runs out (it stopped renewing): w2 claims the job as attempt 2.
    let (_, old) = storage.claim_job("w1", Duration::ZERO, 3).await.unwrap().unwrap();
    past_expiry().await;
    let (job, new) = match storage.claim_job("w2", LEASE, 3).await.unwrap() {
        Some(claim) => claim,
        None => panic!("the expired job is claimed again"),
    };
    assert_eq!((job.attempt, new.attempt, job.worker.as_deref()), (2, 2, Some("w2")));
    // Everything attempt 1 still tries is refused, and changes nothing.
    let lost = |result: Result<(), Error>| {
        assert!(
            matches!(result, Err(Error::LeaseLost { ref job, attempt: 1 }) if job == "ft_a"),
            "{result:?}"
        )
    };
    lost(storage.set_job_stage(&old, "train", 0.5).await);
    lost(storage.set_job_progress(&old, 0.9).await);
    lost(storage.set_job_metrics(&old, &serde_json::json!({"x": 1})).await);
    lost(storage.set_job_result(&old, "base-ft-a").await);
    lost(
        storage
            .insert_job_event(&old, "info", "stage", "late", None)
            .await
            .map(|_| ()),
    );
    assert!(!storage.renew_lease(&old, LEASE).await.unwrap());
    assert!(!storage.requeue_job(&old).await.unwrap());
    assert!(!storage.finish_job(&old, JobStatus::Succeeded, None).await.unwrap());
    let version = VersionRecord {
        id: "base-ft-a".into(),
        created_at: 1,
        kind: "diffusion".into(),
        source: "fine_tune".into(),
        path: "models/base-ft-a-00000000".into(),
        parent: Some("base".into()),
        job_id: Some("ft_a".into()),
        metrics: None,
        checksums: None,
        active: false,
        tenant: Some("acme".into()),
    };
    lost(storage.insert_version_fenced(&old, &version).await);
    assert!(
        storage.version("base-ft-a").await.unwrap().is_none(),
        "no row from a lost lease"
    );
    let job = storage.job("ft_a").await.unwrap().unwrap();
    assert_eq!(
        (job.stage, job.progress, job.metrics, job.result_model),
        (None, 0.0, None, None)
    );
    assert!(storage.list_events("ft_a", None, 10).await.unwrap().0.is_empty());
    // The holder writes, once.
    storage.set_job_stage(&new, "register", 0.97).await.unwrap();
    storage
        .insert_job_event(&new, "info", "stage", "register: started", None)
        .await
        .unwrap();
    storage.insert_version_fenced(&new, &version).await.unwrap();
    assert!(
        storage.insert_version_fenced(&new, &version).await.is_err(),
        "a version id registers once"
    );
    storage.set_job_result(&new, "base-ft-a").await.unwrap();
    assert!(storage.renew_lease(&new, LEASE).await.unwrap());
    assert!(storage.finish_job(&new, JobStatus::Succeeded, None).await.unwrap());
    let job = storage.job("ft_a").await.unwrap().unwrap();
    assert_eq!(
        (job.status, job.result_model.as_deref()),
        (JobStatus::Succeeded, Some("base-ft-a"))
    );
}

async fn stopped_workers_jobs_run_again_until_their_attempts_are_spent(db: TestDb) {
    let storage = db.open(1).await;
    storage
        .insert_job("ft_a", "base", &serde_json::json!({}), "default")
        .await
        .unwrap();
    // A shutdown gives the job back: the next claim is attempt 2.
    let (_, first) = storage.claim_job("w1", LEASE, 2).await.unwrap().unwrap();
    assert!(storage.requeue_job(&first).await.unwrap());
    let job = storage.job("ft_a").await.unwrap().unwrap();
    assert_eq!(
        (job.status, job.worker, job.lease_expires_at),
        (JobStatus::Queued, None, None)
    );
    assert!(
        storage.fail_expired_jobs(2).await.unwrap().is_empty(),
        "a queued job is not expired"
    );
    // Attempt 2's worker dies: its lease runs out, and with no attempts left the job fails, with an event.
    let (_, second) = storage.claim_job("w2", Duration::ZERO, 2).await.unwrap().unwrap();
    assert_eq!(second.attempt, 2);
    past_expiry().await;
    assert!(
        storage.claim_job("w3", LEASE, 2).await.unwrap().is_none(),
        "no attempts left"
    );
    assert_eq!(storage.fail_expired_jobs(2).await.unwrap(), vec!["ft_a".to_string()]);
    let job = storage.job("ft_a").await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    let error = job.error.unwrap();
    assert!(
        error.contains("interrupted") && error.contains("attempt 2 of 2") && error.contains("w2"),
        "{error}"
    );
    assert!(job.finished_at.is_some());
    let (events, _) = storage.list_events("ft_a", None, 10).await.unwrap();
    assert_eq!(events.last().map(|event| event.level.as_str()), Some("error"));
    assert!(storage.fail_expired_jobs(2).await.unwrap().is_empty(), "failed once");
    // A job cancelled on another replica: its worker's next renewal finds the lease gone.
    storage
        .insert_job("ft_b", "base", &serde_json::json!({}), "default")
        .await
        .unwrap();
    let (_, lease) = storage.claim_job("w4", LEASE, 2).await.unwrap().unwrap();
    assert!(storage
        .set_job_status("ft_b", JobStatus::Cancelled, None)
        .await
        .unwrap());
    assert!(!storage.renew_lease(&lease, LEASE).await.unwrap());
}

async fn one_version_is_active(db: TestDb) {
    let storage = db.open(1).await;
    storage
        .upsert_folder_version("base", VersionKind::Diffusion, "/models/base")
        .await
        .unwrap();
    storage
        .upsert_folder_version("other", VersionKind::Diffusion, "/models/other")
        .await
        .unwrap();
    assert!(storage.rollout().await.unwrap().is_none());
    assert_eq!(storage.set_active_version("base").await.unwrap(), 1);
    assert_eq!(
        storage.set_active_version("base").await.unwrap(),
        1,
        "the same version: no new rollout"
    );
    assert_eq!(storage.set_active_version("other").await.unwrap(), 2);
    let rollout = storage.rollout().await.unwrap().unwrap();
    assert_eq!((rollout.version.as_str(), rollout.generation), ("other", 2));
    let versions = storage.versions(VersionKind::Diffusion).await.unwrap();
    let active: Vec<_> = versions.iter().filter(|v| v.active).map(|v| v.id.as_str()).collect();
    assert_eq!(active, vec!["other"]);
    assert!(matches!(
        storage.set_active_version("missing").await,
        Err(Error::NotFound(_))
    ));
    let still: Vec<_> = storage
        .versions(VersionKind::Diffusion)
        .await
        .unwrap()
        .into_iter()
        .filter(|v| v.active)
        .map(|v| v.id)
        .collect();
    assert_eq!(still, vec!["other".to_string()], "a failed activation changes nothing");
    assert_eq!(storage.rollout().await.unwrap().unwrap().generation, 2);

    // Replicas report what they serve; one silent for too long, or stopped, is left out.
    let report = |id: &str, generation: i64, seen_at: i64| t2i_align::storage::ReplicaRecord {
        id: id.into(),
        roles: "api,worker".into(),
        version: "other".into(),
        generation,
        error: None,
        started_at: 1,
        seen_at,
    };
    storage.report_replica(&report("a", 1, 1_000)).await.unwrap();
    storage.report_replica(&report("b", 2, 5_000)).await.unwrap();
    storage.report_replica(&report("a", 2, 6_000)).await.unwrap();
    storage.report_replica(&report("c", 2, 500)).await.unwrap();
    let replicas = storage.replicas(900).await.unwrap();
    assert_eq!(replicas, vec![report("a", 2, 6_000), report("b", 2, 5_000)]);
    storage.forget_replica("a").await.unwrap();
    assert_eq!(storage.replicas(0).await.unwrap(), vec![report("b", 2, 5_000)]);
}

/// Writers on several connections at once: every rating and job lands, with no lost or duplicated row.
async fn many_writers_at_once_lose_nothing(db: TestDb) {
    let storage = Arc::new(db.open(100).await);
    let mut tasks = Vec::new();
    for index in 0..24u64 {
        let storage = storage.clone();
        tasks.push(tokio::spawn(async move {
            storage
                .insert_feedback(&NewFeedback {
                    image_id: None,
                    model: None,
                    prompt: format!("prompt {index}"),
                    label: if index % 2 == 0 { Label::Good } else { Label::Bad },
                    rater: Some("ann".into()),
                    image: Arc::new(vec![index as u8; 8]),
                    extension: "png",
                    tenant: "default".into(),
                })
                .await
                .unwrap();
            storage
                .insert_job(
                    &format!("ft_{index:032}"),
                    "base",
                    &serde_json::json!({"index": index}),
                    "default",
                )
                .await
                .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let (ratings, more) = storage
        .list_feedback(&FeedbackQuery {
            limit: 100,
            ..FeedbackQuery::default()
        })
        .await
        .unwrap();
    assert!(!more);
    assert_eq!(ratings.len(), 24);
    let mut prompts: Vec<_> = ratings.iter().map(|rating| rating.prompt.clone()).collect();
    prompts.sort();
    prompts.dedup();
    assert_eq!(prompts.len(), 24);
    let counts = storage.job_counts().await.unwrap();
    assert_eq!(counts, vec![("queued".to_string(), 24)]);
    // The job pages walk every job once, newest first.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let (page, more) = storage.list_jobs(None, None, after.as_deref(), 5).await.unwrap();
        seen.extend(page.iter().map(|job| job.id.clone()));
        after = page.last().map(|job| job.id.clone());
        if !more {
            break;
        }
    }
    assert_eq!(seen.len(), 24);
    let job = storage.job(&seen[0]).await.unwrap().unwrap();
    assert_eq!(
        job.spec["index"].as_u64().map(|index| format!("ft_{index:032}")),
        Some(job.id)
    );
}

/// A folder's version may move (its path is refreshed), but never overwrites a fine-tuned version's row.
async fn a_folder_version_keeps_its_source(db: TestDb) {
    let storage = db.open(1).await;
    storage
        .upsert_folder_version("base", VersionKind::Diffusion, "/models/a")
        .await
        .unwrap();
    let moved = storage
        .upsert_folder_version("base", VersionKind::Diffusion, "/models/b")
        .await
        .unwrap();
    assert_eq!(moved.path, "/models/b");
    let mut tuned = moved.clone();
    tuned.id = "ft-1".into();
    tuned.source = "fine_tune".into();
    tuned.path = "models/ft-1".into();
    tuned.parent = Some("base".into());
    tuned.metrics = Some(serde_json::json!({"reward": 0.5}));
    storage.insert_version(&tuned).await.unwrap();
    let kept = storage
        .upsert_folder_version("ft-1", VersionKind::Diffusion, "/elsewhere")
        .await
        .unwrap();
    assert_eq!(kept.source, "fine_tune");
    assert_eq!(kept.path, "models/ft-1");
    assert_eq!(kept.metrics, Some(serde_json::json!({"reward": 0.5})));
    let all = storage.versions(VersionKind::Diffusion).await.unwrap();
    assert_eq!(
        all.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(),
        vec!["base", "ft-1"]
    );
    assert!(storage.versions(VersionKind::Reward).await.unwrap().is_empty());
}

/// A model folder as a trainer leaves it, with `tag` in its weights.
fn candidate(parent: &Path, name: &str, tag: &str) -> std::path::PathBuf {
    let folder = parent.join(name);
    std::fs::create_dir_all(folder.join("unet")).unwrap();
    std::fs::write(folder.join("unet/model.onnx"), format!("weights {tag}")).unwrap();
    std::fs::write(folder.join("model_index.json"), b"{}").unwrap();
    folder
}

/// Registration (#25): files, then a create-only manifest, then the row; two racing registrations of one id
/// leave exactly one version and no stray files; a second replica (its own data directory, the same database
/// and store) fetches the version, downloading it from a remote store and checking every digest.
async fn a_version_registers_once_and_every_replica_fetches_it_intact(db: TestDb) {
    use t2i_align::registry::{Candidate, Registry, MANIFEST};
    let storage = Arc::new(db.open(1).await);
    let registry = Arc::new(Registry::new(storage.clone(), db.dir()).unwrap());
    let jobs = tempfile::tempdir().unwrap();
    let metrics = serde_json::json!({"gate": {"passed": true}});
    // Two jobs race to register the same version id. (Two attempts of one job cannot: the registration is
    // fenced by the job's lease, and a later attempt reuses the earlier one's row.)
    let register = |folder: std::path::PathBuf, job_id: &'static str| {
        let registry = registry.clone();
        let metrics = metrics.clone();
        async move {
            registry
                .register_candidate(Candidate {
                    kind: VersionKind::Diffusion,
                    folder: &folder,
                    id: "base-ft-1",
                    parent: "base",
                    job_id,
                    lease: None,
                    metrics: &metrics,
                    tenant: None,
                })
                .await
        }
    };
    let first = candidate(jobs.path(), "a", "a");
    let second = candidate(jobs.path(), "b", "b");
    let (one, two) = tokio::join!(register(first.clone(), "ft_1"), register(second.clone(), "ft_2"));
    assert!(one.is_ok() != two.is_ok(), "exactly one wins: {one:?} {two:?}");
    let (record, loser) = match one {
        Ok(record) => (record, second),
        Err(_) => (two.unwrap(), first),
    };
    assert!(
        loser.join("unet/model.onnx").is_file(),
        "the losing candidate is left where it was"
    );
    assert!(!loser.join(MANIFEST).exists());
    let stored: Vec<String> = storage
        .blobs()
        .list("models")
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.key)
        .collect();
    assert!(
        stored.iter().all(|key| key.starts_with(&format!("{}/", record.path))),
        "{stored:?}"
    );
    assert_eq!(stored.len(), 3, "two files and the manifest: {stored:?}");
    let manifest: serde_json::Value = serde_json::from_slice(
        &storage
            .blobs()
            .get(&format!("{}/{MANIFEST}", record.path))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["files"], record.checksums.clone().unwrap());
    assert_eq!(storage.versions(VersionKind::Diffusion).await.unwrap().len(), 1);

    let folder = registry.fetch(&record).await.unwrap();
    assert!(folder.join("unet/model.onnx").is_file());

    // Another replica: its own data directory, the same database and store (a local store named as a folder).
    let other_dir = tempfile::tempdir().unwrap();
    let mut shared = db.config(1);
    if db.local_files() {
        shared.blobs.url = Some(format!("file://{}", db.dir().display()));
    }
    let other_storage = Arc::new(
        Storage::connect(&StorageConfig {
            data_dir: other_dir.path().to_path_buf(),
            ..shared
        })
        .await
        .unwrap(),
    );
    let other = Registry::new(other_storage, other_dir.path()).unwrap();
    let fetched = other.fetch(&record).await.unwrap();
    let weights = std::fs::read(fetched.join("unet/model.onnx")).unwrap();
    assert!(weights == b"weights a" || weights == b"weights b");
    if !db.local_files() {
        assert!(
            fetched.starts_with(other_dir.path()),
            "a remote version is cached locally: {fetched:?}"
        );
        // A damaged copy in the store is refused, and so is the cache's, which is downloaded again.
        std::fs::write(fetched.join("unet/model.onnx"), b"damaged").unwrap();
        assert_eq!(other.fetch(&record).await.unwrap(), fetched);
        assert_eq!(std::fs::read(fetched.join("unet/model.onnx")).unwrap(), weights);
        storage
            .blobs()
            .put(&format!("{}/unet/model.onnx", record.path), b"damaged".to_vec())
            .await
            .unwrap();
        std::fs::remove_dir_all(&fetched).unwrap();
        let err = other.fetch(&record).await.unwrap_err();
        assert!(err.to_string().contains("unet/model.onnx"), "{err}");
    }
}
