//! Loopback download throughput of the fetcher for a large file (default 2 GiB), next to the
//! two limits it should approach: raw sequential disk write and SHA-256 speed on this machine.
//!
//! Run: `cargo bench --bench fetch_throughput` (release profile), or for a quick number
//! without a release build: `cargo bench --profile dev --bench fetch_throughput`.
//! Size: `FETCH_BENCH_BYTES=…` (default 2147483648). The file is generated on the fly by the
//! mock storage host (a safetensors header followed by pseudo-random bytes), served through
//! the mock Civitai redirect, and written into a temporary cache in the current directory's
//! filesystem (`FETCH_BENCH_DIR` to choose another).

#[path = "../tests/fetch_support/mod.rs"]
mod fetch_support;

use std::io::Write;
use std::time::Instant;

use fetch_support::*;
use sdxl_worker::fetch::{prefetch_with, ProgressMode};
use sha2::Digest;

fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

fn main() {
    let len: u64 = std::env::var("FETCH_BENCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2 << 30);
    let base = std::env::var("FETCH_BENCH_DIR").unwrap_or_else(|_| ".".into());
    let dir = tempfile::tempdir_in(base).expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let content = generated(len);
    // Reference 1: SHA-256 over the same bytes in memory.
    let t = Instant::now();
    let mut h = sha2::Sha256::new();
    let mut p = 0;
    while p < len {
        let end = (p + (8 << 20)).min(len);
        h.update(content.slice(p, end));
        p = end;
    }
    let sha = hex::encode_upper(h.finalize());
    let sha_secs = t.elapsed().as_secs_f64();

    // Reference 2: sequential write of the same size, then fsync.
    let t = Instant::now();
    {
        let mut f = std::io::BufWriter::with_capacity(
            4 << 20,
            std::fs::File::create(dir.path().join("raw")).expect("create"),
        );
        let mut p = 0;
        while p < len {
            let end = (p + (8 << 20)).min(len);
            f.write_all(&content.slice(p, end)).expect("write");
            p = end;
        }
        f.into_inner().expect("flush").sync_all().expect("sync");
    }
    let disk_secs = t.elapsed().as_secs_f64();
    std::fs::remove_file(dir.path().join("raw")).ok();

    let run_with =
        |content: &Content, sha: &str, connections: usize, delay_ms: u64, cache: &str| {
            let len = content.len();
            rt.block_on(async {
                let mock = MockCivitai::start().await;
                mock.state
                    .chunk_size
                    .store(256 * 1024, std::sync::atomic::Ordering::Relaxed);
                mock.state
                    .chunk_delay_ms
                    .store(delay_ms, std::sync::atomic::Ordering::Relaxed);
                let mut v = ckpt_version();
                v.files.truncate(1);
                v.files[0].content = content.clone();
                v.files[0].listed_sha = Some(sha.to_string());
                mock.state.add(v);
                let m = manifest(dir.path(), "[[checkpoint]]\ncivitai = 128078\n");
                let a = args(&mock, &dir.path().join(cache));
                let mut o = opts();
                o.progress = ProgressMode::Hidden;
                o.connections = connections;
                let t = Instant::now();
                let got = prefetch_with(&a, &m, &o).await.expect("prefetch");
                let secs = t.elapsed().as_secs_f64();
                assert_eq!(got.models[0].sha256, sha);
                assert_eq!(got.models[0].size, len);
                std::fs::remove_dir_all(dir.path().join(cache)).ok();
                secs
            })
        };
    let single = run_with(&content, &sha, 1, 0, "cache1");
    let multi = run_with(&content, &sha, 8, 0, "cache8");

    // Storage that limits each connection (as CDNs often do): 256 KiB per 10 ms ≈ 26 MB/s.
    let small_len: u64 = std::env::var("FETCH_BENCH_THROTTLED_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256 << 20);
    let small = generated(small_len);
    let small_sha = small.sha256();
    let throttled1 = run_with(&small, &small_sha, 1, 10, "t1");
    let throttled8 = run_with(&small, &small_sha, 8, 10, "t8");
    println!("file size:                 {len} bytes");
    println!(
        "fetcher, 1 connection  (loopback → .part → SHA-256 → rename): {:.2} s, {:.0} MB/s",
        single,
        mb_s(len, single)
    );
    println!(
        "fetcher, 8 connections (ranges + trailing hasher):            {:.2} s, {:.0} MB/s",
        multi,
        mb_s(len, multi)
    );
    println!("per-connection-throttled storage (~26 MB/s per connection), {small_len} bytes:");
    println!(
        "  1 connection:  {:.2} s, {:.0} MB/s",
        throttled1,
        mb_s(small_len, throttled1)
    );
    println!(
        "  8 connections: {:.2} s, {:.0} MB/s",
        throttled8,
        mb_s(small_len, throttled8)
    );
    println!(
        "reference sequential write + fsync:                            {:.2} s, {:.0} MB/s",
        disk_secs,
        mb_s(len, disk_secs)
    );
    println!(
        "reference SHA-256 in memory:                                   {:.2} s, {:.0} MB/s",
        sha_secs,
        mb_s(len, sha_secs)
    );
}
