//! Multi-connection (byte-range) downloads against the mock Civitai storage host.

mod fetch_support;

use std::sync::atomic::Ordering;

use fetch_support::*;
use sdxl_worker::fetch::{prefetch_with, EntryError};

/// `bytes=a-b` → (a, b + 1).
fn range_of(s: &Seen) -> (u64, u64) {
    let r = s.range.as_deref().expect("range request");
    let (a, b) = r.trim_start_matches("bytes=").split_once('-').unwrap();
    (a.parse().unwrap(), b.parse::<u64>().unwrap() + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_files_download_over_several_ranges() {
    let (mock, dir) = setup().await;
    mock.state.chunk_size.store(8 * 1024, Ordering::Relaxed);
    let content = ckpt_version().files[0].content.clone();
    let m = manifest(dir.path(), BASIC);
    let cache = dir.path().join("c");
    let got = prefetch_with(&args(&mock, &cache), &m, &multi_opts(4))
        .await
        .unwrap();
    assert_eq!(got.models[0].sha256, content.sha256());
    assert_eq!(
        std::fs::read(&got.models[0].path).unwrap(),
        content.slice(0, content.len()).to_vec()
    );
    // LoRA AutoV3 is computed by the hasher that trails the ranges.
    let lora = &got.models[1];
    assert_eq!(
        lora.autov3.as_deref(),
        Some(lora_version().files[0].content.autov3().as_str())
    );
    let ck: Vec<Seen> = mock
        .state
        .seen()
        .into_iter()
        .filter(|s| s.path.starts_with("/storage/128078-900"))
        .collect();
    assert_eq!(ck.len(), 4, "{ck:?}");
    let mut ranges: Vec<(u64, u64)> = ck.iter().map(range_of).collect();
    ranges.sort();
    assert_eq!(ranges[0].0, 0);
    assert_eq!(ranges[3].1, content.len());
    for w in ranges.windows(2) {
        assert_eq!(w[0].1, w[1].0, "ranges tile the file");
    }
    assert!(ck
        .iter()
        .all(|s| s.authorization.is_none() && s.status == 206));
    assert_eq!(std::fs::read_dir(cache.join("partial")).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_ranges_resume_and_expired_urls_are_re_resolved_once() {
    let (mock, dir) = setup().await;
    mock.state.chunk_size.store(8 * 1024, Ordering::Relaxed);
    let content = ckpt_version().files[0].content.clone();
    let len = content.len();
    // Cuts inside three of the four ranges; the first cut also expires the signature.
    mock.state
        .drop_at
        .lock()
        .unwrap()
        .extend([len / 8, len / 2 + 1000, len - 10]);
    mock.state.expire_on_drop.store(true, Ordering::SeqCst);
    let m = manifest(dir.path(), "[[checkpoint]]\ncivitai = 128078\n");
    let got = prefetch_with(&args(&mock, &dir.path().join("c")), &m, &multi_opts(4))
        .await
        .unwrap();
    assert_eq!(got.models[0].sha256, content.sha256());
    let resolutions = mock.state.count("api", "/api/download");
    assert!(
        (2..=4).contains(&resolutions),
        "re-resolved on expiry: {resolutions}"
    );
    let served = mock.state.bytes_served.load(Ordering::Relaxed);
    assert!(
        served < len + len / 4,
        "resumed, not restarted: served {served} of {len}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_worker_resumes_every_range() {
    let (mock, dir) = setup().await;
    mock.state.chunk_size.store(8 * 1024, Ordering::Relaxed);
    let content = ckpt_version().files[0].content.clone();
    let len = content.len();
    let cut = len / 8;
    // Cut range 0 twice at the same byte: with no retries the run gives up like a killed worker.
    mock.state.drop_at.lock().unwrap().extend([cut, cut]);
    let m = manifest(dir.path(), "[[checkpoint]]\ncivitai = 128078\n");
    let cache = dir.path().join("c");
    let mut first = multi_opts(4);
    first.max_retries = 0;
    let e = prefetch_err(&args(&mock, &cache), &m, &first).await;
    assert!(matches!(e, EntryError::Interrupted { .. }));
    assert!(blobs(&cache).is_empty());
    let state = std::fs::read_dir(cache.join("partial"))
        .unwrap()
        .flatten()
        .find(|e| e.path().to_string_lossy().ends_with(".part.json"))
        .unwrap();
    let text = std::fs::read_to_string(state.path()).unwrap();
    assert!(text.contains("segments"), "{text}");

    let before = mock.state.bytes_served.load(Ordering::Relaxed);
    let got = prefetch_with(&args(&mock, &cache), &m, &multi_opts(4))
        .await
        .unwrap();
    assert_eq!(got.models[0].sha256, content.sha256());
    let second = mock.state.bytes_served.load(Ordering::Relaxed) - before;
    assert!(
        second < len,
        "second run fetched only what was missing: {second} of {len}"
    );
    assert_eq!(
        mock.state.count("api", "/api/download"),
        1,
        "saved URL reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_bodies_and_mismatches_are_rejected_in_range_mode() {
    let (mock, dir) = setup().await;
    let m = manifest(dir.path(), "[[checkpoint]]\ncivitai = 128078\n");
    let mut v = ckpt_version();
    v.files[0].listed_sha = Some("AB".repeat(32));
    mock.state.add(v);
    let cache = dir.path().join("sha");
    let e = prefetch_err(&args(&mock, &cache), &m, &multi_opts(4)).await;
    assert!(matches!(e, EntryError::HashMismatch { .. }), "{e}");
    assert!(blobs(&cache).is_empty());
    assert_eq!(std::fs::read_dir(cache.join("partial")).unwrap().count(), 0);

    let mut v = ckpt_version();
    let page = b"<!DOCTYPE html><html>login</html>".repeat(2000);
    v.files[0].listed_size = Some(page.len() as u64);
    v.files[0].served = Some(Content::Bytes(page.into()));
    mock.state.add(v);
    let cache = dir.path().join("html");
    let e = prefetch_err(&args(&mock, &cache), &m, &multi_opts(4)).await;
    assert!(matches!(e, EntryError::NotAModel { .. }), "{e}");
    assert!(blobs(&cache).is_empty());

    // Disk full while ranges are written.
    mock.state.add(ckpt_version());
    let mut limited = multi_opts(4);
    limited.write_limit = Some(50_000);
    let cache = dir.path().join("full");
    let e = prefetch_err(&args(&mock, &cache), &m, &limited).await;
    assert!(matches!(e, EntryError::DiskFull { .. }), "{e}");
    assert!(blobs(&cache).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_without_ranges_fall_back_to_one_connection() {
    let (mock, dir) = setup().await;
    let content = Content::Bytes(safetensors_bytes(30_000, 5).into());
    mock.state
        .plain
        .lock()
        .unwrap()
        .insert("big.safetensors".into(), (content.clone(), None));
    // Plain URLs have no size in advance: the range path is used only when it is known, so a
    // Civitai-sized entry whose storage ignores ranges is the case to cover.
    let mut v = ckpt_version();
    v.files[0].content = content.clone();
    mock.state.add(v);
    mock.state.ignore_ranges.store(true, Ordering::SeqCst);
    let m = manifest(dir.path(), "[[checkpoint]]\ncivitai = 128078\n");
    let got = prefetch_with(&args(&mock, &dir.path().join("c")), &m, &multi_opts(4))
        .await
        .unwrap();
    assert_eq!(got.models[0].sha256, content.sha256());
}
