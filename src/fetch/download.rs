//! Resumable, verified HTTP download into a `.part` file.
//!
//! Network reads run on the async task; writes and hashing run on a blocking thread fed through
//! a bounded channel, so socket, disk and SHA-256 work overlap. Resume uses `Range` against the
//! resolved (presigned) URL, which is remembered beside the part file and reused until it
//! expires; a storage 400/401/403/410 triggers one re-resolution (Civitai spec §2.3, §6.3 #10).

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{CONTENT_DISPOSITION, CONTENT_RANGE, CONTENT_TYPE, RANGE, RETRY_AFTER};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::cache::{now_unix, Cache};
use super::error::{is_disk_full, net_message, EntryError};
use super::names::{content_disposition_filename, redact_url_str};
use super::progress::FileProgress;
use super::segmented::{self, Seg, SegError};
use super::PrefetchOptions;

/// A URL to GET the bytes from, and until when it is valid.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolvedUrl {
    pub url: String,
    /// Unix seconds; `None` = does not expire.
    pub expires_at: Option<u64>,
}

/// Produces (and re-produces, when a presigned URL expires) the download URL.
#[async_trait::async_trait]
pub(crate) trait Resolver: Send + Sync {
    async fn resolve(&self) -> Result<ResolvedUrl, EntryError>;
    /// Whether a second `resolve` can yield a different, fresh URL.
    fn can_reresolve(&self) -> bool;
}

/// What the finished file must be.
#[derive(Debug, Clone, Default)]
pub(crate) struct Expect {
    pub size: Option<u64>,
    /// Uppercase hex.
    pub sha256: Option<String>,
    /// Also compute AutoV3 (hash of the safetensors payload), for LoRA labels.
    pub autov3: bool,
    /// Approximate size (e.g. Civitai's rounded `sizeKB`): enough to choose multi-connection.
    pub size_hint: Option<u64>,
}

/// A complete, verified `.part` file ready to be committed to the cache.
#[derive(Debug)]
pub(crate) struct Downloaded {
    pub part: PathBuf,
    pub sha256: String,
    pub autov3: Option<String>,
    pub size: u64,
    /// File name from the storage response's `Content-Disposition`, unsanitised.
    pub disposition_name: Option<String>,
    pub bytes_transferred: u64,
}

/// Persisted beside the part file so a restarted worker resumes with the same URL.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PartState {
    url: ResolvedUrl,
    sha256: Option<String>,
    size: Option<u64>,
    /// Range progress of a multi-connection download.
    #[serde(default)]
    segments: Option<Vec<Seg>>,
}

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

fn part_len(path: &Path) -> Result<u64, EntryError> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(EntryError::io("stat", path, e)),
    }
}

fn truncate(path: &Path) -> Result<(), EntryError> {
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .map(|_| ())
        .map_err(|e| EntryError::io("truncate", path, e))
}

fn read_head(path: &Path) -> Vec<u8> {
    let mut head = vec![0u8; 9];
    match std::fs::File::open(path).and_then(|mut f| f.read(&mut head)) {
        Ok(n) => {
            head.truncate(n);
            head
        }
        Err(_) => Vec::new(),
    }
}

/// Parses `bytes a-b/total` (or `bytes */total`) into (start, total).
pub(crate) fn parse_content_range(v: &str) -> Option<(Option<u64>, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim();
    let (range, total) = rest.split_once('/')?;
    let total = total.trim().parse().ok();
    let start = if range.trim() == "*" {
        None
    } else {
        Some(range.split_once('-')?.0.trim().parse().ok()?)
    };
    Some((start, total))
}

/// Result of one writer run: hashing state handed back, and the first write error if any.
struct WriterDone {
    hashing: Hashing,
    error: Option<std::io::Error>,
}

fn spawn_writer(
    part: PathBuf,
    mut hashing: Hashing,
    limit: Option<u64>,
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> tokio::task::JoinHandle<WriterDone> {
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&part);
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                return WriterDone {
                    hashing,
                    error: Some(e),
                }
            }
        };
        let mut written = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut out = std::io::BufWriter::with_capacity(4 << 20, file);
        let mut error = None;
        while let Some(chunk) = rx.blocking_recv() {
            if let Some(limit) = limit {
                // Test hook standing in for a full disk (see PrefetchOptions::write_limit).
                if written + chunk.len() as u64 > limit {
                    error = Some(std::io::Error::from(std::io::ErrorKind::StorageFull));
                    break;
                }
            }
            if let Err(e) = out.write_all(&chunk) {
                error = Some(e);
                break;
            }
            written += chunk.len() as u64;
            hashing.update(&chunk);
        }
        if error.is_none() {
            if let Err(e) = out.flush() {
                error = Some(e);
            }
        }
        if error.is_some() {
            // Hashing state no longer matches the file; the caller rehashes from disk.
            hashing = Hashing::new(hashing.want_v3);
            hashing.pos = u64::MAX;
        }
        WriterDone { hashing, error }
    })
}

fn backoff(opts: &PrefetchOptions, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exp = opts.retry_base.saturating_mul(1u32 << attempt.min(10));
    retry_after.unwrap_or(exp).min(opts.retry_max)
}

pub(crate) fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    h.get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Reads up to `max` bytes of a body for an error message.
pub(crate) async fn body_snippet(resp: reqwest::Response, max: usize) -> String {
    let mut out = Vec::new();
    let mut resp = resp;
    while out.len() < max {
        match resp.chunk().await {
            Ok(Some(c)) => out.extend_from_slice(&c[..c.len().min(max - out.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).trim().to_string()
}

/// Downloads into `cache.part_path(key)`, resuming and verifying. On success the part file is
/// complete and matches `expect`; on a hash or size mismatch it is deleted.
pub(crate) async fn download(
    client: &reqwest::Client,
    cache: &Cache,
    key: &str,
    resolver: Arc<dyn Resolver>,
    expect: &Expect,
    opts: &PrefetchOptions,
    progress: &FileProgress,
) -> Result<Downloaded, EntryError> {
    let part = cache.part_path(key);
    let state_path = cache.part_state_path(key);
    let save_segments = |url: &ResolvedUrl, segments: Option<&[Seg]>| -> Result<(), EntryError> {
        let s = PartState {
            url: url.clone(),
            sha256: expect.sha256.clone(),
            size: expect.size,
            segments: segments.map(<[Seg]>::to_vec),
        };
        let bytes = serde_json::to_vec(&s)
            .map_err(|e| EntryError::BadMetadata(format!("cannot encode part state: {e}")))?;
        std::fs::write(&state_path, bytes).map_err(|e| EntryError::io("write", &state_path, e))
    };
    let save_state = |url: &ResolvedUrl| save_segments(url, None);

    // Reuse a saved URL (and the part file) only if it was for the same expected content.
    let saved: Option<PartState> = std::fs::read(&state_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let mut saved_segments = None;
    let mut url = match saved {
        Some(s) if s.sha256 == expect.sha256 && s.size == expect.size => {
            saved_segments = s.segments;
            let fresh = s.url.expires_at.is_none_or(|t| t > now_unix() + 60);
            if fresh {
                tracing::debug!(url = %redact_url_str(&s.url.url), "reusing the saved download URL");
                s.url
            } else {
                tracing::info!("saved download URL expired; resolving a new one");
                let u = resolver.resolve().await?;
                save_state(&u)?;
                u
            }
        }
        _ => {
            truncate(&part)?;
            let u = resolver.resolve().await?;
            save_state(&u)?;
            u
        }
    };

    // Large files with a known size go over several connections.
    let mut seg_result = None;
    if opts.connections > 1 {
        let seg_total = match expect.size {
            Some(t) => Some(t),
            None if expect.size_hint.is_some_and(|h| h >= opts.segment_min_size) => {
                probe_size(client, &url.url).await
            }
            None => None,
        };
        if let Some(total) = seg_total.filter(|t| *t >= opts.segment_min_size && *t > 0) {
            match segmented::run(
                client,
                resolver.clone(),
                url.clone(),
                &part,
                total,
                saved_segments.take(),
                expect.autov3,
                opts,
                progress,
                &save_segments,
            )
            .await
            {
                Ok(done) => seg_result = Some((total, done)),
                Err(SegError::Fallback(why)) => {
                    tracing::info!(reason = %why, "storage does not serve ranges as asked; using one connection");
                    truncate(&part)?;
                    save_state(&url)?;
                }
                Err(SegError::Fatal(e)) => {
                    if matches!(
                        e,
                        EntryError::NotAModel { .. }
                            | EntryError::SizeMismatch { .. }
                            | EntryError::HashMismatch { .. }
                    ) {
                        discard_files(&part, &state_path);
                    }
                    return Err(e);
                }
            }
        }
    }
    if let Some(segs) = saved_segments {
        // A multi-connection partial continued on one connection: keep its complete prefix.
        let prefix = segmented::contiguous_prefix(&segs);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&part)
            .and_then(|f| f.set_len(prefix))
            .map_err(|e| EntryError::io("truncate", &part, e))?;
        save_state(&url)?;
    }

    let mut hashing = Hashing::new(expect.autov3);
    hashing.pos = u64::MAX; // forces a rehash of whatever the part file holds
    let mut failures: u32 = 0;
    let mut total_attempts: u32 = 0;
    let mut reresolved = false;
    let mut total = expect.size;
    let mut disposition_name = None;
    let mut transferred = 0u64;
    let mut last_error = String::new();
    if let Some((t, done)) = seg_result {
        hashing = done.hashing;
        total = Some(t);
        disposition_name = done.disposition_name;
        transferred = done.transferred;
    }

    while hashing.pos != total.unwrap_or(u64::MAX) || part_len(&part)? != hashing.pos {
        let offset = part_len(&part)?;
        if let Some(t) = total {
            if offset > t {
                truncate(&part)?;
                continue;
            }
        }
        if hashing.pos != offset {
            let mut h = Hashing::new(expect.autov3);
            let p = part.clone();
            h = tokio::task::spawn_blocking(move || {
                hash_prefix(&p, offset, &mut h, None).map(|_| h)
            })
            .await
            .map_err(|e| EntryError::BadMetadata(format!("hashing task failed: {e}")))??;
            hashing = h;
        }
        progress.set_position(offset);
        if total.is_some_and(|t| t == offset) && offset > 0 {
            break;
        }
        total_attempts += 1;
        if total_attempts > opts.max_retries.saturating_mul(4).saturating_add(8) {
            return Err(EntryError::Interrupted {
                attempts: total_attempts - 1,
                offset,
                message: last_error,
            });
        }

        let mut req = client.get(&url.url);
        if offset > 0 {
            req = req.header(RANGE, format!("bytes={offset}-"));
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                last_error = net_message(e);
                failures += 1;
                if failures > opts.max_retries {
                    return Err(EntryError::Network {
                        url: redact_url_str(&url.url),
                        message: last_error,
                    });
                }
                tracing::warn!(error = %last_error, "download request failed; retrying");
                tokio::time::sleep(backoff(opts, failures, None)).await;
                continue;
            }
        };
        let status = resp.status();
        match status {
            StatusCode::PARTIAL_CONTENT => {
                let cr = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range);
                match cr {
                    Some((Some(start), t)) if start == offset => {
                        if let (Some(t), Some(e)) = (t, expect.size) {
                            if t != e {
                                discard_files(&part, &state_path);
                                return Err(EntryError::SizeMismatch {
                                    expected: e,
                                    actual: t,
                                });
                            }
                        }
                        total = total.or(t);
                    }
                    _ => {
                        tracing::warn!(
                            "server answered a different range than requested; restarting the file"
                        );
                        truncate(&part)?;
                        continue;
                    }
                }
            }
            StatusCode::OK => {
                if offset > 0 {
                    tracing::info!("server ignored Range; restarting the file from byte 0");
                    drop(resp);
                    truncate(&part)?;
                    // Ask again so the new body is written from the start of the empty file.
                    continue;
                }
                if let Some(len) = resp.content_length() {
                    if let Some(e) = expect.size {
                        if len != e && !is_textual(&resp) {
                            discard_files(&part, &state_path);
                            return Err(EntryError::SizeMismatch {
                                expected: e,
                                actual: len,
                            });
                        }
                    }
                    total = total.or(Some(len));
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let t = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range)
                    .and_then(|(_, t)| t);
                if t == Some(offset) && offset > 0 {
                    break;
                }
                truncate(&part)?;
                continue;
            }
            StatusCode::BAD_REQUEST
            | StatusCode::UNAUTHORIZED
            | StatusCode::FORBIDDEN
            | StatusCode::GONE
                if resolver.can_reresolve() && !reresolved =>
            {
                tracing::info!(
                    status = status.as_u16(),
                    "storage rejected the download URL (expired?); resolving a fresh one"
                );
                reresolved = true;
                url = resolver.resolve().await?;
                save_state(&url)?;
                continue;
            }
            StatusCode::NOT_FOUND => {
                return Err(EntryError::NotFound {
                    what: format!("{} (HTTP 404)", redact_url_str(&url.url)),
                })
            }
            s if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => {
                failures += 1;
                let wait = backoff(opts, failures, retry_after(resp.headers()));
                let message = body_snippet(resp, 300).await;
                if failures > opts.max_retries {
                    return Err(EntryError::Unavailable {
                        server: redact_url_str(&url.url),
                        status: s.as_u16(),
                        message,
                        attempts: failures,
                    });
                }
                tracing::warn!(
                    status = s.as_u16(),
                    wait_ms = wait.as_millis() as u64,
                    "storage busy; backing off"
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            s => {
                let message = body_snippet(resp, 300).await;
                return Err(EntryError::Status {
                    url: redact_url_str(&url.url),
                    status: s.as_u16(),
                    message,
                });
            }
        }
        reresolved = false;

        if offset == 0 && is_textual(&resp) {
            let ct = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let snippet = body_snippet(resp, 200).await;
            let _ = std::fs::remove_file(&part);
            let _ = std::fs::remove_file(&state_path);
            return Err(EntryError::NotAModel {
                what: format!("a {ct} document"),
                snippet,
            });
        }
        if let Some(name) = resp
            .headers()
            .get(CONTENT_DISPOSITION)
            .and_then(|v| v.to_str().ok())
            .and_then(content_disposition_filename)
        {
            disposition_name = Some(name);
        }
        if let Some(t) = total {
            progress.set_total(t);
        }
        let host = url::Url::parse(&url.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default();
        progress.announce(total, offset, &host);

        // Stream the body to the writer thread.
        let mut head = if offset > 0 {
            read_head(&part)
        } else {
            Vec::new()
        };
        let mut sniffed = offset >= 9 && head.len() >= 9;
        if sniffed {
            sniff_safetensors(&head, total)?;
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        let writer = spawn_writer(part.clone(), hashing, opts.write_limit, rx);
        let mut resp = resp;
        let mut got = 0u64;
        let mut stream_error: Option<String> = None;
        let mut sniff_error: Option<EntryError> = None;
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if !sniffed {
                        let take = (9 - head.len()).min(chunk.len());
                        head.extend_from_slice(&chunk[..take]);
                        if head.len() >= 9 {
                            sniffed = true;
                            if let Err(e) = sniff_safetensors(&head, total) {
                                sniff_error = Some(e);
                                break;
                            }
                        }
                    }
                    let n = chunk.len() as u64;
                    if tx.send(chunk).await.is_err() {
                        break; // writer failed; its error is reported below
                    }
                    got += n;
                    progress.inc(n);
                }
                Ok(None) => break,
                Err(e) => {
                    stream_error = Some(net_message(e));
                    break;
                }
            }
        }
        drop(tx);
        let done = writer
            .await
            .map_err(|e| EntryError::BadMetadata(format!("writer task failed: {e}")))?;
        hashing = done.hashing;
        transferred += got;
        if let Some(e) = sniff_error {
            let _ = std::fs::remove_file(&part);
            let _ = std::fs::remove_file(&state_path);
            return Err(e);
        }
        if let Some(e) = done.error {
            let needed = total.unwrap_or(0);
            if is_disk_full(&e) {
                let available = fs4::available_space(cache.root()).unwrap_or(0);
                return Err(EntryError::DiskFull {
                    path: part.clone(),
                    needed,
                    available,
                });
            }
            return Err(EntryError::io("write", &part, e));
        }
        if !sniffed && got > 0 {
            // Body ended before 9 bytes: check what we have on the next pass or at the end.
            head.truncate(9);
        }
        let now_len = offset + got;
        match stream_error {
            Some(msg) => {
                last_error = msg;
                if got == 0 {
                    failures += 1;
                } else {
                    failures = 0;
                }
                if failures > opts.max_retries {
                    return Err(EntryError::Interrupted {
                        attempts: total_attempts,
                        offset: now_len,
                        message: last_error,
                    });
                }
                tracing::warn!(offset = now_len, error = %last_error, "connection dropped; resuming");
                tokio::time::sleep(backoff(opts, failures, None)).await;
                continue;
            }
            None => {
                if total.is_some_and(|t| now_len < t) {
                    last_error = format!("body ended at byte {now_len}");
                    failures += 1;
                    if failures > opts.max_retries {
                        return Err(EntryError::Interrupted {
                            attempts: total_attempts,
                            offset: now_len,
                            message: last_error,
                        });
                    }
                    tracing::warn!(offset = now_len, "body ended early; resuming");
                    tokio::time::sleep(backoff(opts, failures, None)).await;
                    continue;
                }
                break;
            }
        }
    }

    let size = part_len(&part)?;
    if hashing.pos != size {
        let mut h = Hashing::new(expect.autov3);
        let p = part.clone();
        h = tokio::task::spawn_blocking(move || hash_prefix(&p, size, &mut h, None).map(|_| h))
            .await
            .map_err(|e| EntryError::BadMetadata(format!("hashing task failed: {e}")))??;
        hashing = h;
    }
    let discard = || {
        let _ = std::fs::remove_file(&part);
        let _ = std::fs::remove_file(&state_path);
    };
    sniff_safetensors(&read_head(&part), Some(size)).inspect_err(|_| discard())?;
    if let Some(e) = expect.size {
        if size != e {
            discard();
            return Err(EntryError::SizeMismatch {
                expected: e,
                actual: size,
            });
        }
    }
    let (sha, autov3) = hashing.finish();
    if let Some(e) = &expect.sha256 {
        if !e.eq_ignore_ascii_case(&sha) {
            discard();
            return Err(EntryError::HashMismatch {
                expected: e.clone(),
                actual: sha,
            });
        }
    }
    // Durable before it is renamed into place.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&part)
        .and_then(|f| {
            let mut f = f;
            f.seek(std::io::SeekFrom::End(0))?;
            f.sync_all()
        })
        .map_err(|e| EntryError::io("sync", &part, e))?;
    let _ = std::fs::remove_file(&state_path);
    Ok(Downloaded {
        part,
        sha256: sha,
        autov3,
        size,
        disposition_name,
        bytes_transferred: transferred,
    })
}

/// Learns a file's size (and range support) with a one-byte range request.
async fn probe_size(client: &reqwest::Client, url: &str) -> Option<u64> {
    let resp = client
        .get(url)
        .header(RANGE, "bytes=0-0")
        .send()
        .await
        .ok()?;
    if resp.status() != StatusCode::PARTIAL_CONTENT {
        return None;
    }
    resp.headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_content_range)
        .and_then(|(_, t)| t)
}

fn discard_files(part: &Path, state: &Path) {
    let _ = std::fs::remove_file(part);
    let _ = std::fs::remove_file(state);
}

fn is_textual(resp: &reqwest::Response) -> bool {
    resp.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            let ct = ct.to_ascii_lowercase();
            ct.starts_with("text/html")
                || ct.starts_with("application/json")
                || ct.starts_with("text/plain")
        })
        .unwrap_or(false)
}

/// Expiry of a presigned URL: S3/R2 `X-Amz-Date` + `X-Amz-Expires`; otherwise (B2 and
/// unknown schemes) assume Civitai's shortest observed lifetime, one hour.
pub(crate) fn presigned_expiry(url: &str, resolved_at: u64) -> Option<u64> {
    let parsed = url::Url::parse(url).ok()?;
    let mut date = None;
    let mut expires = None;
    for (k, v) in parsed.query_pairs() {
        if k.eq_ignore_ascii_case("X-Amz-Date") {
            date = parse_amz_date(&v);
        } else if k.eq_ignore_ascii_case("X-Amz-Expires") {
            expires = v.parse::<u64>().ok();
        }
    }
    match (date, expires) {
        (Some(d), Some(e)) => Some(d + e),
        (None, Some(e)) => Some(resolved_at + e),
        _ => Some(resolved_at + 3600),
    }
}

/// `20240126T001329Z` → unix seconds.
fn parse_amz_date(s: &str) -> Option<u64> {
    if s.len() != 16 || s.as_bytes()[8] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = if y2 >= 0 { y2 } else { y2 - 399 } / 400;
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    u64::try_from(days * 86400 + hh * 3600 + mm * 60 + ss).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_expiry() {
        let u = "https://x.r2.cloudflarestorage.com/k?X-Amz-Expires=86400&X-Amz-Date=20240126T001329Z&X-Amz-Signature=a";
        assert_eq!(presigned_expiry(u, 0), Some(1706228009 + 86400));
        assert_eq!(
            presigned_expiry("https://b2.civitai.com/file/x?Authorization=3_x", 100),
            Some(3700)
        );
    }

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some((Some(10), Some(100)))
        );
        assert_eq!(parse_content_range("bytes */100"), Some((None, Some(100))));
        assert_eq!(parse_content_range("bytes 0-9/*"), Some((Some(0), None)));
    }

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
