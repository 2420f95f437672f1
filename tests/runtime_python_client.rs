//! The official `runpod` Python client (pinned version, installed into a virtualenv under
//! `target/`) against the local endpoint API of `examples/echo_worker`. Fails, never
//! skips, when Python or the package cannot be set up.

mod pyenv;
mod runtime_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use runtime_support::{echo_worker, free_port};

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

/// A worker process that is killed when the test ends, pass or fail.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(port: u16, streaming: bool) -> Worker {
    let child = Command::new(echo_worker())
        .args([
            "--rp_serve_api",
            "--rp_api_port",
            &port.to_string(),
            "--rp_api_key",
            KEY,
        ])
        .env("ECHO_STREAMING", if streaming { "1" } else { "0" })
        .env("ECHO_INIT_MS", "300")
        .env_remove("RUNPOD_WEBHOOK_GET_JOB")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "echo_worker did not open port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Worker(child)
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
