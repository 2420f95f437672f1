//! Hugging Face source against a mock endpoint (HF_ENDPOINT). One test function because it sets
//! process environment variables, which hf-hub reads.

mod fetch_support;

use fetch_support::*;
use sdxl_worker::fetch::{prefetch_with, EntryError, FetchArgs, ModelKind};

#[tokio::test]
async fn hugging_face_files_are_fetched_verified_and_linked() {
    let hf = MockHf::start().await;
    let content = Content::Bytes(safetensors_bytes(3000, 11).into());
    hf.state
        .files
        .lock()
        .unwrap()
        .insert("org/vae/sdxl_vae.safetensors".into(), content.clone());
    std::env::set_var("HF_ENDPOINT", format!("http://{}", hf.addr));
    std::env::set_var("HF_TOKEN", "hf_test_secret");
    std::env::remove_var("HF_HOME");

    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let a = FetchArgs::new("models.toml", &cache);
    let m = manifest(
        dir.path(),
        "[[checkpoint]]\nhf = \"org/vae\"\nfile = \"sdxl_vae.safetensors\"\n\n[vae]\nname = \"fixed\"\nhf = \"org/vae\"\nfile = \"sdxl_vae.safetensors\"\nrevision = \"main\"\n",
    );
    let got = prefetch_with(&a, &m, &opts()).await.unwrap();
    let vae = got.vae().unwrap();
    assert_eq!(vae.kind, ModelKind::Vae);
    assert_eq!(vae.name, "fixed");
    assert_eq!(vae.sha256, content.sha256());
    assert_eq!(got.models[0].name, "sdxl_vae");
    assert!(vae.path.starts_with(cache.join("blobs")));
    assert_eq!(
        std::fs::read(&vae.path).unwrap(),
        content.slice(0, content.len()).to_vec()
    );
    // Placed by hard link from hf-hub's cache (under <cache>/hf since HF_HOME is unset).
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(&vae.path).unwrap().nlink() >= 2);
    }
    assert!(cache.join("hf").is_dir());
    let seen = hf.state.seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|s| s.authorization.as_deref() == Some("Bearer hf_test_secret")),
        "HF_TOKEN is sent to the HF endpoint: {seen:?}"
    );

    // Second start: served from our cache index, no request.
    let before = hf.state.seen.lock().unwrap().len();
    prefetch_with(&a, &m, &opts()).await.unwrap();
    assert_eq!(hf.state.seen.lock().unwrap().len(), before);

    // Pin mismatch is rejected.
    let m = manifest(
        dir.path(),
        &format!(
            "[[checkpoint]]\nhf = \"org/vae\"\nfile = \"sdxl_vae.safetensors\"\nsha256 = \"{}\"\n",
            "1".repeat(64)
        ),
    );
    let e = prefetch_err(&a, &m, &opts()).await;
    assert!(matches!(e, EntryError::HashMismatch { .. }), "{e}");

    // Missing file: a clear error naming the repository and file.
    let m = manifest(
        dir.path(),
        "[[checkpoint]]\nhf = \"org/vae\"\nfile = \"missing.safetensors\"\n",
    );
    let e = prefetch_with(&a, &m, &opts())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("org/vae/missing.safetensors"), "{e}");
    assert!(!e.contains("hf_test_secret"), "{e}");
}
