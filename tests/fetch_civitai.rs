//! Model fetcher against a local mock Civitai + storage host (tests/fetch_support).

mod fetch_support;

use std::sync::atomic::Ordering;

use fetch_support::*;
use sdxl_worker::fetch::{
    prefetch_with, EntryError, FetchArgs, FetchError, Manifest, ModelKind, SecretString,
};

#[tokio::test]
async fn happy_path_downloads_verifies_and_describes() {
    let (mock, dir) = setup().await;
    let m = manifest(dir.path(), BASIC);
    let cache = dir.path().join("cache");
    let got = prefetch_with(&args(&mock, &cache), &m, &opts())
        .await
        .unwrap();

    let ck = got.default_checkpoint().unwrap();
    let want = ckpt_version().files[0].content.clone();
    assert_eq!(ck.kind, ModelKind::Checkpoint);
    assert_eq!(ck.name, "sdXL_v10VAEFix");
    assert_eq!(ck.sha256, want.sha256());
    assert_eq!(ck.autov2, &want.sha256()[..10]);
    assert_eq!(ck.size, want.len());
    assert_eq!(
        std::fs::read(&ck.path).unwrap(),
        want.slice(0, want.len()).to_vec()
    );
    assert!(ck.path.starts_with(&cache));
    let ids = ck.civitai.clone().unwrap();
    assert_eq!(
        (ids.model_id, ids.version_id, ids.file_id),
        (101055, 128078, 900)
    );
    assert_eq!(ck.base_model.as_deref(), Some("SDXL 1.0"));
    assert_eq!(ck.civitai_hashes.get("SHA256"), Some(&want.sha256()));
    assert_eq!(ck.autov3, None);
    assert_eq!(ck.default_weight, None);

    let lora = got.find(ModelKind::Lora, "DETAIL").unwrap();
    let lc = lora_version().files[0].content.clone();
    assert_eq!(lora.trigger_words, vec!["detailed", "intricate"]);
    assert_eq!(lora.default_weight, Some(0.7));
    assert_eq!(lora.autov3.as_deref(), Some(lc.autov3().as_str()));
    assert_eq!(
        lora.air.as_deref(),
        Some("urn:air:sdxl:lora:civitai:122359@135867")
    );

    // Human-readable links and sidecars.
    let link = cache.join("models/checkpoint/sdXL_v10VAEFix.safetensors");
    assert_eq!(
        std::fs::canonicalize(&link).unwrap(),
        std::fs::canonicalize(&ck.path).unwrap()
    );
    let sidecar = std::fs::read_to_string(ck.path.with_extension("json")).unwrap();
    assert!(sidecar.contains("\"version_id\": 128078"), "{sidecar}");
    let lsidecar = std::fs::read_to_string(lora.path.with_extension("json")).unwrap();
    assert!(lsidecar.contains("intricate"));
    // Computed AutoV3 equals Civitai's.
    assert!(lsidecar.contains(&format!("\"autov3\": \"{}\"", lc.autov3())));

    // Bearer only to Civitai, never to storage, never ?token=.
    let seen = mock.state.seen();
    for s in &seen {
        assert!(!s.query.contains("token"), "{s:?}");
        match s.host {
            "storage" => assert!(s.authorization.is_none(), "auth leaked to storage: {s:?}"),
            _ => assert_eq!(
                s.authorization.as_deref(),
                Some(format!("Bearer {TOKEN}").as_str())
            ),
        }
    }
    assert_eq!(mock.state.count("storage", "/storage/"), 2);
    // No leftovers.
    assert_eq!(std::fs::read_dir(cache.join("partial")).unwrap().count(), 0);
}

#[tokio::test]
async fn file_choice_by_fp_size_and_file_id() {
    let (mock, dir) = setup().await;
    let cache = dir.path().join("cache");
    let m = manifest(
        dir.path(),
        "[[checkpoint]]\ncivitai = 128078\nfp = \"fp32\"\nsize = \"full\"\n",
    );
    let got = prefetch_with(&args(&mock, &cache), &m, &opts())
        .await
        .unwrap();
    assert_eq!(got.models[0].civitai.as_ref().unwrap().file_id, 901);
    assert_eq!(
        got.models[0].sha256,
        ckpt_version().files[1].content.sha256()
    );

    let m = manifest(
        dir.path(),
        "[[checkpoint]]\nair = \"urn:air:sdxl:checkpoint:civitai:101055@128078+901\"\n",
    );
    let got = prefetch_with(&args(&mock, &cache), &m, &opts())
        .await
        .unwrap();
    assert_eq!(got.models[0].civitai.as_ref().unwrap().file_id, 901);

    let m = manifest(
        dir.path(),
        "[[checkpoint]]\ncivitai = 128078\nfp = \"bf16\"\n",
    );
    let e = prefetch_with(&args(&mock, &cache), &m, &opts())
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("models.toml:1"), "{text}");
    assert!(matches!(entry_error(e), EntryError::NoMatchingFile { .. }));
    assert!(
        text.contains("file_id 901"),
        "lists available files: {text}"
    );
}

#[tokio::test]
async fn pickle_files_are_refused_before_download() {
    let (mock, dir) = setup().await;
    let mut v = ckpt_version();
    v.id = 7;
    v.files.truncate(1);
    v.files[0].format = "PickleTensor".into();
    v.files[0].name = "model.ckpt".into();
    mock.state.add(v);
    let m = manifest(dir.path(), "[[checkpoint]]\ncivitai = 7\n");
    let e = prefetch_with(&args(&mock, &dir.path().join("c")), &m, &opts())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("pickle"), "{e}");
    assert_eq!(mock.state.count("api", "/api/download"), 0);
}

#[tokio::test]
async fn resumes_after_connection_drops_at_several_offsets() {
    let (mock, dir) = setup().await;
    let content = ckpt_version().files[0].content.clone();
    let len = content.len();
    let m = manifest(dir.path(), "[[checkpoint]]\ncivitai = 128078\n");
    for (i, offset) in [1u64, 8, 9, 4096, 65_536, len / 2, len - 1]
        .into_iter()
        .enumerate()
    {
        let cache = dir.path().join(format!("cache{i}"));
        mock.state.seen.lock().unwrap().clear();
        mock.state.drop_at.lock().unwrap().push_back(offset);
        let got = prefetch_with(&args(&mock, &cache), &m, &opts())
            .await
            .unwrap();
        assert_eq!(got.models[0].sha256, content.sha256(), "offset {offset}");
        assert_eq!(
            std::fs::read(&got.models[0].path).unwrap().len() as u64,
            len
        );
        let storage = mock.state.storage_requests();
        assert_eq!(storage.len(), 2, "offset {offset}: {storage:?}");
        assert_eq!(storage[0].range, None);
        assert_eq!(
            storage[1].range.as_deref(),
            Some(format!("bytes={offset}-").as_str())
        );
        assert_eq!(storage[1].status, 206);
        // The presigned URL was reused: one resolution only.
        assert_eq!(
            mock.state.count("api", "/api/download"),
            1,
            "offset {offset}"
        );
    }
}

#[tokio::test]
async fn restarted_worker_resumes_part_file_with_saved_url() {
    let (mock, dir) = setup().await;
    let content = ckpt_version().files[0].content.clone();
    let half = content.len() / 2;
    let m = manifest(dir.path(), "[[checkpoint]]\ncivitai = 128078\n");
    let cache = dir.path().join("cache");
    // Cut at `half`, then cut the resume attempt before it delivers anything: with no
    // retries for attempts that make no progress, the first run gives up like a killed worker.
    mock.state.drop_at.lock().unwrap().extend([half, half]);
    let mut no_retry = opts();
    no_retry.max_retries = 0;
    let e = prefetch_err(&args(&mock, &cache), &m, &no_retry).await;
    assert!(
        matches!(e, EntryError::Interrupted { offset, .. } if offset == half),
        "{e:?}"
    );
    assert!(blobs(&cache).is_empty(), "nothing named as complete");
    let parts: Vec<_> = std::fs::read_dir(cache.join("partial"))
        .unwrap()
        .flatten()
        .collect();
    let part = parts
        .iter()
        .find(|p| p.path().extension().is_some_and(|e| e == "part"))
        .unwrap();
    assert_eq!(part.metadata().unwrap().len(), half);

    let got = prefetch_with(&args(&mock, &cache), &m, &opts())
        .await
        .unwrap();
    assert_eq!(got.models[0].sha256, content.sha256());
    let last = mock
        .state
        .seen()
        .into_iter()
        .rfind(|s| s.host == "storage")
        .unwrap();
    assert_eq!(
        last.range.as_deref(),
        Some(format!("bytes={half}-").as_str())
    );
    assert_eq!(
        mock.state.count("api", "/api/download"),
        1,
        "saved URL reused"
    );
}

#[tokio::test]
async fn expired_storage_url_on_resume_is_re_resolved() {
    let (mock, dir) = setup().await;
    let content = ckpt_version().files[0].content.clone();
    let half = content.len() / 2;
    mock.state.drop_at.lock().unwrap().push_back(half);
    mock.state.expire_on_drop.store(true, Ordering::SeqCst);
    let m = manifest(dir.path(), "[[checkpoint]]\ncivitai = 128078\n");
    let got = prefetch_with(&args(&mock, &dir.path().join("c")), &m, &opts())
        .await
        .unwrap();
    assert_eq!(got.models[0].sha256, content.sha256());
    let storage = mock.state.storage_requests();
    let statuses: Vec<u16> = storage.iter().map(|s| s.status).collect();
    assert_eq!(statuses, vec![200, 403, 206], "{storage:?}");
    assert_eq!(
        storage[2].range.as_deref(),
        Some(format!("bytes={half}-").as_str())
    );
    assert_eq!(mock.state.count("api", "/api/download"), 2);
}

#[tokio::test]
async fn sha_mismatch_is_rejected_and_not_cached() {
    let (mock, dir) = setup().await;
    let mut v = ckpt_version();
    v.files[0].listed_sha = Some("AB".repeat(32));
    mock.state.add(v);
    let cache = dir.path().join("c");
    let m = manifest(dir.path(), "[[checkpoint]]\ncivitai = 128078\n");
    let e = prefetch_err(&args(&mock, &cache), &m, &opts()).await;
    assert!(matches!(e, EntryError::HashMismatch { .. }));
    assert!(blobs(&cache).is_empty());
    assert_eq!(std::fs::read_dir(cache.join("partial")).unwrap().count(), 0);

    // A pin that disagrees with Civitai's listed hash fails before any download.
    mock.state.add(ckpt_version());
    let before = mock.state.count("storage", "/");
    let m = manifest(
        dir.path(),
        &format!(
            "[[checkpoint]]\ncivitai = 128078\nsha256 = \"{}\"\n",
            "cd".repeat(32)
        ),
    );
    let e = prefetch_err(&args(&mock, &cache), &m, &opts()).await;
    assert!(matches!(e, EntryError::PinMismatch { .. }));
    assert_eq!(mock.state.count("storage", "/"), before);
}

type Edit = Box<dyn Fn(&mut MockVersion)>;

#[tokio::test]
async fn non_model_bodies_are_never_saved() {
    let (mock, dir) = setup().await;
    let m = manifest(dir.path(), "[[checkpoint]]\ncivitai = 128078\n");
    let cases: Vec<(&str, Edit)> = vec![
        (
            "html-200",
            Box::new(|v| v.behavior = DownloadBehavior::Html200),
        ),
        (
            "json-storage",
            Box::new(|v| {
                v.files[0].served_text = Some((
                    "application/json".into(),
                    r#"{"error":"Unauthorized","message":"The creator of this asset requires you to be logged in to download it"}"#.into(),
                ))
            }),
        ),
        (
            "html-as-octet-stream",
            Box::new(|v| {
                let page = b"<!DOCTYPE html><html>login</html>".to_vec();
                v.files[0].served = Some(Content::Bytes(page.clone().into()));
                v.files[0].listed_size = Some(page.len() as u64);
            }),
        ),
        (
            "wrong-variant",
            Box::new(|v| v.files[0].served = Some(v.files[1].content.clone())),
        ),
    ];
    for (name, edit) in cases {
        let mut v = ckpt_version();
        edit(&mut v);
        mock.state.add(v);
        let cache = dir.path().join(name);
        let err = prefetch_err(&args(&mock, &cache), &m, &opts()).await;
        match name {
            "wrong-variant" => assert!(
                matches!(err, EntryError::SizeMismatch { .. }),
                "{name}: {err}"
            ),
            _ => assert!(matches!(err, EntryError::NotAModel { .. }), "{name}: {err}"),
        }
        assert!(blobs(&cache).is_empty(), "{name}");
        let leftovers: Vec<_> = std::fs::read_dir(cache.join("partial"))
            .unwrap()
            .flatten()
            .filter(|e| e.metadata().unwrap().len() > 0)
            .collect();
        assert!(leftovers.is_empty(), "{name}: {leftovers:?}");
    }
}

#[tokio::test]
async fn civitai_error_statuses_become_clear_messages() {
    let (mock, dir) = setup().await;
    let m = manifest(dir.path(), "[[checkpoint]]\ncivitai = 128078\n");
    let cache = dir.path().join("c");

    // 401: no token.
    let mut a = args(&mock, &cache);
    a.civitai_token = None;
    let e = prefetch_err(&a, &m, &opts()).await;
    assert!(matches!(e, EntryError::TokenMissing { .. }), "{e}");
    assert!(e.to_string().contains("CIVITAI_TOKEN"), "{e}");
    // 401: wrong token.
    a.civitai_token = Some(SecretString::new("ffffffffffffffffffffffffffffffff"));
    let e = prefetch_err(&a, &m, &opts()).await;
    assert!(matches!(e, EntryError::TokenRejected { .. }), "{e}");
    assert!(!e.to_string().contains("ffffffff"), "{e}");

    let cases = [
        (DownloadBehavior::GenerationOnly, "disabled downloads"),
        (
            DownloadBehavior::EarlyAccess,
            "Early Access until 2030-01-01",
        ),
        (DownloadBehavior::NotFound, "not found"),
        (DownloadBehavior::Archived, "archived"),
        (DownloadBehavior::RateLimited(usize::MAX), "quota"),
    ];
    for (behavior, text) in cases {
        let mut v = ckpt_version();
        v.behavior = behavior.clone();
        mock.state.add(v);
        let e = prefetch_with(&args(&mock, &cache), &m, &opts())
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(text), "{behavior:?}: {msg}");
        assert!(msg.contains("models.toml:1"), "{msg}");
    }
    // Version 404 from the metadata endpoint.
    let m404 = manifest(dir.path(), "[[checkpoint]]\ncivitai = 999\n");
    let e = prefetch_err(&args(&mock, &cache), &m404, &opts()).await;
    assert!(e.to_string().contains("model version 999"), "{e}");
    assert!(blobs(&cache).is_empty());
}

#[tokio::test]
async fn rate_limit_backs_off_then_succeeds() {
    let (mock, dir) = setup().await;
    let mut v = ckpt_version();
    v.behavior = DownloadBehavior::RateLimited(2);
    mock.state.add(v);
    let m = manifest(dir.path(), "[[checkpoint]]\ncivitai = 128078\n");
    let got = prefetch_with(&args(&mock, &dir.path().join("c")), &m, &opts())
        .await
        .unwrap();
    assert_eq!(got.models.len(), 1);
    let statuses: Vec<u16> = mock
        .state
        .seen()
        .iter()
        .filter(|s| s.path.starts_with("/api/download"))
        .map(|s| s.status)
        .collect();
    assert_eq!(statuses, vec![429, 429, 307]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_on_one_volume_share_one_download() {
    let (mock, dir) = setup().await;
    mock.state.chunk_size.store(16 * 1024, Ordering::Relaxed);
    mock.state.chunk_delay_ms.store(5, Ordering::Relaxed);
    let m = manifest(dir.path(), "[[checkpoint]]\ncivitai = 128078\n");
    let cache = dir.path().join("shared-volume");
    let (a1, a2) = (args(&mock, &cache), args(&mock, &cache));
    let (m1, m2) = (m.clone(), m.clone());
    let t1 = tokio::spawn(async move { prefetch_with(&a1, &m1, &opts()).await });
    let t2 = tokio::spawn(async move { prefetch_with(&a2, &m2, &opts()).await });
    let (r1, r2) = (t1.await.unwrap().unwrap(), t2.await.unwrap().unwrap());
    assert_eq!(r1.models[0].path, r2.models[0].path);
    assert_eq!(
        r1.models[0].sha256,
        ckpt_version().files[0].content.sha256()
    );
    assert_eq!(
        mock.state.count("storage", "/storage/"),
        1,
        "downloaded once"
    );
    assert_eq!(blobs(&cache).len(), 1);
}

#[tokio::test]
async fn pinned_cache_hit_needs_no_network() {
    let (mock, dir) = setup().await;
    let cache = dir.path().join("c");
    let sha = ckpt_version().files[0].content.sha256();
    let text = format!(
        "[[checkpoint]]\ncivitai = 128078\nsha256 = \"{}\"\n\n[[lora]]\ncivitai = 135867\n",
        sha.to_lowercase()
    );
    let m = manifest(dir.path(), &text);
    let first = prefetch_with(&args(&mock, &cache), &m, &opts())
        .await
        .unwrap();

    // Civitai unreachable: a closed port.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let before = mock.state.seen().len();
    let mut a = args(&mock, &cache);
    a.civitai_base_url = url::Url::parse(&dead_url).unwrap();
    let mut quick = opts();
    quick.max_retries = 0;
    let second = prefetch_with(&a, &m, &quick).await.unwrap();
    assert_eq!(mock.state.seen().len(), before, "no request to the mock");
    assert_eq!(second.models[0].path, first.models[0].path);
    assert_eq!(second.models[0].civitai, first.models[0].civitai);
    // The unpinned LoRA falls back to the file fetched for the same entry before.
    assert_eq!(second.models[1].sha256, first.models[1].sha256);
    assert_eq!(
        second.models[1].trigger_words,
        vec!["detailed", "intricate"]
    );
}

#[tokio::test]
async fn disk_full_is_reported_and_leaves_nothing_named_complete() {
    let (mock, dir) = setup().await;
    let cache = dir.path().join("c");
    let m = manifest(dir.path(), "[[checkpoint]]\ncivitai = 128078\n");
    // Simulated: writes fail with StorageFull (ENOSPC's portable kind) past 100 KB.
    let mut limited = opts();
    limited.write_limit = Some(100_000);
    let e = prefetch_err(&args(&mock, &cache), &m, &limited).await;
    assert!(matches!(e, EntryError::DiskFull { .. }), "{e}");
    assert!(e.to_string().contains("disk full"), "{e}");
    assert!(blobs(&cache).is_empty());

    // Real free-space check: metadata claiming a 1 PiB file fails before any download.
    let mut v = ckpt_version();
    v.files[0].listed_size = Some(1 << 50);
    mock.state.add(v);
    let before = mock.state.count("storage", "/");
    let e = prefetch_err(&args(&mock, &dir.path().join("d")), &m, &opts()).await;
    assert!(matches!(e, EntryError::DiskFull { .. }), "{e}");
    assert_eq!(mock.state.count("storage", "/"), before);
}

#[tokio::test]
async fn unwritable_cache_is_a_clear_error() {
    let (mock, dir) = setup().await;
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let m = manifest(dir.path(), "[[checkpoint]]\ncivitai = 128078\n");
    let e = prefetch_with(&args(&mock, &file.join("cache")), &m, &opts())
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::Cache(_)), "{e}");
    assert!(e.to_string().contains("not-a-dir"), "{e}");
}

#[tokio::test]
async fn plain_url_with_hostile_disposition_is_sanitised() {
    let (mock, dir) = setup().await;
    let content = Content::Bytes(safetensors_bytes(2000, 9).into());
    mock.state.plain.lock().unwrap().insert(
        "dl/1".into(),
        (
            content.clone(),
            Some("attachment; filename=\"../../../etc/evil name.safetensors\"".into()),
        ),
    );
    mock.state.plain.lock().unwrap().insert(
        "dl/2".into(),
        (
            content.clone(),
            Some("attachment; filename=\"model.ckpt\"".into()),
        ),
    );
    let cache = dir.path().join("c");
    let m = manifest(
        dir.path(),
        &format!("[[checkpoint]]\nurl = \"{}\"\n", mock.plain_url("dl/1")),
    );
    let got = prefetch_with(&args(&mock, &cache), &m, &opts())
        .await
        .unwrap();
    assert_eq!(got.models[0].file_name, "evil name.safetensors");
    assert_eq!(got.models[0].name, "evil name");
    assert_eq!(got.models[0].sha256, content.sha256());
    assert!(cache
        .join("models/checkpoint/evil name.safetensors")
        .exists());
    assert!(!dir.path().join("etc").exists());
    // No credentials on plain URLs either.
    assert!(mock.state.seen().iter().all(|s| s.authorization.is_none()));

    let m = manifest(
        dir.path(),
        &format!("[[checkpoint]]\nurl = \"{}\"\n", mock.plain_url("dl/2")),
    );
    let e = prefetch_with(&args(&mock, &dir.path().join("d")), &m, &opts())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("pickle"), "{e}");
    assert!(blobs(&dir.path().join("d")).is_empty());
}

#[tokio::test]
async fn local_path_source_is_hashed_and_pin_checked() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = safetensors_bytes(1000, 4);
    std::fs::write(dir.path().join("local.safetensors"), &bytes).unwrap();
    let sha = Content::Bytes(bytes.clone().into()).sha256();
    let m = manifest(dir.path(), "[[checkpoint]]\npath = \"local.safetensors\"\n[[lora]]\npath = \"local.safetensors\"\nname = \"same\"\n");
    let a = FetchArgs::new("models.toml", dir.path().join("c"));
    let got = prefetch_with(&a, &m, &opts()).await.unwrap();
    assert_eq!(got.models[0].sha256, sha);
    assert_eq!(got.models[0].path, dir.path().join("local.safetensors"));
    assert_eq!(
        got.models[1].autov3.as_deref(),
        Some(Content::Bytes(bytes.into()).autov3().as_str())
    );
    let m = manifest(
        dir.path(),
        &format!(
            "[[checkpoint]]\npath = \"local.safetensors\"\nsha256 = \"{}\"\n",
            "0".repeat(64)
        ),
    );
    let e = prefetch_err(&a, &m, &opts()).await;
    assert!(matches!(e, EntryError::HashMismatch { .. }), "{e}");
}

/// Two worker processes on one cache volume. The test binary re-runs itself as two children
/// (this same test, selected with `--exact`, in child mode via FETCH_CHILD_SPEC); storage holds
/// its answer until both children asked for metadata, and streams slowly, so the second child
/// finds the first one's lock held and must wait for it.
#[test]
fn two_processes_share_one_download() {
    if let Ok(spec) = std::env::var("FETCH_CHILD_SPEC") {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .try_init();
        let parts: Vec<&str> = spec.split('|').collect();
        let mut a = FetchArgs::new(parts[2], parts[1]);
        a.civitai_base_url = url::Url::parse(parts[0]).unwrap();
        a.civitai_token = Some(SecretString::new(TOKEN));
        let m = Manifest::load(parts[2]).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let got = rt.block_on(prefetch_with(&a, &m, &opts())).unwrap();
        assert_eq!(
            got.models[0].sha256,
            ckpt_version().files[0].content.sha256()
        );
        println!("CHILD-SHA {}", got.models[0].sha256);
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mock, dir) = rt.block_on(setup());
    mock.state.chunk_size.store(16 * 1024, Ordering::Relaxed);
    mock.state.chunk_delay_ms.store(40, Ordering::Relaxed);
    mock.state.storage_gate.store(2, Ordering::SeqCst);
    let m = manifest(dir.path(), "[[checkpoint]]\ncivitai = 128078\n");
    let cache = dir.path().join("volume");
    let spec = format!(
        "{}|{}|{}",
        mock.base_url(),
        cache.display(),
        m.path.display()
    );
    let spawn = || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "two_processes_share_one_download",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("FETCH_CHILD_SPEC", &spec)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (c1, c2) = (spawn(), spawn());
    let (o1, o2) = (
        c1.wait_with_output().unwrap(),
        c2.wait_with_output().unwrap(),
    );
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let (t1, t2) = (text(&o1), text(&o2));
    assert!(
        o1.status.success() && o2.status.success(),
        "child 1:\n{t1}\nchild 2:\n{t2}"
    );
    let sha = ckpt_version().files[0].content.sha256();
    assert!(t1.contains(&format!("CHILD-SHA {sha}")) && t2.contains(&format!("CHILD-SHA {sha}")));
    assert_eq!(
        mock.state.count("storage", "/storage/"),
        1,
        "one download for both"
    );
    assert_eq!(mock.state.count("api", "/api/v1/model-versions/"), 2);
    let waited = [&t1, &t2]
        .iter()
        .filter(|t| t.contains("another worker is downloading this file"))
        .count();
    assert_eq!(
        waited, 1,
        "exactly one child waited on the lock:\n{t1}\n{t2}"
    );
    assert_eq!(blobs(&cache).len(), 1);
}
