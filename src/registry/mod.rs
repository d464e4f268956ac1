//! Model versions: which diffusion and reward models this server can serve, where their files are, and which
//! one is active. These are records only; the loaded engines live in `serving`.
//!
//! A `--model` folder is registered as a version named after the folder and served where it is. A fine-tune
//! job's candidate is registered by `register_candidate`: the trainer wrote it into a temporary folder in the
//! job's directory, the job checked that it loads, and here (#25) each file's SHA-256 is recorded, the files
//! go into the object store under a new, unique prefix (`models/<id>-<8 hex>/`), a manifest with the digests
//! is written there create-only, and only then is the row inserted: the row is the commit point. Nothing is
//! renamed on S3; in a local store the folder is renamed into place, which is atomic.
//!
//! A replica serves a version from a folder on its own disk: a local store's folder as it is, or, for S3, a
//! copy downloaded into `cache/` of its data directory. Files are checked against the recorded digests before
//! a version is loaded, so a damaged version is refused and the active one keeps serving.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::storage::{Lease, Storage, VersionKind, VersionRecord};

/// The object store's folder for registered versions (in a local store, the data directory's `models/`).
pub const VERSIONS_DIR: &str = "models";
/// The data directory's folder for versions downloaded from a remote store.
pub const CACHE_DIR: &str = "cache";
/// The file in a version's prefix that lists its files and their SHA-256, written last and create-only.
pub const MANIFEST: &str = "t2i-align-manifest.json";

pub struct Registry {
    storage: Arc<Storage>,
    data_dir: PathBuf,
}

/// A candidate version to register: where the job left it and what to record with it.
pub struct Candidate<'a> {
    pub kind: VersionKind,
    pub folder: &'a Path,
    pub id: &'a str,
    pub parent: &'a str,
    pub job_id: &'a str,
    pub metrics: &'a Value,
    /// The registering job's lease: the row is inserted only while it is held (#25).
    pub lease: Option<&'a Lease>,
    /// The tenant whose job made it (#28), who alone (with admins) may see and use it.
    pub tenant: Option<&'a str>,
}

impl Registry {
    pub fn new(storage: Arc<Storage>, data_dir: &Path) -> Result<Self> {
        let versions = storage
            .blobs()
            .local_path(VERSIONS_DIR)
            .unwrap_or_else(|| data_dir.join(CACHE_DIR).join(VERSIONS_DIR));
        std::fs::create_dir_all(&versions)
            .map_err(|err| Error::Config(format!("cannot create {}: {err}", versions.display())))?;
        Ok(Registry {
            storage,
            data_dir: data_dir.to_path_buf(),
        })
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// Registers a folder served as it is (the `--model` folder) under `id`.
    pub async fn register_folder(&self, id: &str, folder: &Path) -> Result<VersionRecord> {
        let absolute = std::fs::canonicalize(folder)
            .map_err(|err| Error::model(folder, format!("cannot resolve the folder: {err}")))?;
        self.storage
            .upsert_folder_version(id, VersionKind::Diffusion, &absolute.to_string_lossy())
            .await
    }

    /// The version to serve at start-up: the active one if it descends from the `--model` folder's version
    /// `folder_id` (a promoted fine-tune survives a restart), else `folder_id` itself, which becomes active.
    pub async fn startup_version(&self, folder_id: &str) -> Result<VersionRecord> {
        let versions = self.storage.versions(VersionKind::Diffusion).await?;
        if let Some(active) = versions.iter().find(|version| version.active) {
            // The folder it was fine-tuned from, at the end of its lineage.
            let ancestors = lineage(&versions, active);
            let root = ancestors.last().map_or(active.id.as_str(), String::as_str);
            if root == folder_id && active.id != folder_id {
                match self.fetch(active).await {
                    Ok(_) => return Ok(active.clone()),
                    Err(err) => tracing::warn!(
                        version = %active.id,
                        error = %err,
                        "the active version's files are damaged; serving the --model folder instead"
                    ),
                }
            }
        }
        self.storage.set_active_version(folder_id).await?;
        self.version(folder_id, "model").await
    }

    /// Removes what a registration cut short by a crash left: folders under this replica's `models/` (a local
    /// store's, or the download cache) that no version row points at, and, in a remote store, version prefixes
    /// with no row that are older than the store's orphan grace (another replica may be registering them).
    pub async fn remove_unregistered(&self) -> Result<()> {
        let versions = self.local_versions_dir();
        let entries = std::fs::read_dir(&versions)
            .map_err(|err| Error::Config(format!("cannot list {}: {err}", versions.display())))?;
        let rows = self.storage.versions_of_all_kinds().await?;
        let registered: std::collections::HashSet<PathBuf> = rows.iter().map(|version| self.folder(version)).collect();
        for entry in entries.flatten() {
            if !registered.contains(&entry.path()) {
                tracing::warn!(folder = %entry.path().display(), "removing a model folder that was never registered");
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let blobs = self.storage.blobs();
        if blobs.is_local() {
            return Ok(());
        }
        let prefixes: std::collections::HashSet<&str> = rows.iter().map(|version| version.path.as_str()).collect();
        let grace = self.storage.orphan_grace();
        for blob in blobs.list(VERSIONS_DIR).await? {
            let prefix: String = blob.key.splitn(3, '/').take(2).collect::<Vec<_>>().join("/");
            if !prefixes.contains(prefix.as_str()) && crate::storage::is_older(Some(blob.modified), grace) {
                tracing::warn!(key = %blob.key, "removing a model file that was never registered");
                blobs.delete(&blob.key).await?;
            }
        }
        Ok(())
    }

    /// The folder on this machine that holds the store's versions.
    fn local_versions_dir(&self) -> PathBuf {
        self.storage
            .blobs()
            .local_path(VERSIONS_DIR)
            .unwrap_or_else(|| self.data_dir.join(CACHE_DIR).join(VERSIONS_DIR))
    }

    /// The version `id`, or a 422 naming `field` that lists the known ones.
    pub async fn version(&self, id: &str, field: &str) -> Result<VersionRecord> {
        self.version_for(id, field, None).await
    }

    /// The version `id` as a caller who sees `tenant`'s records (`None`: every tenant's) may use it: another
    /// tenant's version is answered as unknown, and the 422 lists only the versions the caller may use.
    pub async fn version_for(&self, id: &str, field: &str, tenant: Option<&str>) -> Result<VersionRecord> {
        if let Some(version) = self.storage.version(id).await? {
            if version.kind == VersionKind::Diffusion.name() && version.visible_to(tenant) {
                return Ok(version);
            }
        }
        let known: Vec<String> = self
            .storage
            .versions(VersionKind::Diffusion)
            .await?
            .into_iter()
            .filter(|version| version.visible_to(tenant))
            .map(|version| version.id)
            .collect();
        Err(Error::validation(
            field,
            format!(
                "`{field}` is `{id}`, which is not a model version; known versions: {}",
                known.join(", ")
            ),
        ))
    }

    /// Where a version's files are on this machine: a `--model` folder where it is; a fine-tuned version in a
    /// local store where the store keeps it, else in the download cache (see `fetch`).
    pub fn folder(&self, version: &VersionRecord) -> PathBuf {
        let path = PathBuf::from(&version.path);
        if path.is_absolute() {
            return path;
        }
        match self.storage.blobs().local_path(&version.path) {
            Some(local) => local,
            None => self.data_dir.join(CACHE_DIR).join(path),
        }
    }

    /// The version's folder on this machine, its files checked against the recorded digests. A version in a
    /// remote store is downloaded into the cache first (into a staging folder, checked, then renamed), unless
    /// an intact copy is there already.
    pub async fn fetch(&self, version: &VersionRecord) -> Result<PathBuf> {
        let folder = self.folder(version);
        let remote = !self.storage.blobs().is_local() && !Path::new(&version.path).is_absolute();
        if remote && !(folder.is_dir() && self.verify(version).await.is_ok()) {
            self.download(version, &folder).await?;
        }
        self.verify(version).await?;
        Ok(folder)
    }

    async fn download(&self, version: &VersionRecord, folder: &Path) -> Result<()> {
        let Some(Value::Object(files)) = version.checksums.clone() else {
            return Err(Error::Internal(format!(
                "version `{}` records no files to download",
                version.id
            )));
        };
        let staging = folder.with_extension(format!("partial-{}", uuid::Uuid::new_v4().simple()));
        let result = async {
            for relative in files.keys() {
                let bytes = self
                    .storage
                    .blobs()
                    .get(&format!("{}/{relative}", version.path))
                    .await?;
                let path = staging.join(relative);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|err| Error::Internal(format!("cannot create {}: {err}", parent.display())))?;
                }
                crate::storage::write_atomically(&path, &bytes)?;
            }
            let _ = std::fs::remove_dir_all(folder);
            std::fs::rename(&staging, folder).map_err(|err| {
                Error::Internal(format!(
                    "cannot move {} to {}: {err}",
                    staging.display(),
                    folder.display()
                ))
            })
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result.map(|_| tracing::info!(version = %version.id, folder = %folder.display(), "downloaded the version"))
    }

    /// Checks a registered version's files against the digests recorded when it was registered.
    pub async fn verify(&self, version: &VersionRecord) -> Result<()> {
        let Some(Value::Object(expected)) = version.checksums.clone() else {
            return Ok(());
        };
        let folder = self.folder(version);
        let id = version.id.clone();
        tokio::task::spawn_blocking(move || {
            for (relative, digest) in expected {
                let path = folder.join(&relative);
                let actual = sha256_file(&path)
                    .map_err(|err| Error::model(&folder, format!("version `{id}`: cannot read {relative}: {err}")))?;
                if Some(actual.as_str()) != digest.as_str() {
                    return Err(Error::model(
                        &folder,
                        format!("version `{id}`: {relative} does not match the SHA-256 recorded at registration"),
                    ));
                }
            }
            Ok(())
        })
        .await
        .map_err(|err| Error::Internal(format!("the checksum task stopped: {err}")))?
    }

    /// Registers a checked candidate folder: its files go into the object store under a new prefix, then a
    /// manifest with every file's SHA-256 (create-only), then the row, which is the commit point. The folder
    /// is moved into place (a local store) or into the download cache (a remote one). On any failure nothing
    /// is registered, what was written is removed, and the candidate folder is left where it was.
    /// A job's attempt that finds its version registered by an earlier attempt of the same job (which lost its
    /// lease after the commit) gets that record: a version is never registered twice.
    pub async fn register_candidate(&self, candidate: Candidate<'_>) -> Result<VersionRecord> {
        if let Some(existing) = self.storage.version(candidate.id).await? {
            if existing.job_id.as_deref() == Some(candidate.job_id) {
                tracing::info!(version = %existing.id, "an earlier attempt of the job registered the version already");
                return Ok(existing);
            }
        }
        let prefix = format!(
            "{VERSIONS_DIR}/{}-{}",
            candidate.id,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let folder = candidate.folder.to_path_buf();
        let checksums = tokio::task::spawn_blocking(move || checksums(&folder))
            .await
            .map_err(|err| Error::Internal(format!("the checksum task stopped: {err}")))??;
        let record = VersionRecord {
            id: candidate.id.to_string(),
            created_at: crate::storage::now_millis(),
            kind: candidate.kind.name().into(),
            source: "fine_tune".into(),
            path: prefix.clone(),
            parent: Some(candidate.parent.to_string()),
            job_id: Some(candidate.job_id.to_string()),
            metrics: Some(candidate.metrics.clone()),
            checksums: Some(serde_json::to_value(&checksums).unwrap_or(Value::Null)),
            active: false,
            tenant: candidate.tenant.map(String::from),
        };
        let target = self.folder(&record);
        let blobs = self.storage.blobs();
        let written = async {
            if !blobs.is_local() {
                for relative in checksums.keys() {
                    let bytes = std::fs::read(candidate.folder.join(relative))
                        .map_err(|err| Error::Internal(format!("cannot read {relative}: {err}")))?;
                    blobs.put(&format!("{prefix}/{relative}"), bytes).await?;
                }
            }
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|err| Error::Internal(format!("cannot create {}: {err}", parent.display())))?;
            }
            std::fs::rename(candidate.folder, &target).map_err(|err| {
                Error::Internal(format!(
                    "cannot move {} to {}: {err}",
                    candidate.folder.display(),
                    target.display()
                ))
            })?;
            let manifest = serde_json::json!({"id": candidate.id, "files": checksums});
            if !blobs
                .put_new(&format!("{prefix}/{MANIFEST}"), manifest.to_string().into_bytes())
                .await?
            {
                return Err(Error::Internal(format!("{prefix}/{MANIFEST} exists already")));
            }
            match candidate.lease {
                Some(lease) => self.storage.insert_version_fenced(lease, &record).await,
                None => self.storage.insert_version(&record).await,
            }
        }
        .await;
        if let Err(err) = written {
            // Nothing without a row stays: the manifest and the uploaded files go, the folder goes back.
            let _ = blobs.delete(&format!("{prefix}/{MANIFEST}")).await;
            if !blobs.is_local() {
                for relative in checksums.keys() {
                    let _ = blobs.delete(&format!("{prefix}/{relative}")).await;
                }
            }
            if target.is_dir() {
                let _ = std::fs::rename(&target, candidate.folder);
            }
            return Err(err);
        }
        Ok(record)
    }
}

/// A version's ancestors, nearest first: its parent, the parent's parent, ... (a cycle stops the walk).
pub fn lineage(versions: &[VersionRecord], version: &VersionRecord) -> Vec<String> {
    let mut ancestors: Vec<String> = Vec::new();
    let mut parent = version.parent.clone();
    while let Some(id) = parent.take() {
        if ancestors.contains(&id) || ancestors.len() > versions.len() {
            break;
        }
        parent = versions.iter().find(|v| v.id == id).and_then(|v| v.parent.clone());
        ancestors.push(id);
    }
    ancestors
}

/// SHA-256 of every file under `folder`, by path relative to it (with `/`).
pub fn checksums(folder: &Path) -> Result<BTreeMap<String, String>> {
    let mut digests = BTreeMap::new();
    let mut pending = vec![folder.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|err| Error::Internal(format!("cannot list {}: {err}", dir.display())))?;
        for entry in entries {
            let path = entry
                .map_err(|err| Error::Internal(format!("cannot list {}: {err}", dir.display())))?
                .path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path
                    .strip_prefix(folder)
                    .map_err(|err| Error::Internal(err.to_string()))?
                    .components()
                    .map(|part| part.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                let digest = sha256_file(&path)
                    .map_err(|err| Error::Internal(format!("cannot read {}: {err}", path.display())))?;
                digests.insert(relative, digest);
            }
        }
    }
    Ok(digests)
}

/// The sha256 of a file's bytes, in lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(crate::storage::hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_registered_candidate_is_moved_checksummed_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(&dir.path().join("data"), 1).await.unwrap());
        let registry = Registry::new(storage.clone(), &dir.path().join("data")).unwrap();
        let candidate = dir.path().join("candidate");
        std::fs::create_dir_all(candidate.join("unet")).unwrap();
        std::fs::write(candidate.join("unet/model.onnx"), b"weights").unwrap();
        std::fs::write(candidate.join("model_index.json"), b"{}").unwrap();
        // A LoRA fine-tune's adapter, beside the merged weights, travels with them.
        std::fs::create_dir_all(candidate.join("adapter")).unwrap();
        std::fs::write(candidate.join("adapter/adapter.safetensors"), b"lora").unwrap();
        std::fs::write(candidate.join("adapter/adapter.json"), b"{\"rank\": 8}").unwrap();
        let record = registry
            .register_candidate(Candidate {
                kind: VersionKind::Diffusion,
                folder: &candidate,
                id: "base-ft-1",
                parent: "base",
                job_id: "ft_1",
                lease: None,
                metrics: &serde_json::json!({"gate": {"passed": true}}),
                tenant: Some("acme"),
            })
            .await
            .unwrap();
        assert!(!candidate.exists());
        let folder = registry.folder(&record);
        assert!(folder.join("unet/model.onnx").is_file());
        assert!(folder.join("adapter/adapter.safetensors").is_file());
        let sums = record.checksums.clone().unwrap();
        assert_eq!(sums.as_object().unwrap().len(), 4);
        for file in ["unet/model.onnx", "adapter/adapter.safetensors", "adapter/adapter.json"] {
            assert!(sums.get(file).is_some(), "{file}");
        }
        let manifest: Value = serde_json::from_slice(&std::fs::read(folder.join(MANIFEST)).unwrap()).unwrap();
        assert_eq!(manifest["files"], sums);
        registry.verify(&record).await.unwrap();
        std::fs::write(folder.join("unet/model.onnx"), b"damaged").unwrap();
        let err = registry.verify(&record).await.unwrap_err();
        assert!(err.to_string().contains("unet/model.onnx"), "{err}");
        let err = registry.version("nope", "base_model").await.unwrap_err();
        assert_eq!(err.param(), Some("base_model"));
        // The job's tenant and admins may use the version; another tenant is told it does not exist.
        assert_eq!(record.tenant.as_deref(), Some("acme"));
        assert!(registry.version_for("base-ft-1", "model", Some("acme")).await.is_ok());
        assert!(registry.version_for("base-ft-1", "model", None).await.is_ok());
        let hidden = registry
            .version_for("base-ft-1", "model", Some("other"))
            .await
            .unwrap_err();
        assert_eq!(hidden.param(), Some("model"));
        assert!(!hidden.to_string().contains("known versions: base-ft-1"), "{hidden}");
    }
}
