//! Durable storage in a data directory: a SQLite database (through sqlx, with embedded migrations) and the
//! files it points at. Today it keeps the images this server generated, so that `/score` and `/rerank` can take
//! their `image_id`s, with a retention limit; the ratings users give (feedback); and fine-tune jobs, their events
//! and model versions (`fine_tunes`).
//!
//! Every file is written to a temporary name, flushed and renamed, and only then recorded in the database, so a
//! crash leaves either nothing or a complete file. The queries are plain SQL through sqlx's runtime API, so the
//! same code can later run on Postgres.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::error::{Error, Result};

mod fine_tunes;
pub use fine_tunes::{JobEvent, JobRecord, JobStatus, VersionKind, VersionRecord};

pub const DATABASE_FILE: &str = "t2i-align.db";
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
}

/// One stored image and what produced it.
#[derive(Debug, Clone)]
pub struct StoredImage {
    pub png: Arc<Vec<u8>>,
    pub prompt: String,
    pub seed: u64,
    pub model: String,
    pub reward: Option<f32>,
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
    pool: SqlitePool,
    root: PathBuf,
    /// Most images kept; the oldest go first. 0 keeps none.
    image_retention: u64,
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

impl Storage {
    /// Opens (or creates) the database in `root` and brings its schema up to date, with full durability.
    pub async fn open(root: &Path, image_retention: u64) -> Result<Self> {
        Self::open_with(root, image_retention, Durability::Full).await
    }

    /// Opens (or creates) the database in `root`, brings its schema up to date, and removes what a crash may
    /// have left: half-written files, and files whose row was never committed.
    pub async fn open_with(root: &Path, image_retention: u64, durability: Durability) -> Result<Self> {
        let fail = |what: &str, err: &dyn std::fmt::Display| {
            Error::Config(format!("data directory `{}`: {what}: {err}", root.display()))
        };
        for folder in [IMAGES_DIR, FEEDBACK_DIR] {
            std::fs::create_dir_all(root.join(folder)).map_err(|err| fail("cannot create it", &err))?;
        }
        let url = format!("sqlite://{}", root.join(DATABASE_FILE).display());
        let options = SqliteConnectOptions::from_str(&url)
            .map_err(|err| fail("bad database path", &err))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|err| fail("cannot open the database", &err))?;
        sqlx::migrate!("src/storage/migrations")
            .run(&pool)
            .await
            .map_err(|err| fail("cannot migrate the database", &err))?;
        let storage = Storage {
            pool,
            root: root.to_path_buf(),
            image_retention,
        };
        let swept = storage.sweep().await?;
        if swept > 0 {
            tracing::warn!(
                files = swept,
                "removed files a crash left behind (half-written, or never recorded)"
            );
        }
        Ok(storage)
    }

    /// Removes `*.partial-*` files and files no row points at from the image and feedback folders. Rows are
    /// committed after their file is written, so a crash between the two leaves only such a file.
    async fn sweep(&self) -> Result<usize> {
        let mut removed = 0;
        for (folder, table) in [(IMAGES_DIR, "images"), (FEEDBACK_DIR, "feedback")] {
            let recorded: std::collections::HashSet<String> =
                sqlx::query_scalar::<_, String>(&format!("SELECT file FROM {table}"))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|err| database_error("cannot list the stored files", err))?
                    .into_iter()
                    .collect();
            let entries = std::fs::read_dir(self.root.join(folder))
                .map_err(|err| Error::Internal(format!("cannot list {folder}: {err}")))?;
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !recorded.contains(&format!("{folder}/{name}")) && std::fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    pub fn stores_images(&self) -> bool {
        self.image_retention > 0
    }

    /// Stores a generated image and returns its id (`img_` and 32 hex digits), or `None` when retention is 0.
    /// The oldest images beyond the retention limit are deleted, rows and files.
    pub async fn insert_image(&self, image: &StoredImage) -> Result<Option<String>> {
        if !self.stores_images() {
            return Ok(None);
        }
        let id = format!("img_{}", uuid::Uuid::new_v4().simple());
        let relative = format!("{IMAGES_DIR}/{id}.png");
        let path = self.write_file(&relative, image.png.clone()).await?;
        let digest = hex(&Sha256::digest(image.png.as_slice()));
        let created_at = now_millis();
        let inserted = sqlx::query(
            "INSERT INTO images (id, created_at, prompt, seed, model, reward, file, bytes, sha256) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        .execute(&self.pool)
        .await;
        if let Err(err) = inserted {
            let _ = std::fs::remove_file(&path);
            return Err(database_error("cannot record the image", err));
        }
        self.enforce_retention().await?;
        Ok(Some(id))
    }

    /// Deletes the oldest images beyond the retention limit: their rows first, then their files.
    async fn enforce_retention(&self) -> Result<()> {
        let stale = sqlx::query("SELECT id, file FROM images ORDER BY created_at DESC, rowid DESC LIMIT -1 OFFSET ?")
            .bind(self.image_retention as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(|err| database_error("cannot list old images", err))?;
        for row in stale {
            let id: String = row.get("id");
            let file: String = row.get("file");
            sqlx::query("DELETE FROM images WHERE id = ?")
                .bind(&id)
                .execute(&self.pool)
                .await
                .map_err(|err| database_error("cannot delete an old image", err))?;
            let _ = std::fs::remove_file(self.root.join(file));
        }
        Ok(())
    }

    /// The image with this id. `field` names the request field in errors, e.g. `image_ids[1]`.
    pub async fn image(&self, id: &str, field: &str) -> Result<StoredImage> {
        let row = sqlx::query("SELECT prompt, seed, model, reward, file, sha256 FROM images WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|err| database_error("cannot read the image", err))?;
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
            .read_file(&file)
            .await
            .map_err(|err| Error::Internal(format!("image `{id}`: {err}")))?;
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
        })
    }

    /// Stores a rating with its own copy of the image and returns it.
    pub async fn insert_feedback(&self, new: &NewFeedback) -> Result<Feedback> {
        let id = format!("fb_{}", uuid::Uuid::new_v4().simple());
        let file = format!("{FEEDBACK_DIR}/{id}.{}", new.extension);
        let path = self.write_file(&file, new.image.clone()).await?;
        let created_at = now_millis();
        let inserted = sqlx::query(
            "INSERT INTO feedback (id, created_at, image_id, model, prompt, label, rater, file, sha256) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        .execute(&self.pool)
        .await;
        if let Err(err) = inserted {
            let _ = std::fs::remove_file(&path);
            return Err(database_error("cannot record the feedback", err));
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
        })
    }

    /// Deletes a rating: its row first (committed), then its image file. A crash between the two leaves only an
    /// orphan file, which the start-up sweep removes. `Ok(None)` when there is no such rating.
    pub async fn delete_feedback(&self, id: &str) -> Result<Option<Feedback>> {
        let row = sqlx::query(
            "DELETE FROM feedback WHERE id = ? \
             RETURNING id, created_at, image_id, model, prompt, label, rater, file",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|err| database_error("cannot delete the rating", err))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let feedback = feedback_row(&row);
        let path = self.root.join(&feedback.file);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
        Ok(Some(feedback))
    }

    /// A page of ratings, oldest first, and whether more follow.
    pub async fn list_feedback(&self, query: &FeedbackQuery) -> Result<(Vec<Feedback>, bool)> {
        let after_rowid = self
            .cursor("feedback", query.after.as_deref(), "a stored rating's")
            .await?;
        let limit = i64::from(query.limit.max(1));
        let rows = sqlx::query(
            "SELECT id, created_at, image_id, model, prompt, label, rater, file FROM feedback \
             WHERE rowid > ? AND (? IS NULL OR label = ?) AND (? IS NULL OR rater = ?) \
             AND (? IS NULL OR image_id = ?) AND (? IS NULL OR model = ?) ORDER BY rowid LIMIT ?",
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
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(|err| database_error("cannot list feedback", err))?;
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
        self.read_file(&feedback.file)
            .await
            .map_err(|err| Error::Internal(format!("rating `{}`: {err}", feedback.id)))
    }

    /// Writes a file under the data directory atomically, off the async threads; returns its path.
    async fn write_file(&self, relative: &str, bytes: Arc<Vec<u8>>) -> Result<PathBuf> {
        let path = self.root.join(relative);
        let written = path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&written, &bytes))
            .await
            .map_err(|err| Error::Internal(format!("the file writer stopped: {err}")))??;
        Ok(path)
    }

    /// Reads a file under the data directory, off the async threads.
    async fn read_file(&self, relative: &str) -> Result<Vec<u8>> {
        let path = self.root.join(relative);
        let shown = relative.to_string();
        tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .map_err(|err| Error::Internal(format!("the file reader stopped: {err}")))?
            .map_err(|err| Error::Internal(format!("cannot read {shown}: {err}")))
    }

    /// The rowid a page starts after: 0 without a cursor, else the row whose id is `after` (a 422 naming
    /// `after` when there is none). `table` is one of this module's own table names.
    async fn cursor(&self, table: &'static str, after: Option<&str>, what: &str) -> Result<i64> {
        let Some(after) = after else {
            return Ok(0);
        };
        let row = sqlx::query(&format!("SELECT rowid FROM {table} WHERE id = ?"))
            .bind(after)
            .fetch_optional(&self.pool)
            .await
            .map_err(|err| database_error("cannot read the cursor", err))?;
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

    /// A page of stored images' records (no bytes), oldest first, after the image `after`.
    pub async fn list_images(&self, after: Option<&str>, limit: u32) -> Result<(Vec<ImageRecord>, bool)> {
        let after_rowid = self.cursor("images", after, "a stored image's").await?;
        let limit = i64::from(limit.max(1));
        let rows = sqlx::query(
            "SELECT id, created_at, prompt, seed, model, reward FROM images WHERE rowid > ? ORDER BY rowid LIMIT ?",
        )
        .bind(after_rowid)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(|err| database_error("cannot list images", err))?;
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
            .map_err(|err| database_error("cannot count images", err))?;
        let count: i64 = row.get("count");
        Ok(count as u64)
    }
}

/// A `feedback` row read with the columns id, created_at, image_id, model, prompt, label, rater and file.
fn feedback_row(row: &sqlx::sqlite::SqliteRow) -> Feedback {
    Feedback {
        id: row.get("id"),
        created_at: row.get("created_at"),
        image_id: row.get("image_id"),
        model: row.get("model"),
        prompt: row.get("prompt"),
        label: row.get("label"),
        rater: row.get("rater"),
        file: row.get("file"),
    }
}

pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

fn database_error(what: &str, err: sqlx::Error) -> Error {
    Error::Internal(format!("storage: {what}: {err}"))
}

fn hex(bytes: &[u8]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn image(seed: u64) -> StoredImage {
        StoredImage {
            png: Arc::new(vec![seed as u8; 16]),
            prompt: "a red circle".into(),
            seed,
            model: "shapes-sd".into(),
            reward: Some(0.5),
        }
    }

    #[tokio::test]
    async fn a_reopen_sweeps_what_a_crash_left_and_keeps_what_was_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), 5).await.unwrap();
        let kept = storage.insert_image(&image(1)).await.unwrap().unwrap();
        drop(storage);
        // A crash between writing a file and committing its row, and one in the middle of writing a file.
        let images = dir.path().join("images");
        std::fs::write(images.join("img_0123456789abcdef0123456789abcdef.png"), b"orphan").unwrap();
        std::fs::write(images.join("img_x.partial-0123"), b"half").unwrap();
        std::fs::write(dir.path().join("feedback/fb_orphan.png"), b"orphan").unwrap();
        let reopened = Storage::open_with(dir.path(), 5, Durability::Normal).await.unwrap();
        let left: Vec<String> = std::fs::read_dir(&images)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec![format!("{kept}.png")]);
        assert_eq!(std::fs::read_dir(dir.path().join("feedback")).unwrap().count(), 0);
        assert_eq!(reopened.image(&kept, "id").await.unwrap().seed, 1);
    }

    #[tokio::test]
    async fn keeps_the_newest_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), 2).await.unwrap();
        let first = storage.insert_image(&image(1)).await.unwrap().unwrap();
        let second = storage.insert_image(&image(2)).await.unwrap().unwrap();
        let third = storage.insert_image(&image(u64::MAX)).await.unwrap().unwrap();
        assert!(first.starts_with("img_") && first.len() == 36);
        assert_eq!(storage.image_count().await.unwrap(), 2);
        let err = storage.image(&first, "image_ids[1]").await.unwrap_err();
        assert_eq!(err.param(), Some("image_ids[1]"));
        assert!(err.to_string().contains("last 2 generated images"), "{err}");
        assert!(
            !dir.path().join(format!("images/{first}.png")).exists(),
            "the old file is gone too"
        );
        drop(storage);

        let reopened = Storage::open(dir.path(), 2).await.unwrap();
        assert_eq!(reopened.image(&second, "id").await.unwrap().seed, 2);
        let last = reopened.image(&third, "id").await.unwrap();
        assert_eq!(last.seed, u64::MAX);
        assert_eq!(last.reward, Some(0.5));
        assert_eq!(*last.png, vec![255u8; 16]);
    }

    #[tokio::test]
    async fn a_damaged_file_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), 5).await.unwrap();
        let id = storage.insert_image(&image(3)).await.unwrap().unwrap();
        std::fs::write(dir.path().join(format!("images/{id}.png")), b"garbage").unwrap();
        let err = storage.image(&id, "id").await.unwrap_err();
        assert!(err.to_string().contains("SHA-256"), "{err}");
    }

    #[tokio::test]
    async fn feedback_outlives_its_image_and_pages_with_filters() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), 1).await.unwrap();
        let id = storage.insert_image(&image(1)).await.unwrap().unwrap();
        let stored = storage.image(&id, "image_id").await.unwrap();
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
                })
                .await
                .unwrap();
            ids.push(feedback.id);
        }
        // The image expires; its ratings keep their copy.
        storage.insert_image(&image(2)).await.unwrap();
        assert!(storage.image(&id, "image_id").await.is_err());
        let query = |label, rater: Option<&str>, after: Option<&String>, limit| FeedbackQuery {
            label,
            rater: rater.map(str::to_string),
            image_id: None,
            model: None,
            after: after.cloned(),
            limit,
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

    #[tokio::test]
    async fn retention_zero_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), 0).await.unwrap();
        assert!(storage.insert_image(&image(1)).await.unwrap().is_none());
        assert_eq!(storage.image_count().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn an_unwritable_data_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let err = Storage::open(&blocker.join("data"), 1).await.err().unwrap();
        assert!(err.to_string().contains("cannot create it"), "{err}");
    }
}
