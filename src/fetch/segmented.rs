//! Multi-connection download of one large file: the file is split into byte ranges fetched
//! concurrently (as aria2 does for Civitai's storage, where one connection is often slower
//! than the link). Ranges are written in place into a preallocated `.part` file by one writer
//! thread; a hasher thread follows the contiguous completed prefix, reading it back from the
//! page cache, so SHA-256 verification overlaps the download instead of following it.
//!
//! Progress per range is persisted beside the part file, so a restarted worker resumes every
//! range where it stopped.

use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::RANGE;
use reqwest::StatusCode;

use super::error::{is_disk_full, EntryError};
use super::http::{self, Busy, Retry};
use super::names::redact_url_str;
use super::part::{contiguous_prefix, PartFile, Seg};
use super::progress::FileProgress;
use super::resolve::{ResolvedUrl, Resolver};
use super::verify::{sniff_safetensors, Hashing};
use super::PrefetchOptions;

/// Why the segmented path stopped.
pub(crate) enum SegError {
    /// The server does not serve ranges as asked; use the single-connection path instead.
    Fallback(String),
    Fatal(EntryError),
}

impl From<EntryError> for SegError {
    fn from(e: EntryError) -> Self {
        SegError::Fatal(e)
    }
}

/// A finished segmented download.
pub(crate) struct SegDone {
    pub hashing: Hashing,
    pub transferred: u64,
    pub disposition_name: Option<String>,
}

/// Splits the pending work into at least `connections` ranges (when large enough), keeping
/// finished bytes where they are.
pub(crate) fn plan(mut segs: Vec<Seg>, connections: usize, min_piece: u64) -> Vec<Seg> {
    loop {
        let pending = segs.iter().filter(|s| s.remaining() > 0).count();
        if pending >= connections {
            break;
        }
        let Some(i) = (0..segs.len()).max_by_key(|&i| segs[i].remaining()) else {
            break;
        };
        let rem = segs[i].remaining();
        if rem < 2 * min_piece.max(1) {
            break;
        }
        let mid = segs[i].next() + rem / 2;
        let tail = Seg {
            start: mid,
            end: segs[i].end,
            done: 0,
        };
        segs[i].end = mid;
        segs.push(tail);
    }
    segs.sort_by_key(|s| s.start);
    segs
}

/// Checks saved ranges tile `[0, total)` exactly.
pub(crate) fn valid(segs: &[Seg], total: u64) -> bool {
    let mut at = 0;
    for s in segs {
        if s.start != at || s.end < s.start || s.done > s.end - s.start {
            return false;
        }
        at = s.end;
    }
    at == total
}

struct Shared {
    segs: Mutex<Vec<Seg>>,
    queue: Mutex<VecDeque<usize>>,
    url: tokio::sync::Mutex<(ResolvedUrl, u32)>,
    reresolves: AtomicU64,
    abort: AtomicBool,
    finished: AtomicBool,
    disposition: Mutex<Option<String>>,
    transferred: AtomicU64,
}

type Chunk = (usize, u64, Bytes);

/// One file to download over several connections.
pub(crate) struct Job<'a> {
    pub client: &'a reqwest::Client,
    pub resolver: Arc<dyn Resolver>,
    /// Where the bytes go, and where the URL and range progress are saved for resume.
    pub part: &'a PartFile,
    /// Exact file size.
    pub total: u64,
    pub want_v3: bool,
    pub opts: &'a PrefetchOptions,
    pub progress: &'a FileProgress,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the download from `url`, continuing the `saved` ranges when they fit the part file.
pub(crate) async fn run(
    job: &Job<'_>,
    url: ResolvedUrl,
    saved: Option<Vec<Seg>>,
) -> Result<SegDone, SegError> {
    let Job {
        client,
        ref resolver,
        part: part_file,
        total,
        want_v3,
        opts,
        progress,
    } = *job;
    let part = part_file.path.as_path();
    let existing = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let start_segs = match saved {
        Some(s) if valid(&s, total) && existing == total => s,
        // A single-connection partial: its prefix is done.
        _ => vec![Seg {
            start: 0,
            end: total,
            done: existing.min(total),
        }],
    };
    let segs = plan(start_segs, opts.connections, opts.segment_piece_min);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(part)
        .map_err(|e| EntryError::io("open", part, e))?;
    file.set_len(total)
        .map_err(|e| EntryError::io("preallocate", part, e))?;
    part_file.save(&url, Some(&segs))?;
    let already: u64 = segs.iter().map(|s| s.done).sum();
    progress.set_total(total);
    progress.set_position(already);
    progress.announce(Some(total), already, &http::host_of(&url.url));
    tracing::debug!(
        ranges = segs.len(),
        connections = opts.connections,
        "segmented download"
    );

    let queue: VecDeque<usize> = (0..segs.len())
        .filter(|&i| segs[i].remaining() > 0)
        .collect();
    let shared = Arc::new(Shared {
        segs: Mutex::new(segs),
        queue: Mutex::new(queue),
        url: tokio::sync::Mutex::new((url, 0)),
        reresolves: AtomicU64::new(0),
        abort: AtomicBool::new(false),
        finished: AtomicBool::new(false),
        disposition: Mutex::new(None),
        transferred: AtomicU64::new(0),
    });

    // Check the head of an already-downloaded first range now; fresh ones are checked inline.
    {
        let s0 = lock(&shared.segs)[0];
        if s0.done >= 9 {
            let mut head = [0u8; 9];
            file.read_exact_at(&mut head, 0)
                .map_err(|e| EntryError::io("read", part, e))?;
            sniff_safetensors(&head, Some(total))?;
        }
    }

    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(256);
    let writer = spawn_writer(file, shared.clone(), rx, opts.write_limit);
    let hasher = spawn_hasher(part.to_path_buf(), shared.clone(), total, want_v3);

    let mut set = tokio::task::JoinSet::new();
    let workers = opts.connections.min(lock(&shared.queue).len()).max(1);
    for _ in 0..workers {
        let conn = Conn {
            shared: shared.clone(),
            client: client.clone(),
            resolver: resolver.clone(),
            tx: tx.clone(),
            opts: opts.clone(),
            total,
            progress: progress.clone(),
        };
        set.spawn(conn.work());
    }
    drop(tx);
    let result = drive(&mut set, &shared, part_file).await;
    if result.is_err() {
        shared.abort.store(true, Ordering::SeqCst);
        set.abort_all();
        while set.join_next().await.is_some() {}
    }
    let write_result = writer
        .await
        .map_err(|e| EntryError::BadMetadata(format!("writer task failed: {e}")))?;
    shared.finished.store(true, Ordering::SeqCst);
    {
        let (u, _) = &*shared.url.lock().await;
        let segs = lock(&shared.segs).clone();
        part_file.save(u, Some(&segs))?;
    }
    if let Err(e) = write_result {
        shared.abort.store(true, Ordering::SeqCst);
        let _ = hasher.await;
        if is_disk_full(&e) {
            return Err(SegError::Fatal(EntryError::DiskFull {
                path: part.to_path_buf(),
                needed: total,
                available: part
                    .parent()
                    .and_then(|p| fs4::available_space(p).ok())
                    .unwrap_or(0),
            }));
        }
        return Err(SegError::Fatal(EntryError::io("write", part, e)));
    }
    if let Err(e) = result {
        let _ = hasher.await;
        return Err(e);
    }
    let hashing = hasher
        .await
        .map_err(|e| EntryError::BadMetadata(format!("hasher task failed: {e}")))??;
    let disposition_name = lock(&shared.disposition).clone();
    Ok(SegDone {
        hashing,
        transferred: shared.transferred.load(Ordering::Relaxed),
        disposition_name,
    })
}

/// Waits for the workers, persisting range progress every two seconds.
async fn drive(
    set: &mut tokio::task::JoinSet<Result<(), SegError>>,
    shared: &Arc<Shared>,
    part: &PartFile,
) -> Result<(), SegError> {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.tick().await;
    loop {
        tokio::select! {
            next = set.join_next() => match next {
                None => return Ok(()),
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => {
                    return Err(SegError::Fatal(EntryError::BadMetadata(format!(
                        "download worker failed: {e}"
                    ))))
                }
            },
            _ = tick.tick() => {
                let segs = lock(&shared.segs).clone();
                let (u, _) = &*shared.url.lock().await;
                part.save(u, Some(&segs))?;
            }
        }
    }
}

fn spawn_writer(
    file: std::fs::File,
    shared: Arc<Shared>,
    mut rx: tokio::sync::mpsc::Receiver<Chunk>,
    limit: Option<u64>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::task::spawn_blocking(move || {
        let mut written: u64 = lock(&shared.segs).iter().map(|s| s.done).sum();
        while let Some((idx, offset, data)) = rx.blocking_recv() {
            if let Some(limit) = limit {
                // Test hook standing in for a full disk (PrefetchOptions::write_limit).
                if written + data.len() as u64 > limit {
                    shared.abort.store(true, Ordering::SeqCst);
                    return Err(std::io::Error::from(std::io::ErrorKind::StorageFull));
                }
            }
            if let Err(e) = file.write_all_at(&data, offset) {
                shared.abort.store(true, Ordering::SeqCst);
                return Err(e);
            }
            written += data.len() as u64;
            let mut segs = lock(&shared.segs);
            if let Some(s) = segs.get_mut(idx) {
                // Chunks of one range arrive in order, so `done` only grows contiguously.
                if s.next() == offset {
                    s.done += data.len() as u64;
                }
            }
        }
        Ok(())
    })
}

/// Hashes the file front to back as soon as each prefix is complete on disk.
fn spawn_hasher(
    part: PathBuf,
    shared: Arc<Shared>,
    total: u64,
    want_v3: bool,
) -> tokio::task::JoinHandle<Result<Hashing, SegError>> {
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&part).map_err(|e| EntryError::io("open", &part, e))?;
        let mut hashing = Hashing::new(want_v3);
        let mut hashed = 0u64;
        let mut buf = vec![0u8; 4 << 20];
        loop {
            if shared.abort.load(Ordering::SeqCst) {
                return Err(SegError::Fatal(EntryError::Interrupted {
                    attempts: 0,
                    offset: hashed,
                    message: "download aborted".into(),
                }));
            }
            let ready = contiguous_prefix(&lock(&shared.segs));
            if ready > hashed {
                while hashed < ready {
                    let n = buf.len().min((ready - hashed) as usize);
                    file.read_exact_at(&mut buf[..n], hashed)
                        .map_err(|e| EntryError::io("read", &part, e))?;
                    hashing.update(&buf[..n]);
                    hashed += n as u64;
                }
                continue;
            }
            if hashed >= total {
                return Ok(hashing);
            }
            if shared.finished.load(Ordering::SeqCst) {
                return Err(SegError::Fatal(EntryError::Interrupted {
                    attempts: 0,
                    offset: hashed,
                    message: "ranges left incomplete".into(),
                }));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

/// One connection: takes ranges from the shared queue and downloads them until it is empty.
struct Conn {
    shared: Arc<Shared>,
    client: reqwest::Client,
    resolver: Arc<dyn Resolver>,
    tx: tokio::sync::mpsc::Sender<Chunk>,
    opts: PrefetchOptions,
    total: u64,
    progress: FileProgress,
}

impl Conn {
    async fn work(self) -> Result<(), SegError> {
        loop {
            let idx = match lock(&self.shared.queue).pop_front() {
                Some(i) => i,
                None => return Ok(()),
            };
            self.fetch_range(idx).await?;
        }
    }

    /// Downloads range `idx` to its end, resuming after dropped connections.
    async fn fetch_range(&self, idx: usize) -> Result<(), SegError> {
        let Conn {
            shared,
            client,
            resolver,
            tx,
            opts,
            total,
            progress,
        } = self;
        let total = *total;
        let mut retry = Retry::new(opts);
        loop {
            if shared.abort.load(Ordering::SeqCst) {
                return Ok(());
            }
            let seg = lock(&shared.segs)[idx];
            let from = seg.next();
            if from >= seg.end {
                return Ok(());
            }
            let (url, generation) = {
                let g = shared.url.lock().await;
                (g.0.url.clone(), g.1)
            };
            let resp = client
                .get(&url)
                .header(RANGE, format!("bytes={from}-{}", seg.end - 1))
                .send()
                .await;
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    if retry.fail() {
                        return Err(SegError::Fatal(EntryError::Network {
                            url: redact_url_str(&url),
                            message: http::net_message(e),
                        }));
                    }
                    retry.pause(None).await;
                    continue;
                }
            };
            let status = resp.status();
            match status {
                StatusCode::PARTIAL_CONTENT => match http::content_range(&resp) {
                    Some((Some(start), Some(t))) if start == from && t == total => {}
                    Some((Some(start), _)) if start != from => {
                        return Err(SegError::Fallback(format!(
                            "asked for byte {from}, server sent {start}"
                        )))
                    }
                    Some((_, Some(t))) if t != total => {
                        return Err(SegError::Fatal(EntryError::SizeMismatch {
                            expected: total,
                            actual: t,
                        }))
                    }
                    _ => return Err(SegError::Fallback("no usable Content-Range".into())),
                },
                StatusCode::OK | StatusCode::RANGE_NOT_SATISFIABLE => {
                    return Err(SegError::Fallback(format!(
                        "server answered HTTP {} to a range request",
                        status.as_u16()
                    )))
                }
                s if http::is_stale_url(s) && resolver.can_reresolve() => {
                    let mut g = shared.url.lock().await;
                    if g.1 == generation {
                        // First worker to notice refreshes the URL for all of them.
                        if shared.reresolves.fetch_add(1, Ordering::SeqCst) >= 3 {
                            let message = http::body_snippet(resp, 300).await;
                            return Err(SegError::Fatal(EntryError::Status {
                                url: redact_url_str(&url),
                                status: status.as_u16(),
                                message,
                            }));
                        }
                        tracing::info!(
                            status = status.as_u16(),
                            "storage rejected the download URL (expired?); resolving a fresh one"
                        );
                        let fresh = resolver.resolve().await?;
                        *g = (fresh, generation + 1);
                    }
                    continue;
                }
                s if http::is_busy(s) => match http::on_busy(resp, &mut retry).await {
                    Busy::GiveUp {
                        status,
                        message,
                        attempts,
                    } => {
                        return Err(SegError::Fatal(EntryError::unavailable(
                            &url, status, message, attempts,
                        )))
                    }
                    Busy::Wait { wait, .. } => {
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                },
                _ => return Err(SegError::Fatal(EntryError::rejected(&url, resp).await)),
            }
            if http::is_textual(&resp) {
                return Err(SegError::Fatal(EntryError::textual_body(resp).await));
            }
            if let Some(name) = http::disposition_name(&resp) {
                lock(&shared.disposition).get_or_insert(name);
            }
            let mut resp = resp;
            let mut offset = from;
            let mut head: Vec<u8> = Vec::new();
            let mut got = 0u64;
            let mut stream_error = None;
            loop {
                if shared.abort.load(Ordering::SeqCst) {
                    return Ok(());
                }
                match resp.chunk().await {
                    Ok(Some(mut chunk)) => {
                        if offset + chunk.len() as u64 > seg.end {
                            chunk.truncate((seg.end - offset) as usize);
                        }
                        if chunk.is_empty() {
                            break;
                        }
                        if offset < 9 {
                            let take = ((9 - offset) as usize).min(chunk.len());
                            head.extend_from_slice(&chunk[..take]);
                            if offset + take as u64 >= 9 || offset + (take as u64) >= total {
                                sniff_safetensors(&head, Some(total))?;
                            }
                        }
                        let n = chunk.len() as u64;
                        if tx.send((idx, offset, chunk)).await.is_err() {
                            // The writer stopped (disk full); its error is reported by `run`.
                            return Ok(());
                        }
                        offset += n;
                        got += n;
                        shared.transferred.fetch_add(n, Ordering::Relaxed);
                        progress.inc(n);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        stream_error = Some(http::net_message(e));
                        break;
                    }
                }
            }
            if offset >= seg.end {
                // Requeue nothing: the writer marks it done once the bytes are on disk.
                return Ok(());
            }
            let last_error = stream_error.unwrap_or_else(|| format!("body ended at byte {offset}"));
            if got > 0 {
                retry.reset();
            } else {
                retry.fail();
            }
            if retry.exhausted() {
                return Err(SegError::Fatal(EntryError::Interrupted {
                    attempts: retry.failures(),
                    offset,
                    message: last_error,
                }));
            }
            tracing::warn!(offset, error = %last_error, "connection dropped; resuming range");
            retry.pause(None).await;
            // The next attempt must start after what the writer has put on disk; wait until the
            // bytes sent so far are accounted for.
            wait_written(shared, idx, offset).await;
        }
    }
}

/// Waits until range `idx` has `upto` bytes written (the writer trails the network a little).
async fn wait_written(shared: &Arc<Shared>, idx: usize, upto: u64) {
    for _ in 0..2000 {
        if lock(&shared.segs)[idx].next() >= upto || shared.abort.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_splits_pending_work_and_keeps_done_bytes() {
        let segs = plan(
            vec![Seg {
                start: 0,
                end: 1000,
                done: 200,
            }],
            4,
            10,
        );
        assert!(valid(&segs, 1000));
        assert_eq!(segs.len(), 4);
        assert_eq!(segs[0].done, 200);
        assert_eq!(segs.iter().map(|s| s.done).sum::<u64>(), 200);
        // Too small to split.
        let segs = plan(
            vec![Seg {
                start: 0,
                end: 15,
                done: 0,
            }],
            4,
            10,
        );
        assert_eq!(segs.len(), 1);
    }

    #[test]
    fn prefix_and_validity() {
        let segs = vec![
            Seg {
                start: 0,
                end: 10,
                done: 10,
            },
            Seg {
                start: 10,
                end: 20,
                done: 4,
            },
            Seg {
                start: 20,
                end: 30,
                done: 10,
            },
        ];
        assert_eq!(contiguous_prefix(&segs), 14);
        assert!(valid(&segs, 30));
        assert!(!valid(&segs, 31));
        assert!(!valid(&segs[1..], 30));
    }
}
