//! What makes a downloaded (or local) file acceptable: its SHA-256 and AutoV3, computed while
//! the bytes arrive or from disk, and a check of its first bytes that catches an HTML page, a
//! JSON error or a pickle archive before gigabytes of it are saved (see docs/civitai.md,
//! *Download redirect*, for how servers end up sending those instead of the model).

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::error::EntryError;
use super::progress::FileProgress;

/// Incremental SHA-256 over the whole file and (optionally) over the safetensors payload.
pub(crate) struct Hashing {
    full: Sha256,
    v3: Option<Sha256>,
    want_v3: bool,
    /// Bytes fed so far.
    pos: u64,
    head: Vec<u8>,
    /// Offset where the payload starts (8 + header length), once known.
    payload_start: Option<u64>,
}

impl Hashing {
    pub(crate) fn new(want_v3: bool) -> Self {
        Hashing {
            full: Sha256::new(),
            v3: None,
            want_v3,
            pos: 0,
            head: Vec::with_capacity(8),
            payload_start: None,
        }
    }

    /// A state that matches no file length, so the downloader rehashes whatever the part file
    /// holds before going on (after a write error, or before a resume).
    pub(crate) fn stale(want_v3: bool) -> Self {
        Hashing {
            pos: u64::MAX,
            ..Hashing::new(want_v3)
        }
    }

    /// Bytes fed so far (`u64::MAX` for a [`Hashing::stale`] state).
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    pub(crate) fn want_v3(&self) -> bool {
        self.want_v3
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        self.full.update(data);
        if self.want_v3 {
            if self.head.len() < 8 {
                let take = (8 - self.head.len()).min(data.len());
                self.head.extend_from_slice(&data[..take]);
                if self.head.len() == 8 {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&self.head);
                    self.payload_start = Some(8u64.saturating_add(u64::from_le_bytes(n)));
                    self.v3 = Some(Sha256::new());
                }
            }
            if let (Some(start), Some(h)) = (self.payload_start, self.v3.as_mut()) {
                let end = self.pos + data.len() as u64;
                if end > start {
                    let skip = start.saturating_sub(self.pos) as usize;
                    h.update(&data[skip.min(data.len())..]);
                }
            }
        }
        self.pos += data.len() as u64;
    }

    /// (SHA-256, AutoV3) as uppercase hex; AutoV3 is the first 12 hex digits as Civitai lists it.
    pub(crate) fn finish(self) -> (String, Option<String>) {
        let sha = hex::encode_upper(self.full.finalize());
        let v3 = self
            .v3
            .map(|h| hex::encode_upper(h.finalize())[..12].to_string());
        (sha, v3)
    }
}

/// Hashes a whole file on a blocking thread.
pub(crate) async fn hash_file(
    path: &Path,
    want_v3: bool,
    progress: Option<FileProgress>,
) -> Result<(String, Option<String>, u64), EntryError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut hashing = Hashing::new(want_v3);
        hash_prefix(&path, u64::MAX, &mut hashing, progress.as_ref())?;
        let size = hashing.pos;
        let (sha, v3) = hashing.finish();
        Ok((sha, v3, size))
    })
    .await
    .map_err(|e| EntryError::BadMetadata(format!("hashing task failed: {e}")))?
}

fn hash_prefix(
    path: &Path,
    limit: u64,
    hashing: &mut Hashing,
    progress: Option<&FileProgress>,
) -> Result<(), EntryError> {
    let mut f = std::fs::File::open(path).map_err(|e| EntryError::io("open", path, e))?;
    let mut buf = vec![0u8; 4 << 20];
    let mut left = limit;
    while left > 0 {
        let want = buf.len().min(left.min(usize::MAX as u64) as usize);
        let n = f
            .read(&mut buf[..want])
            .map_err(|e| EntryError::io("read", path, e))?;
        if n == 0 {
            break;
        }
        hashing.update(&buf[..n]);
        if let Some(p) = progress {
            p.inc(n as u64);
        }
        left -= n as u64;
    }
    Ok(())
}

/// Checks the first bytes of a would-be safetensors file: an 8-byte little-endian header
/// length followed by `{`. HTML starts with `<`, JSON errors with `{"` at byte 0.
pub(crate) fn sniff_safetensors(head: &[u8], total: Option<u64>) -> Result<(), EntryError> {
    let describe = |what: &str| EntryError::NotAModel {
        what: what.to_string(),
        snippet: String::from_utf8_lossy(&head[..head.len().min(64)]).into_owned(),
    };
    if head.len() < 9 {
        return Err(describe("a file too short to be safetensors"));
    }
    let first = head[0];
    if first == b'<' {
        return Err(describe("an HTML page"));
    }
    if first == b'{' || first == b'[' {
        return Err(describe("a JSON document"));
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&head[..8]);
    let header_len = u64::from_le_bytes(n);
    let too_big = header_len > 100 << 20 || total.is_some_and(|t| header_len + 8 > t);
    if too_big || head[8] != b'{' {
        if head.starts_with(b"PK") {
            return Err(describe(
                "a zip/pickle archive (.ckpt/.pt), not safetensors",
            ));
        }
        return Err(describe("data that is not a safetensors file"));
    }
    Ok(())
}

/// Hashes the first `limit` bytes of a file on a blocking thread, into a fresh [`Hashing`]:
/// used when the part file on disk and the streaming hash disagree (a resume, a write error).
pub(crate) async fn rehash_prefix(
    path: &Path,
    limit: u64,
    want_v3: bool,
) -> Result<Hashing, EntryError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut h = Hashing::new(want_v3);
        hash_prefix(&path, limit, &mut h, None).map(|_| h)
    })
    .await
    .map_err(|e| EntryError::BadMetadata(format!("hashing task failed: {e}")))?
}

/// The first 9 bytes of a file (fewer if it is shorter or unreadable): enough for
/// [`sniff_safetensors`].
pub(crate) fn read_head(path: &Path) -> Vec<u8> {
    let mut head = vec![0u8; 9];
    match std::fs::File::open(path).and_then(|mut f| f.read(&mut head)) {
        Ok(n) => {
            head.truncate(n);
            head
        }
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff() {
        let mut ok = 2u64.to_le_bytes().to_vec();
        ok.extend_from_slice(b"{}");
        assert!(sniff_safetensors(&ok, Some(10)).is_ok());
        assert!(sniff_safetensors(b"<!DOCTYPE html>", None).is_err());
        assert!(sniff_safetensors(b"{\"error\":\"Unauthorized\"}", None).is_err());
        assert!(sniff_safetensors(b"PK\x03\x04aaaaaaaaa", None).is_err());
    }

    #[test]
    fn autov3_skips_header() {
        let mut file = 4u64.to_le_bytes().to_vec();
        file.extend_from_slice(b"{}  payload-bytes");
        let mut h = Hashing::new(true);
        for b in file.chunks(3) {
            h.update(b);
        }
        let (sha, v3) = h.finish();
        assert_eq!(sha, hex::encode_upper(Sha256::digest(&file)));
        let expect = hex::encode_upper(Sha256::digest(b"payload-bytes"));
        assert_eq!(v3.unwrap(), expect[..12]);
    }
}
