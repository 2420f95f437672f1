//! Content-addressed model cache.
//!
//! Layout under the cache root (usually a RunPod network volume shared by many workers):
//! ```text
//! blobs/sha256/AB/AB12…EF.safetensors   verified file, named by its SHA-256 (uppercase)
//! blobs/sha256/AB/AB12…EF.json          sidecar: ids, hashes, trigger words, base model
//! models/{checkpoint,lora,vae}/<name>.safetensors -> ../../blobs/…   human-readable symlink
//! partial/<key>.part, <key>.part.json   in-progress download and its resolved URL
//! locks/<key>.lock                      advisory lock: one downloader per file per volume
//! index/<key>.json                      source identity (URL, HF file, local path) -> sha256
//! ```
//! A blob only appears under its hash name after its SHA-256 was verified (atomic rename), so
//! any file under `blobs/` is complete; readers never see partial data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::EntryError;
use super::manifest::ModelKind;

/// Metadata stored beside each blob. Never contains tokens or presigned URLs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    pub sha256: String,
    pub size: u64,
    /// Display file name (sanitised), e.g. `sdXL_v10VAEFix.safetensors`.
    pub file_name: String,
    /// Human description of where it came from (`civitai version 128078`, redacted URL, …).
    pub source: String,
    /// AutoV3 (first 12 hex of SHA-256 of the safetensors payload), computed locally.
    #[serde(default)]
    pub autov3: Option<String>,
    #[serde(default)]
    pub civitai: Option<CivitaiInfo>,
    /// Unix seconds when verified.
    #[serde(default)]
    pub fetched_at: u64,
}

/// What Civitai told us about a file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CivitaiInfo {
    pub model_id: u64,
    pub version_id: u64,
    pub file_id: u64,
    #[serde(default)]
    pub model_name: Option<String>,
    #[serde(default)]
    pub version_name: Option<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub base_model: Option<String>,
    #[serde(default)]
    pub air: Option<String>,
    #[serde(default)]
    pub trained_words: Vec<String>,
    /// Every hash Civitai lists (`SHA256`, `AutoV1`, `AutoV2`, `AutoV3`, `CRC32`, `BLAKE3`).
    #[serde(default)]
    pub hashes: BTreeMap<String, String>,
}

/// Handle on the cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// Held while this process downloads or links one file; dropping it releases the lock.
pub struct CacheLock {
    _file: std::fs::File,
}

impl Cache {
    /// Opens (creating) the cache root and its subdirectories.
    pub fn open(root: impl Into<PathBuf>) -> Result<Cache, EntryError> {
        let root = root.into();
        for sub in [
            "blobs/sha256",
            "models/checkpoint",
            "models/lora",
            "models/vae",
            "partial",
            "locks",
            "index",
        ] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir)
                .map_err(|e| EntryError::io("create cache directory", &dir, e))?;
        }
        Ok(Cache { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_dir(&self, sha: &str) -> PathBuf {
        self.root
            .join("blobs/sha256")
            .join(&sha[..2.min(sha.len())])
    }

    /// Where the verified file with this SHA-256 lives.
    pub fn blob_path(&self, sha: &str) -> PathBuf {
        self.blob_dir(sha).join(format!("{sha}.safetensors"))
    }

    pub fn sidecar_path(&self, sha: &str) -> PathBuf {
        self.blob_dir(sha).join(format!("{sha}.json"))
    }

    pub fn part_path(&self, key: &str) -> PathBuf {
        self.root.join("partial").join(format!("{key}.part"))
    }

    pub fn part_state_path(&self, key: &str) -> PathBuf {
        self.root.join("partial").join(format!("{key}.part.json"))
    }

    fn index_path(&self, key: &str) -> PathBuf {
        self.root.join("index").join(format!("{key}.json"))
    }

    /// The verified blob and its sidecar, if present and of the recorded size.
    pub fn lookup(&self, sha: &str) -> Option<(PathBuf, Sidecar)> {
        let blob = self.blob_path(sha);
        let meta = std::fs::metadata(&blob).ok()?;
        let sidecar: Sidecar = std::fs::read(self.sidecar_path(sha))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| Sidecar {
                sha256: sha.to_string(),
                size: meta.len(),
                file_name: format!("{sha}.safetensors"),
                ..Sidecar::default()
            });
        if sidecar.size != meta.len() {
            tracing::warn!(sha256 = sha, "cached blob has the wrong size; ignoring it");
            return None;
        }
        Some((blob, sidecar))
    }

    /// Takes the per-file lock, waiting (without blocking a runtime thread) while another
    /// worker on the same volume holds it. `flock` locks belong to the open file description,
    /// so two handles in one process exclude each other too.
    pub async fn lock(&self, key: &str, label: &str) -> Result<CacheLock, EntryError> {
        let path = self.root.join("locks").join(format!("{key}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| EntryError::io("open lock file", &path, e))?;
        let mut announced = false;
        let mut delay = Duration::from_millis(50);
        loop {
            match fs4::fs_std::FileExt::try_lock_exclusive(&file) {
                Ok(true) => return Ok(CacheLock { _file: file }),
                Ok(false) => {}
                Err(e) => return Err(EntryError::io("lock", &path, e)),
            }
            if !announced {
                tracing::info!(
                    entry = label,
                    "another worker is downloading this file; waiting for it"
                );
                announced = true;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    /// Writes `value` as JSON atomically (temp file + rename).
    fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), EntryError> {
        let bytes = serde_json::to_vec_pretty(value)
            .map_err(|e| EntryError::BadMetadata(format!("cannot encode sidecar: {e}")))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes).map_err(|e| EntryError::io("write", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| EntryError::io("rename", path, e))
    }

    pub fn write_sidecar(&self, sidecar: &Sidecar) -> Result<(), EntryError> {
        self.write_json(&self.sidecar_path(&sidecar.sha256), sidecar)
    }

    /// Moves a verified part file into the store under its hash (atomic on one filesystem).
    pub fn commit(&self, part: &Path, sidecar: &Sidecar) -> Result<PathBuf, EntryError> {
        let dir = self.blob_dir(&sidecar.sha256);
        std::fs::create_dir_all(&dir).map_err(|e| EntryError::io("create", &dir, e))?;
        let blob = self.blob_path(&sidecar.sha256);
        // Sidecar first: a blob without a sidecar is still usable, the reverse is not visible.
        self.write_sidecar(sidecar)?;
        std::fs::rename(part, &blob).map_err(|e| EntryError::io("rename", &blob, e))?;
        Ok(blob)
    }

    /// Places an already verified file (e.g. in the Hugging Face cache) into the store by hard
    /// link, falling back to a copy when the link crosses filesystems.
    pub fn adopt(&self, src: &Path, sidecar: &Sidecar) -> Result<PathBuf, EntryError> {
        let blob = self.blob_path(&sidecar.sha256);
        if blob.exists() {
            self.write_sidecar(sidecar)?;
            return Ok(blob);
        }
        let dir = self.blob_dir(&sidecar.sha256);
        std::fs::create_dir_all(&dir).map_err(|e| EntryError::io("create", &dir, e))?;
        let src = std::fs::canonicalize(src).map_err(|e| EntryError::io("resolve", src, e))?;
        let tmp = blob.with_extension(format!("adopt{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(&src, &tmp).is_err() {
            std::fs::copy(&src, &tmp).map_err(|e| EntryError::io("copy into cache", &tmp, e))?;
        }
        self.write_sidecar(sidecar)?;
        std::fs::rename(&tmp, &blob).map_err(|e| EntryError::io("rename", &blob, e))?;
        Ok(blob)
    }

    /// Points `models/<kind>/<name>.safetensors` at the blob (relative symlink, replaced
    /// atomically). Best effort: the blob path is what the worker loads.
    pub fn link_name(&self, kind: ModelKind, name: &str, sha: &str) {
        let file = super::names::sanitize_file_name(&format!("{name}.safetensors"));
        let link = self.root.join("models").join(kind.as_str()).join(file);
        let target = PathBuf::from("../../blobs/sha256")
            .join(&sha[..2.min(sha.len())])
            .join(format!("{sha}.safetensors"));
        let tmp = link.with_extension(format!("link{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        #[cfg(unix)]
        let made = std::os::unix::fs::symlink(&target, &tmp);
        #[cfg(not(unix))]
        let made: std::io::Result<()> = Err(std::io::Error::other("no symlinks"));
        match made.and_then(|_| std::fs::rename(&tmp, &link)) {
            Ok(()) => {}
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                tracing::debug!(error = %e, "could not create the human-readable cache link");
            }
        }
    }

    /// Looks up a source identity (URL, HF file, local path + size + mtime) → SHA-256.
    pub fn index_get(&self, key: &str) -> Option<IndexRecord> {
        std::fs::read(self.index_path(key))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    pub fn index_put(&self, key: &str, record: &IndexRecord) -> Result<(), EntryError> {
        self.write_json(&self.index_path(key), record)
    }
}

/// Index entry: what a source identity resolved to last time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexRecord {
    pub sha256: String,
    pub size: u64,
    /// For local files: modification time in unix nanoseconds when hashed.
    #[serde(default)]
    pub mtime_ns: Option<u128>,
    #[serde(default)]
    pub file_name: Option<String>,
    /// AutoV3 when it was computed (LoRAs).
    #[serde(default)]
    pub autov3: Option<String>,
}

impl IndexRecord {
    /// The record of a downloaded (or Hugging Face) file: its hash, size and display name.
    pub fn downloaded(sha256: &str, size: u64, file_name: &str) -> Self {
        IndexRecord {
            sha256: sha256.to_string(),
            size,
            mtime_ns: None,
            file_name: Some(file_name.to_string()),
            autov3: None,
        }
    }
}

/// A stable short key for a source identity (hex of SHA-256 of the text).
pub fn key_for(identity: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(identity.as_bytes());
    hex::encode(&d[..16])
}

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
