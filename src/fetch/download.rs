//! Resumable, verified HTTP download of one file into its `.part` file in the cache.
//!
//! `download` runs the stages in order, each its own function below:
//!
//! 1. `start_url`: reuse the URL saved beside the part file while it is valid, else resolve
//!    a fresh one (and start the part file over if it was for other content);
//! 2. `segment_total`: decide whether the file is large enough, and its size known, for
//!    several connections;
//! 3. `transfer_segmented` (`segmented.rs`), then `SingleStream`: move the bytes, resuming
//!    after dropped connections, busy servers and expired URLs (the single stream also
//!    finishes whatever a multi-connection transfer left, or does all of it);
//! 4. `verify`: size, SHA-256 and format checks, then make the part file durable.
//!
//! Locking the cache key, the free-space check and the commit into the cache are the caller's
//! (`sources.rs`), because a cache hit must skip them all.
//!
//! Network reads run on the async task; writes and hashing run on a blocking thread fed through
//! a bounded channel, so socket, disk and SHA-256 work overlap. Resume uses `Range` against the
//! resolved (presigned) URL, which is remembered beside the part file and reused until it
//! expires; a storage 400/401/403/410 triggers one re-resolution, because presigned Civitai
//! storage URLs expire after one hour to a day (see docs/civitai.md, *Download redirect*).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use reqwest::header::RANGE;
use reqwest::StatusCode;

use super::cache::{now_unix, Cache};
use super::error::{is_disk_full, EntryError};
use super::http::{self, Busy, Retry};
use super::names::redact_url_str;
use super::part::{contiguous_prefix, PartFile, Seg};
use super::progress::FileProgress;
use super::segmented::{self, SegError};
use super::verify::{read_head, rehash_prefix, sniff_safetensors, Hashing};
use super::PrefetchOptions;

// `ResolvedUrl` keeps its public path `fetch::download::ResolvedUrl`.
pub use super::resolve::ResolvedUrl;
use super::resolve::Resolver;

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
    let part = PartFile::new(cache, key, expect.sha256.clone(), expect.size);
    let (url, mut saved_segments) = start_url(&part, resolver.as_ref()).await?;

    let job = Job {
        client,
        cache,
        part: &part,
        resolver,
        expect,
        opts,
        progress,
    };
    let mut stream = SingleStream::new(job, url);
    if let Some(total) = segment_total(client, &stream.url, expect, opts).await {
        let saved = saved_segments.take();
        if let Some(done) = transfer_segmented(&stream.job, &stream.url, total, saved).await? {
            stream.continue_after(total, done);
        }
    }
    if let Some(segs) = saved_segments {
        // A multi-connection partial continued on one connection: keep its complete prefix.
        part.keep_prefix(contiguous_prefix(&segs))?;
        part.save(&stream.url, None)?;
    }
    stream.run().await?;
    let SingleStream {
        hashing,
        disposition_name,
        transferred,
        ..
    } = stream;
    let (sha256, autov3, size) = verify(&part, hashing, expect).await?;
    Ok(Downloaded {
        part: part.path.clone(),
        sha256,
        autov3,
        size,
        disposition_name,
        bytes_transferred: transferred,
    })
}

/// Stage 1: the URL to download from, and the saved range progress of an interrupted
/// multi-connection download. A saved URL (for the same expected content) is reused while it
/// is valid for another minute, so a restart does not spend a Civitai resolution, which counts
/// against the download quota; without usable saved state the part file starts over.
async fn start_url(
    part: &PartFile,
    resolver: &dyn Resolver,
) -> Result<(ResolvedUrl, Option<Vec<Seg>>), EntryError> {
    let Some(saved) = part.load() else {
        part.truncate()?;
        let u = resolver.resolve().await?;
        part.save(&u, None)?;
        return Ok((u, None));
    };
    if saved.url.expires_at.is_none_or(|t| t > now_unix() + 60) {
        tracing::debug!(url = %redact_url_str(&saved.url.url), "reusing the saved download URL");
        return Ok((saved.url, saved.segments));
    }
    tracing::info!("saved download URL expired; resolving a new one");
    let u = resolver.resolve().await?;
    part.save(&u, None)?;
    Ok((u, saved.segments))
}

/// Stage 2: the size to split over several connections, when the file qualifies: more than
/// one connection allowed, and a known (or probed, when the hint says it is large) size of at
/// least `segment_min_size`.
async fn segment_total(
    client: &reqwest::Client,
    url: &ResolvedUrl,
    expect: &Expect,
    opts: &PrefetchOptions,
) -> Option<u64> {
    if opts.connections <= 1 {
        return None;
    }
    let total = match expect.size {
        Some(t) => Some(t),
        None if expect.size_hint.is_some_and(|h| h >= opts.segment_min_size) => {
            http::probe_size(client, &url.url).await
        }
        None => None,
    };
    total.filter(|t| *t >= opts.segment_min_size && *t > 0)
}

/// Stage 3a: the multi-connection transfer. `Ok(None)` when the storage does not serve ranges
/// as asked: the part file is emptied and the single stream takes over. A fatal error that
/// proves the bytes wrong (not a model, wrong size or hash) deletes the part file.
async fn transfer_segmented(
    s: &Job<'_>,
    url: &ResolvedUrl,
    total: u64,
    saved: Option<Vec<Seg>>,
) -> Result<Option<segmented::SegDone>, EntryError> {
    let job = segmented::Job {
        client: s.client,
        resolver: s.resolver.clone(),
        part: s.part,
        total,
        want_v3: s.expect.autov3,
        opts: s.opts,
        progress: s.progress,
    };
    match segmented::run(&job, url.clone(), saved).await {
        Ok(done) => Ok(Some(done)),
        Err(SegError::Fallback(why)) => {
            tracing::info!(reason = %why, "storage does not serve ranges as asked; using one connection");
            s.part.truncate()?;
            s.part.save(url, None)?;
            Ok(None)
        }
        Err(SegError::Fatal(e)) => {
            if matches!(
                e,
                EntryError::NotAModel { .. }
                    | EntryError::SizeMismatch { .. }
                    | EntryError::HashMismatch { .. }
            ) {
                s.part.discard();
            }
            Err(e)
        }
    }
}

/// Stage 4: checks the finished part file against `expect` (deleting it when it fails) and
/// makes it durable. Returns (SHA-256, AutoV3, size).
async fn verify(
    part: &PartFile,
    mut hashing: Hashing,
    expect: &Expect,
) -> Result<(String, Option<String>, u64), EntryError> {
    let size = part.len()?;
    if hashing.pos() != size {
        hashing = rehash_prefix(&part.path, size, expect.autov3).await?;
    }
    sniff_safetensors(&read_head(&part.path), Some(size)).inspect_err(|_| part.discard())?;
    if let Some(e) = expect.size {
        if size != e {
            part.discard();
            return Err(EntryError::SizeMismatch {
                expected: e,
                actual: size,
            });
        }
    }
    let (sha, autov3) = hashing.finish();
    if let Some(e) = &expect.sha256 {
        if !e.eq_ignore_ascii_case(&sha) {
            part.discard();
            return Err(EntryError::HashMismatch {
                expected: e.clone(),
                actual: sha,
            });
        }
    }
    part.seal()?;
    Ok((sha, autov3, size))
}

/// What one request of the single stream leads to.
enum Step {
    /// Ask again (after whatever pause the handler took).
    Retry,
    /// The part file is complete.
    Done,
    /// A body to stream, starting at the requested offset.
    Body(reqwest::Response),
}

/// The fixed inputs of one download, shared by its stages.
struct Job<'a> {
    client: &'a reqwest::Client,
    cache: &'a Cache,
    part: &'a PartFile,
    resolver: Arc<dyn Resolver>,
    expect: &'a Expect,
    opts: &'a PrefetchOptions,
    progress: &'a FileProgress,
}

/// Stage 3b: the download on one connection, resumed with `Range` from the end of the part
/// file until it holds the whole file. Also finishes what a multi-connection transfer left.
struct SingleStream<'a> {
    job: Job<'a>,
    url: ResolvedUrl,
    /// Hash of the part file's first `hashing.pos()` bytes.
    hashing: Hashing,
    /// File size, once the expectation or a response tells it.
    total: Option<u64>,
    disposition_name: Option<String>,
    transferred: u64,
    /// Failures in a row without progress (network errors, busy answers, dropped bodies).
    retry: Retry,
    /// Requests sent, successful or not: bounds the whole loop.
    attempts: u32,
    /// The URL was re-resolved after a rejection and no body has arrived since.
    reresolved: bool,
    last_error: String,
}

impl<'a> SingleStream<'a> {
    fn new(job: Job<'a>, url: ResolvedUrl) -> Self {
        let (autov3, size, opts) = (job.expect.autov3, job.expect.size, job.opts);
        SingleStream {
            job,
            url,
            // Forces a hash of whatever the part file already holds.
            hashing: Hashing::stale(autov3),
            total: size,
            disposition_name: None,
            transferred: 0,
            retry: Retry::new(opts),
            attempts: 0,
            reresolved: false,
            last_error: String::new(),
        }
    }

    /// Takes over the state of a finished multi-connection transfer, so `run` only confirms
    /// the file is complete.
    fn continue_after(&mut self, total: u64, done: segmented::SegDone) {
        self.hashing = done.hashing;
        self.total = Some(total);
        self.disposition_name = done.disposition_name;
        self.transferred = done.transferred;
    }

    /// Requests and streams until the part file holds `total` bytes, all hashed.
    async fn run(&mut self) -> Result<(), EntryError> {
        while self.hashing.pos() != self.total.unwrap_or(u64::MAX)
            || self.job.part.len()? != self.hashing.pos()
        {
            let offset = self.job.part.len()?;
            if self.total.is_some_and(|t| offset > t) {
                self.job.part.truncate()?;
                continue;
            }
            if self.hashing.pos() != offset {
                self.hashing =
                    rehash_prefix(&self.job.part.path, offset, self.job.expect.autov3).await?;
            }
            self.job.progress.set_position(offset);
            if self.total.is_some_and(|t| t == offset) && offset > 0 {
                break;
            }
            self.attempts += 1;
            if self.attempts
                > self
                    .job
                    .opts
                    .max_retries
                    .saturating_mul(4)
                    .saturating_add(8)
            {
                return Err(EntryError::Interrupted {
                    attempts: self.attempts - 1,
                    offset,
                    message: std::mem::take(&mut self.last_error),
                });
            }
            match self.request(offset).await? {
                Step::Retry => continue,
                Step::Done => break,
                Step::Body(resp) => {
                    self.reresolved = false;
                    if !self.receive(resp, offset).await? {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends one request from `offset` and sorts out the answer: a body to stream, a reason to
    /// ask again (after a pause, a truncation or a fresh URL), completion, or a final error.
    async fn request(&mut self, offset: u64) -> Result<Step, EntryError> {
        let mut req = self.job.client.get(&self.url.url);
        if offset > 0 {
            req = req.header(RANGE, format!("bytes={offset}-"));
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                self.last_error = http::net_message(e);
                if self.retry.fail() {
                    return Err(EntryError::Network {
                        url: redact_url_str(&self.url.url),
                        message: std::mem::take(&mut self.last_error),
                    });
                }
                tracing::warn!(error = %self.last_error, "download request failed; retrying");
                self.retry.pause(None).await;
                return Ok(Step::Retry);
            }
        };
        let status = resp.status();
        match status {
            StatusCode::PARTIAL_CONTENT => match http::content_range(&resp) {
                Some((Some(start), t)) if start == offset => {
                    if let (Some(t), Some(e)) = (t, self.job.expect.size) {
                        if t != e {
                            self.job.part.discard();
                            return Err(EntryError::SizeMismatch {
                                expected: e,
                                actual: t,
                            });
                        }
                    }
                    self.total = self.total.or(t);
                }
                _ => {
                    tracing::warn!(
                        "server answered a different range than requested; restarting the file"
                    );
                    self.job.part.truncate()?;
                    return Ok(Step::Retry);
                }
            },
            StatusCode::OK => {
                if offset > 0 {
                    tracing::info!("server ignored Range; restarting the file from byte 0");
                    drop(resp);
                    self.job.part.truncate()?;
                    // Ask again so the new body is written from the start of the empty file.
                    return Ok(Step::Retry);
                }
                if let Some(len) = resp.content_length() {
                    if let Some(e) = self.job.expect.size {
                        if len != e && !http::is_textual(&resp) {
                            self.job.part.discard();
                            return Err(EntryError::SizeMismatch {
                                expected: e,
                                actual: len,
                            });
                        }
                    }
                    self.total = self.total.or(Some(len));
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let t = http::content_range(&resp).and_then(|(_, t)| t);
                if t == Some(offset) && offset > 0 {
                    return Ok(Step::Done);
                }
                self.job.part.truncate()?;
                return Ok(Step::Retry);
            }
            s if http::is_stale_url(s) && self.job.resolver.can_reresolve() && !self.reresolved => {
                tracing::info!(
                    status = s.as_u16(),
                    "storage rejected the download URL (expired?); resolving a fresh one"
                );
                self.reresolved = true;
                self.url = self.job.resolver.resolve().await?;
                self.job.part.save(&self.url, None)?;
                return Ok(Step::Retry);
            }
            s if http::is_busy(s) => match http::on_busy(resp, &mut self.retry).await {
                Busy::GiveUp {
                    status,
                    message,
                    attempts,
                } => {
                    return Err(EntryError::unavailable(
                        &self.url.url,
                        status,
                        message,
                        attempts,
                    ))
                }
                Busy::Wait { wait, .. } => {
                    tracing::warn!(
                        status = s.as_u16(),
                        wait_ms = wait.as_millis() as u64,
                        "storage busy; backing off"
                    );
                    tokio::time::sleep(wait).await;
                    return Ok(Step::Retry);
                }
            },
            _ => return Err(EntryError::rejected(&self.url.url, resp).await),
        }
        Ok(Step::Body(resp))
    }

    /// Streams one response body, written at `offset`, to the part file. `Ok(true)`: ask again
    /// (the body ended early or the connection dropped; the pause is taken); `Ok(false)`: the
    /// body ended normally.
    async fn receive(&mut self, resp: reqwest::Response, offset: u64) -> Result<bool, EntryError> {
        if offset == 0 && http::is_textual(&resp) {
            let e = EntryError::textual_body(resp).await;
            self.job.part.discard();
            return Err(e);
        }
        if let Some(name) = http::disposition_name(&resp) {
            self.disposition_name = Some(name);
        }
        if let Some(t) = self.total {
            self.job.progress.set_total(t);
        }
        self.job
            .progress
            .announce(self.total, offset, &http::host_of(&self.url.url));

        let head = if offset > 0 {
            read_head(&self.job.part.path)
        } else {
            Vec::new()
        };
        let mut sniff = HeadSniffer::new(head, offset, self.total)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        let hashing = std::mem::replace(&mut self.hashing, Hashing::stale(self.job.expect.autov3));
        let writer = spawn_writer(
            self.job.part.path.clone(),
            hashing,
            self.job.opts.write_limit,
            rx,
        );
        let mut resp = resp;
        let mut got = 0u64;
        let mut stream_error: Option<String> = None;
        let mut sniff_error: Option<EntryError> = None;
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if let Err(e) = sniff.feed(&chunk) {
                        sniff_error = Some(e);
                        break;
                    }
                    let n = chunk.len() as u64;
                    if tx.send(chunk).await.is_err() {
                        break; // writer failed; its error is reported below
                    }
                    got += n;
                    self.job.progress.inc(n);
                }
                Ok(None) => break,
                Err(e) => {
                    stream_error = Some(http::net_message(e));
                    break;
                }
            }
        }
        drop(tx);
        let done = writer
            .await
            .map_err(|e| EntryError::BadMetadata(format!("writer task failed: {e}")))?;
        self.hashing = done.hashing;
        self.transferred += got;
        if let Some(e) = sniff_error {
            self.job.part.discard();
            return Err(e);
        }
        if let Some(e) = done.error {
            if is_disk_full(&e) {
                let available = fs4::available_space(self.job.cache.root()).unwrap_or(0);
                return Err(EntryError::DiskFull {
                    path: self.job.part.path.clone(),
                    needed: self.total.unwrap_or(0),
                    available,
                });
            }
            return Err(EntryError::io("write", &self.job.part.path, e));
        }
        let now_len = offset + got;
        let short = match stream_error {
            Some(msg) => {
                if got == 0 {
                    self.retry.fail();
                } else {
                    self.retry.reset();
                }
                Some((msg, "connection dropped; resuming"))
            }
            None if self.total.is_some_and(|t| now_len < t) => {
                self.retry.fail();
                Some((
                    format!("body ended at byte {now_len}"),
                    "body ended early; resuming",
                ))
            }
            None => None,
        };
        let Some((message, what)) = short else {
            return Ok(false);
        };
        self.last_error = message;
        if self.retry.exhausted() {
            return Err(EntryError::Interrupted {
                attempts: self.attempts,
                offset: now_len,
                message: std::mem::take(&mut self.last_error),
            });
        }
        tracing::warn!(offset = now_len, error = %self.last_error, "{what}");
        self.retry.pause(None).await;
        Ok(true)
    }
}

/// Checks the first 9 bytes of the file (the safetensors header length and its `{`) as soon
/// as they have arrived, so a wrong body stops the download early.
struct HeadSniffer {
    head: Vec<u8>,
    total: Option<u64>,
    done: bool,
}

impl HeadSniffer {
    /// `head`: the bytes already on disk when resuming at `offset`; checked now if complete.
    fn new(head: Vec<u8>, offset: u64, total: Option<u64>) -> Result<Self, EntryError> {
        let done = offset >= 9 && head.len() >= 9;
        if done {
            sniff_safetensors(&head, total)?;
        }
        Ok(HeadSniffer { head, total, done })
    }

    fn feed(&mut self, chunk: &[u8]) -> Result<(), EntryError> {
        if self.done {
            return Ok(());
        }
        let take = 9usize.saturating_sub(self.head.len()).min(chunk.len());
        self.head.extend_from_slice(&chunk[..take]);
        if self.head.len() >= 9 {
            self.done = true;
            sniff_safetensors(&self.head, self.total)?;
        }
        Ok(())
    }
}

/// Result of one writer run: hashing state handed back, and the first write error if any.
struct WriterDone {
    hashing: Hashing,
    error: Option<std::io::Error>,
}

/// Appends the received chunks to the part file on a blocking thread, hashing them as they
/// are written.
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
            hashing = Hashing::stale(hashing.want_v3());
        }
        WriterDone { hashing, error }
    })
}
