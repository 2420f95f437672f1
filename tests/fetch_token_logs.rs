//! Secrets never reach logs, errors, Debug output or cache files. Its own test binary: it
//! installs a capturing tracing subscriber, which must not race other tests' call sites.

mod fetch_support;

use fetch_support::*;
use sdxl_worker::fetch::{prefetch_with, SecretString};

/// Captures everything logged (at TRACE) into a buffer.
#[derive(Clone, Default)]
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

#[test]
fn token_never_appears_in_logs_errors_or_files() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(capture.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Current-thread runtime: every task logs on this thread, into the capture.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (errors, cache, debug) = rt.block_on(async {
        let (mock, dir) = setup().await;
        let cache = dir.path().join("c");
        let m = manifest(dir.path(), BASIC);
        let a = args(&mock, &cache);
        prefetch_with(&a, &m, &opts()).await.unwrap();
        let mut errors = Vec::new();
        for behavior in [DownloadBehavior::EarlyAccess, DownloadBehavior::NotFound] {
            let mut v = ckpt_version();
            v.behavior = behavior;
            mock.state.add(v);
            let m = manifest(
                dir.path(),
                "[[checkpoint]]\ncivitai = 128078\nfp = \"fp32\"\n",
            );
            let e = prefetch_with(&a, &m, &opts()).await.unwrap_err();
            errors.push(format!("{e} {e:?}"));
        }
        let mut wrong = a.clone();
        wrong.civitai_token = Some(SecretString::new("deadbeefdeadbeefdeadbeefdeadbeef"));
        let m = manifest(
            dir.path(),
            "[[checkpoint]]\ncivitai = 128078\nfp = \"fp32\"\n",
        );
        let e = prefetch_with(&wrong, &m, &opts()).await.unwrap_err();
        errors.push(format!("{e} {e:?}"));
        let debug = format!("{a:?} {wrong:?}");
        (errors, dir, debug)
    });
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("models ready"), "capture works: {logs}");
    for secret in [TOKEN, "deadbeefdeadbeefdeadbeefdeadbeef"] {
        assert!(!logs.contains(secret), "token in logs");
        assert!(!debug.contains(secret), "token in Debug: {debug}");
        for e in &errors {
            assert!(!e.contains(secret), "token in error: {e}");
        }
        for entry in walk(&cache.path().join("c")) {
            if entry.is_file() {
                let bytes = std::fs::read(&entry).unwrap();
                let text = String::from_utf8_lossy(&bytes);
                assert!(!text.contains(secret), "token in {}", entry.display());
            }
        }
    }
    assert!(debug.contains("<redacted>"));
}
