//! The official `runpod` Python client (pinned version, installed into a virtualenv under
//! `target/`) against the local endpoint API of `examples/echo_worker`. Fails, never
//! skips, when Python or the package cannot be set up.

// The repository's helper for pinned Python tools (shared with the SDXL worker's S3 tests).
#[path = "../../../tests/pyenv/mod.rs"]
mod pyenv;
mod runtime_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use runtime_support::{echo_worker, free_port, ServedApi};

/// The `runpod` release the compatibility claim is tested against.
const RUNPOD_VERSION: &str = "1.12.0";
const KEY: &str = "local-test-key";

/// Creates (or reuses) `target/py-runpod` with `runpod==RUNPOD_VERSION`.
fn ensure_venv() -> PathBuf {
    pyenv::ensure_venv(
        "py-runpod",
        &format!("runpod=={RUNPOD_VERSION}"),
        &format!("import runpod, sys; sys.exit(runpod.__version__ != '{RUNPOD_VERSION}')"),
    )
}

fn serve(port: u16, streaming: bool) -> ServedApi {
    let mut cmd = Command::new(echo_worker());
    cmd.args(["--rp_api_key", KEY])
        .env("ECHO_STREAMING", if streaming { "1" } else { "0" })
        .env("ECHO_INIT_MS", "300");
    ServedApi::start(cmd, port)
}

#[test]
fn official_python_client_works_against_the_local_endpoint_api() {
    let python = ensure_venv();
    let (p1, p2) = (free_port(), free_port());
    let _plain = serve(p1, false);
    let _streaming = serve(p2, true);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/client_check.py");
    let out = Command::new(&python)
        .arg(script)
        .arg(format!("http://127.0.0.1:{p1}"))
        .arg(format!("http://127.0.0.1:{p2}"))
        .arg(KEY)
        .env_remove("RUNPOD_ENDPOINT_BASE_URL")
        .env_remove("RUNPOD_API_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.lines().last() == Some("OK"),
        "client script failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("runpod {RUNPOD_VERSION}")),
        "{stdout}"
    );
}
