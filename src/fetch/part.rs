//! A download in progress: the `.part` file in the cache's `partial/` directory and, beside
//! it, the state a restarted worker needs to resume it: the resolved URL (reused until it
//! expires), what the finished file must be, and the byte ranges a multi-connection download
//! has on disk.

use std::io::Seek;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::cache::Cache;
use super::error::EntryError;
use super::resolve::ResolvedUrl;

/// One byte range `[start, end)` of the file; `done` bytes from `start` are on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Seg {
    pub start: u64,
    pub end: u64,
    pub done: u64,
}

impl Seg {
    /// The next byte to fetch.
    pub(crate) fn next(&self) -> u64 {
        self.start + self.done
    }
    pub(crate) fn remaining(&self) -> u64 {
        self.end - self.next()
    }
}

/// Bytes from 0 that are all on disk.
pub(crate) fn contiguous_prefix(segs: &[Seg]) -> u64 {
    let mut at = 0;
    for s in segs {
        if s.start != at {
            break;
        }
        at = s.next();
        if s.remaining() > 0 {
            break;
        }
    }
    at
}

/// Persisted beside the part file so a restarted worker resumes with the same URL.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PartState {
    pub url: ResolvedUrl,
    sha256: Option<String>,
    size: Option<u64>,
    /// Range progress of a multi-connection download.
    #[serde(default)]
    pub segments: Option<Vec<Seg>>,
}

/// The part file of one cache key and its state file, for one expected content.
pub(crate) struct PartFile {
    pub path: PathBuf,
    state_path: PathBuf,
    sha256: Option<String>,
    size: Option<u64>,
}

impl PartFile {
    /// `sha256` and `size` are what the finished file must be; saved state for other content
    /// is not reused.
    pub(crate) fn new(cache: &Cache, key: &str, sha256: Option<String>, size: Option<u64>) -> Self {
        PartFile {
            path: cache.part_path(key),
            state_path: cache.part_state_path(key),
            sha256,
            size,
        }
    }

    /// The saved state, if there is one and it was written for the same expected content.
    pub(crate) fn load(&self) -> Option<PartState> {
        std::fs::read(&self.state_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<PartState>(&b).ok())
            .filter(|s| s.sha256 == self.sha256 && s.size == self.size)
    }

    /// Saves the URL and, for a multi-connection download, its range progress.
    pub(crate) fn save(
        &self,
        url: &ResolvedUrl,
        segments: Option<&[Seg]>,
    ) -> Result<(), EntryError> {
        let s = PartState {
            url: url.clone(),
            sha256: self.sha256.clone(),
            size: self.size,
            segments: segments.map(<[Seg]>::to_vec),
        };
        let bytes = serde_json::to_vec(&s)
            .map_err(|e| EntryError::BadMetadata(format!("cannot encode part state: {e}")))?;
        std::fs::write(&self.state_path, bytes)
            .map_err(|e| EntryError::io("write", &self.state_path, e))
    }

    /// Current length of the part file (0 when it does not exist).
    pub(crate) fn len(&self) -> Result<u64, EntryError> {
        match std::fs::metadata(&self.path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(EntryError::io("stat", &self.path, e)),
        }
    }

    /// Empties (or creates) the part file: the download starts from byte 0.
    pub(crate) fn truncate(&self) -> Result<(), EntryError> {
        std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)
            .map(|_| ())
            .map_err(|e| EntryError::io("truncate", &self.path, e))
    }

    /// Cuts the part file to its first `len` bytes.
    pub(crate) fn keep_prefix(&self, len: u64) -> Result<(), EntryError> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .and_then(|f| f.set_len(len))
            .map_err(|e| EntryError::io("truncate", &self.path, e))
    }

    /// Deletes the part file and its state: what is there can never become the expected file.
    pub(crate) fn discard(&self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.state_path);
    }

    /// Makes the verified part file durable and forgets its state, before it is renamed into
    /// the cache.
    pub(crate) fn seal(&self) -> Result<(), EntryError> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .and_then(|mut f| {
                f.seek(std::io::SeekFrom::End(0))?;
                f.sync_all()
            })
            .map_err(|e| EntryError::io("sync", &self.path, e))?;
        let _ = std::fs::remove_file(&self.state_path);
        Ok(())
    }
}
