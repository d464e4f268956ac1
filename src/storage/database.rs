//! Which database holds the state, and connecting to it (#25): SQLite in the data directory (the embedded
//! default, which needs no service) or a Postgres server (at scale, shared by every replica). Both go through
//! sqlx's `Any` driver, so one set of queries serves both; each backend has its own migrations, with the same
//! numbers (`migrations/sqlite`, `migrations/postgres`; `tests/storage.rs` holds them to one schema).
//!
//! The queries use `$1`-style parameters, which both dialects read, and only SQL both accept. `rowid` is
//! SQLite's implicit column and an identity column on Postgres, so pages' cursors read the same column.

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};

use super::{Durability, DATABASE_FILE};
use crate::error::{Error, Result};

/// Where the state lives, as `--database-url` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file, created if missing.
    Sqlite(PathBuf),
    /// A Postgres server's URL (`postgres://user:password@host:port/database`).
    Postgres(String),
}

/// Which dialect a database speaks, where the queries must differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Database {
    /// `url` as given to `--database-url`, or SQLite in the data directory when there is none.
    pub fn from_url(url: Option<&str>, data_dir: &Path) -> Result<Self> {
        let Some(url) = url.map(str::trim).filter(|url| !url.is_empty()) else {
            return Ok(Database::Sqlite(data_dir.join(DATABASE_FILE)));
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Database::Postgres(url.to_string()));
        }
        if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            if path.is_empty() || path.contains('?') {
                return Err(Error::Config(format!(
                    "--database-url `{url}`: a SQLite URL names a file, as sqlite:///abs/path.db or sqlite://relative.db, with no options"
                )));
            }
            return Ok(Database::Sqlite(PathBuf::from(path)));
        }
        Err(Error::Config(format!(
            "--database-url `{}` must start with sqlite:// (a file; the default is {} in --data-dir) or postgres://",
            redact(url),
            DATABASE_FILE
        )))
    }

    pub fn backend(&self) -> Backend {
        match self {
            Database::Sqlite(_) => Backend::Sqlite,
            Database::Postgres(_) => Backend::Postgres,
        }
    }

    /// The URL without its password, for logs and errors.
    pub fn shown(&self) -> String {
        match self {
            Database::Sqlite(path) => format!("sqlite://{}", path.display()),
            Database::Postgres(url) => redact(url),
        }
    }

    /// A pool on this database with its schema brought up to date. Errors name the database (never its
    /// password) and what failed.
    pub async fn connect(&self, durability: Durability) -> Result<AnyPool> {
        let pool = self.pool(Commits::Durable(durability)).await?;
        let migrated = match self.backend() {
            Backend::Sqlite => sqlx::migrate!("src/storage/migrations/sqlite").run(&pool).await,
            Backend::Postgres => sqlx::migrate!("src/storage/migrations/postgres").run(&pool).await,
        };
        migrated.map_err(|err| self.failed("cannot migrate it", &err))?;
        Ok(pool)
    }

    /// A second, small pool on the same database for writes that need not wait for the disk (the rate
    /// counts every request makes, generated images' rows): SQLite connections with `synchronous = NORMAL`,
    /// Postgres sessions with `synchronous_commit = off`. A killed process keeps every committed row either way
    /// (SQLite's WAL, the Postgres server); power loss or a database crash may drop the last of these commits,
    /// and never damages the database. Not `OFF`: in WAL mode the connection whose commit fills the log runs
    /// the checkpoint, and under `OFF` it would copy pages into the database file without syncing the log
    /// first, so power loss could corrupt the file, rows committed with `--durability full` included. The
    /// schema is the main pool's (`connect` migrates it first).
    pub async fn connect_unsynced(&self) -> Result<AnyPool> {
        self.pool(Commits::Unsynced).await
    }

    /// A pool whose commits wait for the disk as `commits` says; the schema is left as it is.
    async fn pool(&self, commits: Commits) -> Result<AnyPool> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let pool = match self {
            Database::Sqlite(path) => {
                if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|err| self.failed("cannot create its folder", &err))?;
                }
                let (synchronous, connections) = match commits {
                    Commits::Durable(durability) => (durability.sqlite_synchronous(), 4),
                    Commits::Unsynced => ("NORMAL", 1),
                };
                // WAL, so a killed process never loses a committed row; `synchronous` decides when a commit is
                // fsynced. The Any driver takes options only as a URL, so these are set per connection.
                let pragmas = format!(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; PRAGMA busy_timeout = 5000; \
                     PRAGMA foreign_keys = ON;"
                );
                AnyPoolOptions::new()
                    .max_connections(connections)
                    .after_connect(move |connection, _| {
                        let pragmas = pragmas.clone();
                        Box::pin(async move { connection.execute(pragmas.as_str()).await.map(|_| ()) })
                    })
                    .connect(&format!("sqlite://{}?mode=rwc", path.display()))
                    .await
                    .map_err(|err| self.failed("cannot open it", &err))?
            }
            Database::Postgres(url) => {
                let options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(5));
                let options = match commits {
                    Commits::Durable(_) => options.max_connections(8),
                    Commits::Unsynced => options.max_connections(2).after_connect(|connection, _| {
                        Box::pin(async move { connection.execute("SET synchronous_commit = off").await.map(|_| ()) })
                    }),
                };
                options
                    .connect(url)
                    .await
                    .map_err(|err| self.failed("cannot connect", &redact_error(url, &err)))?
            }
        };
        Ok(pool)
    }

    /// A configuration error naming this database (never its password) and what failed.
    fn failed(&self, what: &str, err: &dyn std::fmt::Display) -> Error {
        Error::Config(format!("database `{}`: {what}: {err}", self.shown()))
    }
}

/// When a pool's commits reach the disk.
#[derive(Debug, Clone, Copy)]
enum Commits {
    /// As the server's `--durability` says (a Postgres server keeps its own settings).
    Durable(Durability),
    /// Without waiting for it: SQLite `synchronous = NORMAL` (the log is synced only at checkpoints),
    /// Postgres `synchronous_commit = off`.
    Unsynced,
}

/// `url` with its password replaced by `***`.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_string(),
        // Not a URL: show only its scheme, as it may hold a password in a form the parser did not read.
        Err(_) => format!("{}://…", url.split("://").next().unwrap_or("")),
    }
}

/// A driver error's text, with the URL's password removed should the driver have quoted it.
fn redact_error(url: &str, err: &sqlx::Error) -> String {
    let text = err.to_string();
    match url::Url::parse(url)
        .ok()
        .and_then(|parsed| parsed.password().map(str::to_string))
    {
        Some(password) if !password.is_empty() => text.replace(&password, "***"),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_choose_the_backend() {
        let dir = Path::new("/data");
        assert_eq!(
            Database::from_url(None, dir).unwrap(),
            Database::Sqlite(PathBuf::from("/data/t2i-align.db"))
        );
        assert_eq!(
            Database::from_url(Some("sqlite:///var/db/x.db"), dir).unwrap(),
            Database::Sqlite(PathBuf::from("/var/db/x.db"))
        );
        let postgres = Database::from_url(Some("postgres://app:s3cret@db:5432/t2i"), dir).unwrap();
        assert_eq!(postgres.backend(), Backend::Postgres);
        assert_eq!(postgres.shown(), "postgres://app:***@db:5432/t2i");
        let err = Database::from_url(Some("mysql://app:s3cret@db/t2i"), dir).unwrap_err();
        assert!(err.to_string().contains("--database-url"), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert!(Database::from_url(Some("sqlite://x.db?mode=ro"), dir).is_err());
    }

    /// SQLite's `synchronous` on a pool's connection: 0 OFF, 1 NORMAL, 2 FULL.
    async fn synchronous(pool: &AnyPool) -> i64 {
        sqlx::query_scalar::<_, i64>("PRAGMA synchronous")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_unsynced_pool_still_syncs_at_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let database = Database::Sqlite(dir.path().join("t.db"));
        let durable = database.connect(Durability::Full).await.unwrap();
        assert_eq!(synchronous(&durable).await, 2);
        let normal = database.connect(Durability::Normal).await.unwrap();
        assert_eq!(synchronous(&normal).await, 1);
        // NORMAL, not OFF: its commits skip the fsync, but a checkpoint it runs syncs the log first, so power
        // loss cannot corrupt the file the durable pool commits to.
        let unsynced = database.connect_unsynced().await.unwrap();
        assert_eq!(synchronous(&unsynced).await, 1);
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&unsynced)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }
}
