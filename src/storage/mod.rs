//! Durable storage: a database (SQLite in the data directory by default, or Postgres; see `database.rs`) and
//! the files it points at, in the data directory. Today it keeps the images this server generated, so that `/score` and `/rerank` can take
//! their `image_id`s, with a retention limit; the ratings users give (feedback); and fine-tune jobs, their events
//! and model versions (`fine_tunes`).
//!
//! Every file is written to a temporary name, flushed and renamed, and only then recorded in the database, so a
//! crash leaves either nothing or a complete file. The queries are plain SQL through sqlx's runtime API and its
//! `Any` driver, in the dialect SQLite and Postgres share.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::AnyPool;
use sqlx::Row;

use crate::error::{Error, Result};

mod blobs;
mod database;
mod fine_tunes;
mod keys;
mod leases;
mod rollout;
pub use blobs::{is_older, BlobConfig, Blobs};
pub use database::{redact, Backend, Database};
pub use fine_tunes::{JobEvent, JobRecord, JobStatus, VersionKind, VersionRecord};
pub use keys::{AuditRecord, KeyRecord, NewAudit, NewKey};
pub use leases::Lease;
pub use rollout::{ReplicaRecord, RolloutState, ROLLOUT_CHANNEL};

pub const DATABASE_FILE: &str = "t2i-align.db";
/// How old a file with no row must be before a sweep of a shared store removes it: longer than any write
/// takes between its file and its row.
pub const ORPHAN_GRACE: std::time::Duration = std::time::Duration::from_secs(600);
/// How long `/ready` waits for the database.
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// The longest rater name a rating stores (and so the longest a filter on raters can match).
pub const MAX_RATER_CHARS: usize = 128;

/// Refuses a rater name longer than a rating stores, naming `param`, the field that carried it.
pub fn check_rater(param: &str, rater: &str) -> Result<()> {
    let chars = rater.chars().count();
    if chars > MAX_RATER_CHARS {
        return Err(Error::validation(
            param,
            format!("`{param}` must be at most {MAX_RATER_CHARS} characters, as a rating stores. Given: {chars}"),
        ));
    }
    Ok(())
}
/// Whether `id` has the shape of the ids this module makes: `prefix` and a uuid's 32 lowercase hex digits.
fn is_id_of(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f')))
}

const IMAGES_DIR: &str = "images";
const FEEDBACK_DIR: &str = "feedback";

/// A rating's label, as the paper's binary feedback plus "skip" (the rater could not tell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    Good,
    Bad,
    Skip,
}

impl Label {
    pub const NAMES: &'static str = "good, bad, skip";

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "good" => Some(Label::Good),
            "bad" => Some(Label::Bad),
            "skip" => Some(Label::Skip),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Label::Good => "good",
            Label::Bad => "bad",
            Label::Skip => "skip",
        }
    }
}

/// A rating to store: the image bytes (PNG or JPEG, already checked to decode) and what it was rated for.
#[derive(Debug, Clone)]
pub struct NewFeedback {
    pub image_id: Option<String>,
    /// The version that generated the image, for images rated by `image_id`.
    pub model: Option<String>,
    pub prompt: String,
    pub label: Label,
    pub rater: Option<String>,
    pub image: Arc<Vec<u8>>,
    /// `png` or `jpg`.
    pub extension: &'static str,
    /// The tenant whose key rated it.
    pub tenant: String,
}

/// A stored rating.
#[derive(Debug, Clone, PartialEq)]
pub struct Feedback {
    pub id: String,
    pub created_at: i64,
    pub image_id: Option<String>,
    pub model: Option<String>,
    pub prompt: String,
    pub label: String,
    pub rater: Option<String>,
    pub file: String,
    pub tenant: String,
}

/// Which ratings to list: filters, then a page after a cursor.
#[derive(Debug, Clone, Default)]
pub struct FeedbackQuery {
    pub label: Option<Label>,
    pub rater: Option<String>,
    pub image_id: Option<String>,
    /// Only ratings of images this version generated.
    pub model: Option<String>,
    /// List the ratings stored after this one (its id), oldest first.
    pub after: Option<String>,
    pub limit: u32,
    /// Only this tenant's ratings (`None`: every tenant's).
    pub tenant: Option<String>,
}

/// One stored image and what produced it.
#[derive(Debug, Clone)]
pub struct StoredImage {
    pub png: Arc<Vec<u8>>,
    pub prompt: String,
    pub seed: u64,
    pub model: String,
    pub reward: Option<f32>,
    /// The tenant whose key generated it.
    pub tenant: String,
}

/// What is known of a stored image without its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    pub id: String,
    pub created_at: i64,
    pub prompt: String,
    pub seed: u64,
    pub model: String,
    pub reward: Option<f32>,
}

pub struct Storage {
    pool: AnyPool,
    database: Database,
    blobs: Blobs,
    /// Most images kept; the oldest go first. 0 keeps none.
    image_retention: u64,
    /// Images this process has stored (`insert_image`); every `retention_sweep_every`-th sweeps.
    stored: std::sync::atomic::AtomicU64,
    /// The same database for writes that need not wait for the disk (`Database::connect_unsynced`): rate
    /// counts and generated images' rows.
    unsynced: AnyPool,
}

/// How many images a process stores between retention sweeps: a hundredth of the retention, and every image
/// below 200. So the images kept exceed `--image-retention` by under 1% (per replica) between sweeps, and a
/// sweep's cost, which grows with the images kept, is shared by as many inserts.
pub fn retention_sweep_every(image_retention: u64) -> u64 {
    (image_retention / 100).max(1)
}

/// When a commit reaches the disk. SQLite runs in WAL mode either way, so a killed process never loses a
/// committed row; the choice is about power loss and kernel crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// fsync the WAL at every commit: an acknowledged row survives power loss (`synchronous=FULL`).
    Full,
    /// fsync only at checkpoints: faster writes; power loss may drop the last commits (`synchronous=NORMAL`).
    Normal,
}

impl Durability {
    /// SQLite's `synchronous` setting for this durability.
    pub fn sqlite_synchronous(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        }
    }
}

/// Where a server keeps its state, from `--data-dir`, `--database-url` and the retention and durability flags.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// This replica's own files (job folders, model versions), and by default the SQLite database and the
    /// object store.
    pub data_dir: PathBuf,
    pub database: Database,
    /// Where images and ratings' images live: the data directory unless it names an object store.
    pub blobs: BlobConfig,
    /// Most images kept; the oldest go first. 0 keeps none.
    pub image_retention: u64,
    /// When a SQLite commit reaches the disk (a Postgres server has its own settings).
    pub durability: Durability,
}

impl StorageConfig {
    /// SQLite and files in `data_dir`, fully durable: the embedded default.
    pub fn embedded(data_dir: &Path, image_retention: u64) -> Self {
        StorageConfig {
            data_dir: data_dir.to_path_buf(),
            database: Database::Sqlite(data_dir.join(DATABASE_FILE)),
            blobs: BlobConfig::default(),
            image_retention,
            durability: Durability::Full,
        }
    }
}

impl Storage {
    /// Opens (or creates) the SQLite database in `root` and brings its schema up to date, with full durability.
    pub async fn open(root: &Path, image_retention: u64) -> Result<Self> {
        Self::connect(&StorageConfig::embedded(root, image_retention)).await
    }

    /// Opens (or creates) the data directory, the database and the object store, brings the schema up to
    /// date, and removes what a crash may have left: half-written files, and files whose row was never
    /// committed. A store shared with other replicas keeps what is younger than `ORPHAN_GRACE`, as another
    /// replica may be about to commit its row.
    pub async fn connect(config: &StorageConfig) -> Result<Self> {
        let root = &config.data_dir;
        std::fs::create_dir_all(root)
            .map_err(|err| Error::Config(format!("data directory `{}`: cannot create it: {err}", root.display())))?;
        let blobs = Blobs::open(&config.blobs, root, config.durability == Durability::Full)?;
        let pool = config.database.connect(config.durability).await?;
        let storage = Storage {
            pool,
            database: config.database.clone(),
            blobs,
            image_retention: config.image_retention,
            stored: Default::default(),
            unsynced: config.database.connect_unsynced().await?,
        };
        let swept = storage.sweep(storage.orphan_grace()).await?;
        if swept > 0 {
            tracing::warn!(
                files = swept,
                store = storage.blobs.shown(),
                "removed files a crash left behind (half-written, or never recorded)"
            );
        }
        Ok(storage)
    }

    /// The database alone, for commands that touch no file (`t2i-align keys`): its schema is brought up to
    /// date, and nothing is swept. Its object store is `data_dir`'s local folder whatever the server uses, so
    /// it must not be used to read or write images.
    pub async fn connect_database(database: &Database, data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|err| {
            Error::Config(format!(
                "data directory `{}`: cannot create it: {err}",
                data_dir.display()
            ))
        })?;
        let pool = database.connect(Durability::Full).await?;
        Ok(Storage {
            unsynced: pool.clone(),
            pool,
            database: database.clone(),
            blobs: Blobs::open(&BlobConfig::default(), data_dir, true)?,
            image_retention: 0,
            stored: Default::default(),
        })
    }

    /// How old a file with no row must be before the sweep removes it: none when this process alone writes
    /// (SQLite and a local folder), else `ORPHAN_GRACE`.
    pub fn orphan_grace(&self) -> std::time::Duration {
        if self.database.backend() == Backend::Sqlite && self.blobs.is_local() {
            std::time::Duration::ZERO
        } else {
            ORPHAN_GRACE
        }
    }

    /// The object store.
    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    /// Whether the database and the object store answer within two seconds each (for `/ready`); the error
    /// names the one that does not.
    pub async fn ping(&self) -> Result<()> {
        match tokio::time::timeout(PING_TIMEOUT, sqlx::query("SELECT 1").execute(&self.pool)).await {
            Ok(Ok(_)) => self.blobs.ping(PING_TIMEOUT).await,
            Ok(Err(err)) => Err(self.database_error("cannot run a query", err)),
            Err(_) => Err(Error::Unavailable(format!(
                "database `{}` is unreachable: it did not answer within {} s",
                self.database.shown(),
                PING_TIMEOUT.as_secs()
            ))),
        }
    }

    /// A failed query as an error: 503 naming the database when it cannot be reached (the request may be
    /// retried), else a 500 saying what failed.
    fn database_error(&self, what: &str, err: sqlx::Error) -> Error {
        let unreachable = match &err {
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
            // Postgres's connection-exception (08) and operator-intervention (57: shutting down, terminated)
            // classes, and "the database does not exist" (3D000), as a dropped or unmounted one reads.
            sqlx::Error::Database(database) => database
                .code()
                .is_some_and(|code| code.starts_with("08") || code.starts_with("57") || code == "3D000"),
            _ => false,
        };
        if unreachable {
            Error::Unavailable(format!(
                "database `{}` is unreachable ({what}): {err}",
                self.database.shown()
            ))
        } else {
            Error::Internal(format!("storage: {what}: {err}"))
        }
    }

    /// Removes files no row points at from the image and feedback folders, and a local store's half-written
    /// files, when they are at least `min_age` old; returns how many. Rows are committed after their file is
    /// written, so a crash between the two leaves only such a file. The server runs it at start-up and, on a
    /// shared store, every `ORPHAN_GRACE`.
    pub async fn sweep(&self, min_age: std::time::Duration) -> Result<usize> {
        let mut removed = 0;
        for (folder, table) in [(IMAGES_DIR, "images"), (FEEDBACK_DIR, "feedback")] {
            // The store is listed before the rows are read, so a file whose row commits in between is kept.
            let stored = self.blobs.list(folder).await?;
            let recorded: std::collections::HashSet<String> =
                sqlx::query_scalar::<_, String>(&format!("SELECT file FROM {table}"))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|err| self.database_error("cannot list the stored files", err))?
                    .into_iter()
                    .collect();
            for blob in stored {
                if !recorded.contains(&blob.key) && blobs::is_older(Some(blob.modified), min_age) {
                    self.blobs.delete(&blob.key).await?;
                    removed += 1;
                }
            }
            removed += self.blobs.sweep_staging(folder, min_age);
        }
        Ok(removed)
    }

    pub fn stores_images(&self) -> bool {
        self.image_retention > 0
    }

    /// Stores a generated image and returns its id (`img_` and 32 hex digits), or `None` when retention is 0.
    /// The oldest images beyond the retention limit are deleted, rows and files, by a sweep after every
    /// [`retention_sweep_every`] images this process stores: the sweep reads every stored image's age, so
    /// running it at each insert made storing an image cost time in proportion to the images kept.
    ///
    /// The file is written as durably as every other (fsynced with `--durability full`), then the row is
    /// committed through the pool that does not wait for the disk (`Database::connect_unsynced`): every
    /// `/generate` stores its images before it answers, and this keeps a log fsync off its path. A killed
    /// process keeps every row; power loss may drop the rows of the last images stored, and with `full` never
    /// leaves a row whose file is missing or torn (the file was synced first; a file left without its row is
    /// swept). A generated image can be made again from its prompt and seed, unlike a rating, whose row waits
    /// for the disk as `--durability` says.
    pub async fn insert_image(&self, image: &StoredImage) -> Result<Option<String>> {
        if !self.stores_images() {
            return Ok(None);
        }
        let id = format!("img_{}", uuid::Uuid::new_v4().simple());
        let relative = format!("{IMAGES_DIR}/{id}.png");
        self.blobs.put(&relative, image.png.to_vec()).await?;
        let digest = hex(&Sha256::digest(image.png.as_slice()));
        let created_at = now_millis();
        let inserted = sqlx::query(
            "INSERT INTO images (id, created_at, prompt, seed, model, reward, file, bytes, sha256, tenant) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&id)
        .bind(created_at)
        .bind(&image.prompt)
        .bind(image.seed as i64)
        .bind(&image.model)
        .bind(image.reward.map(f64::from))
        .bind(&relative)
        .bind(image.png.len() as i64)
        .bind(&digest)
        .bind(&image.tenant)
        .execute(&self.unsynced)
        .await;
        if let Err(err) = inserted {
            let _ = self.blobs.delete(&relative).await;
            return Err(self.database_error("cannot record the image", err));
        }
        let stored = self.stored.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if stored.is_multiple_of(retention_sweep_every(self.image_retention)) {
            self.enforce_retention().await?;
        }
        Ok(Some(id))
    }

    /// Deletes the oldest images beyond the retention limit: their rows first, then their files.
    async fn enforce_retention(&self) -> Result<()> {
        let stale = sqlx::query(
            "SELECT id, file FROM images WHERE rowid NOT IN \
             (SELECT rowid FROM images ORDER BY created_at DESC, rowid DESC LIMIT $1)",
        )
        .bind(self.image_retention as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(|err| self.database_error("cannot list old images", err))?;
        for row in stale {
            let id: String = row.get("id");
            let file: String = row.get("file");
            sqlx::query("DELETE FROM images WHERE id = $1")
                .bind(&id)
                .execute(&self.pool)
                .await
                .map_err(|err| self.database_error("cannot delete an old image", err))?;
            // The row is gone; a file left by a failed delete is an orphan the sweep removes.
            let _ = self.blobs.delete(&file).await;
        }
        Ok(())
    }

    /// The image with this id. `field` names the request field in errors, e.g. `image_ids[1]`. With `tenant`,
    /// another tenant's image is answered as one this server does not have.
    pub async fn image(&self, id: &str, field: &str, tenant: Option<&str>) -> Result<StoredImage> {
        let row = sqlx::query(
            "SELECT prompt, seed, model, reward, file, sha256, tenant FROM images \
             WHERE id = $1 AND ($2 IS NULL OR tenant = $3)",
        )
        .bind(id)
        .bind(tenant)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await
        .map_err(|err| self.database_error("cannot read the image", err))?;
        let Some(row) = row else {
            return Err(Error::validation(
                field,
                format!(
                    "`{field}` is `{id}`, which this server does not have: it keeps the last {} generated images (--image-retention)",
                    self.image_retention
                ),
            ));
        };
        let file: String = row.get("file");
        let png = self
            .blobs
            .get(&file)
            .await
            .map_err(|err| about(&format!("image `{id}`"), err))?;
        let expected: String = row.get("sha256");
        if hex(&Sha256::digest(&png)) != expected {
            return Err(Error::Internal(format!(
                "image `{id}`: {file} does not match its recorded SHA-256; the file was damaged"
            )));
        }
        let seed: i64 = row.get("seed");
        let reward: Option<f64> = row.get("reward");
        Ok(StoredImage {
            png: Arc::new(png),
            prompt: row.get("prompt"),
            seed: seed as u64,
            model: row.get("model"),
            reward: reward.map(|value| value as f32),
            tenant: row.get("tenant"),
        })
    }

    /// Stores a rating with its own copy of the image and returns it.
    pub async fn insert_feedback(&self, new: &NewFeedback) -> Result<Feedback> {
        let id = format!("fb_{}", uuid::Uuid::new_v4().simple());
        let file = format!("{FEEDBACK_DIR}/{id}.{}", new.extension);
        self.blobs.put(&file, new.image.to_vec()).await?;
        let created_at = now_millis();
        let inserted = sqlx::query(
            "INSERT INTO feedback (id, created_at, image_id, model, prompt, label, rater, file, sha256, tenant) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&id)
        .bind(created_at)
        .bind(&new.image_id)
        .bind(&new.model)
        .bind(&new.prompt)
        .bind(new.label.name())
        .bind(&new.rater)
        .bind(&file)
        .bind(hex(&Sha256::digest(new.image.as_slice())))
        .bind(&new.tenant)
        .execute(&self.pool)
        .await;
        if let Err(err) = inserted {
            let _ = self.blobs.delete(&file).await;
            return Err(self.database_error("cannot record the feedback", err));
        }
        Ok(Feedback {
            id,
            created_at,
            image_id: new.image_id.clone(),
            model: new.model.clone(),
            prompt: new.prompt.clone(),
            label: new.label.name().to_string(),
            rater: new.rater.clone(),
            file,
            tenant: new.tenant.clone(),
        })
    }

    /// Deletes a rating: its row first (committed), then its image file. A crash between the two leaves only an
    /// orphan file, which the start-up sweep removes. `Ok(None)` when there is no such rating, or (with
    /// `tenant`) when it is another tenant's.
    pub async fn delete_feedback(&self, id: &str, tenant: Option<&str>) -> Result<Option<Feedback>> {
        let row = sqlx::query(
            "DELETE FROM feedback WHERE id = $1 AND ($2 IS NULL OR tenant = $3) \
             RETURNING id, created_at, image_id, model, prompt, label, rater, file, tenant",
        )
        .bind(id)
        .bind(tenant)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await
        .map_err(|err| self.database_error("cannot delete the rating", err))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let feedback = feedback_row(&row);
        let _ = self.blobs.delete(&feedback.file).await;
        Ok(Some(feedback))
    }

    /// A page of ratings, oldest first, and whether more follow.
    pub async fn list_feedback(&self, query: &FeedbackQuery) -> Result<(Vec<Feedback>, bool)> {
        let after_rowid = self
            .cursor(
                "feedback",
                query.after.as_deref(),
                "a stored rating's",
                query.tenant.as_deref(),
            )
            .await?;
        let limit = i64::from(query.limit.max(1));
        let rows = sqlx::query(
            "SELECT id, created_at, image_id, model, prompt, label, rater, file, tenant FROM feedback \
             WHERE rowid > $1 AND ($2 IS NULL OR label = $3) AND ($4 IS NULL OR rater = $5) \
             AND ($6 IS NULL OR image_id = $7) AND ($8 IS NULL OR model = $9) \
             AND ($10 IS NULL OR tenant = $11) ORDER BY rowid LIMIT $12",
        )
        .bind(after_rowid)
        .bind(query.label.map(|label| label.name()))
        .bind(query.label.map(|label| label.name()))
        .bind(&query.rater)
        .bind(&query.rater)
        .bind(&query.image_id)
        .bind(&query.image_id)
        .bind(&query.model)
        .bind(&query.model)
        .bind(&query.tenant)
        .bind(&query.tenant)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(|err| self.database_error("cannot list feedback", err))?;
        let has_more = rows.len() as i64 > limit;
        let page = rows
            .into_iter()
            .take(limit as usize)
            .map(|row| feedback_row(&row))
            .collect();
        Ok((page, has_more))
    }

    /// The bytes of a rating's image.
    pub async fn feedback_image(&self, feedback: &Feedback) -> Result<Vec<u8>> {
        self.blobs
            .get(&feedback.file)
            .await
            .map_err(|err| about(&format!("rating `{}`", feedback.id), err))
    }

    /// The rowid a page starts after: 0 without a cursor, else the row whose id is `after` (a 422 naming
    /// `after` when there is none; with `tenant`, another tenant's row is none). `table` is one of this
    /// module's own table names, and has a `tenant` column when `tenant` is given.
    async fn cursor(&self, table: &'static str, after: Option<&str>, what: &str, tenant: Option<&str>) -> Result<i64> {
        let Some(after) = after else {
            return Ok(0);
        };
        let sql = match tenant {
            Some(_) => format!("SELECT rowid FROM {table} WHERE id = $1 AND tenant = $2"),
            None => format!("SELECT rowid FROM {table} WHERE id = $1"),
        };
        let mut query = sqlx::query(&sql).bind(after);
        if let Some(tenant) = tenant {
            query = query.bind(tenant);
        }
        let row = query
            .fetch_optional(&self.pool)
            .await
            .map_err(|err| self.database_error("cannot read the cursor", err))?;
        let prefix = match table {
            "feedback" => "fb_",
            "images" => "img_",
            "fine_tunes" => "ft_",
            _ => "ftevent_",
        };
        row.map(|row| row.get::<i64, _>("rowid")).ok_or_else(|| {
            // An id of the right shape names something that is gone (deleted, expired) or never was: 404. Any
            // other text is not an id at all: 422.
            if is_id_of(prefix, after) {
                Error::NotFound(format!(
                    "`after` is `{after}`: there is no such {what} id (it may have been deleted)"
                ))
            } else {
                Error::validation("after", format!("`after` is `{after}`, which is not {what} id"))
            }
        })
    }

    /// A page of stored images' records (no bytes), oldest first, after the image `after`; only `tenant`'s
    /// when given.
    pub async fn list_images(
        &self,
        tenant: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<ImageRecord>, bool)> {
        let after_rowid = self.cursor("images", after, "a stored image's", tenant).await?;
        let limit = i64::from(limit.max(1));
        let rows = sqlx::query(
            "SELECT id, created_at, prompt, seed, model, reward FROM images \
             WHERE rowid > $1 AND ($2 IS NULL OR tenant = $3) ORDER BY rowid LIMIT $4",
        )
        .bind(after_rowid)
        .bind(tenant)
        .bind(tenant)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(|err| self.database_error("cannot list images", err))?;
        let has_more = rows.len() as i64 > limit;
        let page = rows
            .into_iter()
            .take(limit as usize)
            .map(|row| ImageRecord {
                id: row.get("id"),
                created_at: row.get("created_at"),
                prompt: row.get("prompt"),
                seed: row.get::<i64, _>("seed") as u64,
                model: row.get("model"),
                reward: row.get::<Option<f64>, _>("reward").map(|value| value as f32),
            })
            .collect();
        Ok((page, has_more))
    }

    pub async fn image_count(&self) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) AS count FROM images")
            .fetch_one(&self.pool)
            .await
            .map_err(|err| self.database_error("cannot count images", err))?;
        let count: i64 = row.get("count");
        Ok(count as u64)
    }
}

/// A `feedback` row read with the columns id, created_at, image_id, model, prompt, label, rater, file and
/// tenant.
fn feedback_row(row: &AnyRow) -> Feedback {
    Feedback {
        id: row.get("id"),
        created_at: row.get("created_at"),
        image_id: row.get("image_id"),
        model: row.get("model"),
        prompt: row.get("prompt"),
        label: row.get("label"),
        rater: row.get("rater"),
        file: row.get("file"),
        tenant: row.get("tenant"),
    }
}

/// A store's error, said of `what`: an unreachable store stays a 503, anything else is a 500.
fn about(what: &str, err: Error) -> Error {
    match err {
        Error::Unavailable(message) => Error::Unavailable(format!("{what}: {message}")),
        other => Error::Internal(format!("{what}: {other}")),
    }
}

pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// Lowercase hexadecimal digits of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Writes `bytes` to `path` through a temporary file in the same folder, flushed before the rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let fail = |err: std::io::Error| Error::Internal(format!("cannot write {}: {err}", path.display()));
    let temporary = path.with_extension(format!("partial-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result.map_err(fail)
}
