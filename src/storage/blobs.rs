//! Where the files live (#25): generated images and the images behind ratings, through the `object_store`
//! crate. By default that is a folder on this machine (the data directory); at scale, any S3-compatible bucket,
//! shared by every replica, with `--object-store s3://bucket/prefix`.
//!
//! Every write is atomic: a local write goes to a staging file that is renamed into place (fsynced with
//! `--durability full`), and an S3 PUT is all or nothing. Keys are unique, so nothing is overwritten, and a
//! database row that names a key is committed only after the key is written. What a crash leaves is a blob
//! without a row, which `Storage::sweep` removes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::error::{Error, Result};

/// How to reach the object store, from `--object-store` and the `--s3-*` flags. Credentials come only from
/// the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), never from flags.
#[derive(Debug, Clone, Default)]
pub struct BlobConfig {
    /// `s3://bucket/prefix`, or `file:///path`; `None` is the data directory.
    pub url: Option<String>,
    /// An S3-compatible server's endpoint (`http://127.0.0.1:8333`); `None` is AWS, or `AWS_ENDPOINT_URL`.
    pub s3_endpoint: Option<String>,
    /// `None` takes `AWS_REGION`, else `us-east-1`.
    pub s3_region: Option<String>,
    /// Credentials for S3, where the environment does not give them (the command line never does: the
    /// server reads `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`).
    pub s3_access_key: Option<String>,
    pub s3_secret_key: Option<String>,
    /// Send create-only writes as conditional PUTs (`If-None-Match: *`). Some S3 servers ignore them; with
    /// this off, the database row alone guards what must be written once.
    pub s3_conditional_put: bool,
}

/// The object store and what it is, for errors.
#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// The folder, for a local store (its staging leftovers are swept by walking it).
    local_root: Option<PathBuf>,
    shown: String,
    conditional_put: bool,
}

/// A stored object's key and when it was last written.
#[derive(Debug, Clone)]
pub struct BlobMeta {
    pub key: String,
    pub modified: SystemTime,
}

impl Blobs {
    /// The store `config` names, or the folder `data_dir` when it names none. `fsync` makes local writes
    /// durable against power loss before they return.
    pub fn open(config: &BlobConfig, data_dir: &Path, fsync: bool) -> Result<Blobs> {
        let url = config.url.as_deref().map(str::trim).filter(|url| !url.is_empty());
        let local = |root: PathBuf| -> Result<Blobs> {
            std::fs::create_dir_all(&root)
                .map_err(|err| Error::Config(format!("object store `{}`: cannot create it: {err}", root.display())))?;
            let store = LocalFileSystem::new_with_prefix(&root)
                .map_err(|err| Error::Config(format!("object store `{}`: {err}", root.display())))?
                .with_fsync(fsync);
            Ok(Blobs {
                store: Arc::new(store),
                shown: format!("file://{}", root.display()),
                local_root: Some(root),
                conditional_put: true,
            })
        };
        let Some(url) = url else {
            return local(data_dir.to_path_buf());
        };
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(Error::Config(format!(
                    "--object-store `{url}`: a file URL names an absolute folder, as file:///var/lib/t2i"
                )));
            }
            return local(PathBuf::from(path));
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(Error::Config(format!(
                "--object-store `{url}` must be s3://bucket[/prefix] or file:///folder (the default is --data-dir)"
            )));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        if bucket.is_empty() {
            return Err(Error::Config(format!("--object-store `{url}` names no bucket")));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(endpoint) = &config.s3_endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                // A custom endpoint is an S3-compatible server: buckets are paths, not host names.
                .with_virtual_hosted_style_request(false);
        }
        if let (Some(key), Some(secret)) = (&config.s3_access_key, &config.s3_secret_key) {
            builder = builder.with_access_key_id(key).with_secret_access_key(secret);
        }
        match &config.s3_region {
            Some(region) => builder = builder.with_region(region),
            None if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() => {
                builder = builder.with_region("us-east-1")
            }
            None => {}
        }
        builder = builder.with_conditional_put(if config.s3_conditional_put {
            S3ConditionalPut::ETagMatch
        } else {
            S3ConditionalPut::Disabled
        });
        let shown = match &config.s3_endpoint {
            Some(endpoint) => format!("{url} at {endpoint}"),
            None => url.to_string(),
        };
        let s3 = builder
            .build()
            .map_err(|err| Error::Config(format!("object store `{shown}`: {err}")))?;
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        };
        Ok(Blobs {
            store,
            local_root: None,
            shown,
            conditional_put: config.s3_conditional_put,
        })
    }

    /// The store, as logs and errors show it.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    pub fn is_local(&self) -> bool {
        self.local_root.is_some()
    }

    /// Where `key` is on this machine, for a local store.
    pub fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.local_root.as_ref().map(|root| root.join(key))
    }

    /// Writes `bytes` under `key`, all or nothing.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        self.store
            .put(&Key::from(key), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|err| self.error(&format!("cannot write `{key}`"), err))
    }

    /// Writes `bytes` under `key` only if nothing is there yet; `Ok(false)` when something was. Without
    /// conditional writes (`--s3-conditional-put false`) the check and the write are two requests, so the
    /// caller's database row must be what guards against a race.
    pub async fn put_new(&self, key: &str, bytes: Vec<u8>) -> Result<bool> {
        let location = Key::from(key);
        if !self.conditional_put {
            if self.exists(key).await? {
                return Ok(false);
            }
            return self.put(key, bytes).await.map(|_| true);
        }
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self.store.put_opts(&location, PutPayload::from(bytes), options).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(err) => Err(self.error(&format!("cannot write `{key}`"), err)),
        }
    }

    /// The bytes under `key`; a missing key is an error that says so.
    pub async fn get(&self, key: &str) -> Result<Vec<u8>> {
        let fail = |err| self.error(&format!("cannot read `{key}`"), err);
        let result = self.store.get(&Key::from(key)).await.map_err(fail)?;
        result.bytes().await.map(|bytes| bytes.to_vec()).map_err(fail)
    }

    pub async fn exists(&self, key: &str) -> Result<bool> {
        match self.store.head(&Key::from(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(err) => Err(self.error(&format!("cannot look up `{key}`"), err)),
        }
    }

    /// Deletes `key`; deleting what is not there is no error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&Key::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(self.error(&format!("cannot delete `{key}`"), err)),
        }
    }

    /// Every key under `prefix` (a folder: `images`), with its last write time.
    pub async fn list(&self, prefix: &str) -> Result<Vec<BlobMeta>> {
        self.store
            .list(Some(&Key::from(prefix)))
            .map_ok(|meta| BlobMeta {
                key: meta.location.to_string(),
                modified: meta.last_modified.into(),
            })
            .try_collect()
            .await
            .map_err(|err| self.error(&format!("cannot list `{prefix}/`"), err))
    }

    /// Whether the store answers within `timeout` (for `/ready`): a listing of one folder.
    pub async fn ping(&self, timeout: Duration) -> Result<()> {
        let folder = Key::from("images");
        let listing = self.store.list_with_delimiter(Some(&folder));
        match tokio::time::timeout(timeout, listing).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(self.error("cannot list `images/`", err)),
            Err(_) => Err(Error::Unavailable(format!(
                "object store `{}` is unreachable: it did not answer within {} s",
                self.shown,
                timeout.as_secs()
            ))),
        }
    }

    /// Files a crash left in a local store's `folder` while they were being written (object_store's staging
    /// files, `<name>#<digits>`, and this server's older `<name>.partial-<id>`), which listings do not show.
    /// Removes those older than `min_age`; returns how many. Nothing for S3, where a write is one request.
    pub fn sweep_staging(&self, folder: &str, min_age: Duration) -> usize {
        let Some(root) = &self.local_root else {
            return 0;
        };
        let Ok(entries) = std::fs::read_dir(root.join(folder)) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let staging = name.contains(".partial-")
                    || name
                        .rsplit_once('#')
                        .is_some_and(|(_, suffix)| !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()));
                staging && is_older(entry.metadata().ok().and_then(|meta| meta.modified().ok()), min_age)
            })
            .filter(|entry| std::fs::remove_file(entry.path()).is_ok())
            .count()
    }

    /// An object-store error as ours: 503 naming the store when it cannot be reached, else a 500.
    fn error(&self, what: &str, err: object_store::Error) -> Error {
        match err {
            object_store::Error::NotFound { .. } => {
                Error::Internal(format!("object store `{}`: {what}: it is not there", self.shown))
            }
            object_store::Error::Generic { .. } => Error::Unavailable(format!(
                "object store `{}` is unreachable or refused the request ({what}): {err}",
                self.shown
            )),
            err => Error::Internal(format!("object store `{}`: {what}: {err}", self.shown)),
        }
    }
}

/// Whether a time is at least `min_age` ago (an unknown time counts as old).
pub fn is_older(modified: Option<SystemTime>, min_age: Duration) -> bool {
    modified
        .and_then(|modified| SystemTime::now().duration_since(modified).ok())
        .is_none_or(|age| age >= min_age)
}
