//! A real S3-compatible server for the storage tests: `moto` (pinned) in a virtualenv under
//! `target/py-moto`, created on first use. Setup problems fail the test, never skip it.

#[path = "../runtime_support/mod.rs"]
mod runtime_support;

/// A TCP port that was free a moment ago (the runtime tests' helper).
pub use runtime_support::free_port;

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use std::time::{Duration, Instant};

/// The moto release the tests are pinned to.
pub const MOTO_VERSION: &str = "5.2.5";

/// Creates (or reuses) `target/py-moto` with `moto[server]==MOTO_VERSION`.
pub fn ensure_moto() -> PathBuf {
    crate::pyenv::ensure_venv(
        "py-moto",
        &format!("moto[server]=={MOTO_VERSION}"),
        &format!(
            "import moto, moto.server, flask, sys; sys.exit(moto.__version__ != '{MOTO_VERSION}')"
        ),
    )
}

/// A moto server on 127.0.0.1, killed when dropped (pass or fail).
pub struct Moto {
    child: Child,
    pub port: u16,
    log: tempfile::NamedTempFile,
}

impl Moto {
    pub fn start() -> Moto {
        let python = ensure_moto();
        let port = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(&python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::from(log.reopen().unwrap()))
            .stderr(Stdio::from(log.reopen().unwrap()))
            .spawn()
            .unwrap_or_else(|e| panic!("starting moto with {}: {e}", python.display()));
        let mut server = Moto { child, port, log };
        server.wait_ready();
        server
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&mut self) {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("moto exited early ({status}):\n{}", self.log_text());
            }
            assert!(
                Instant::now() < end,
                "moto did not listen on port {} within 60 s:\n{}",
                self.port,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        let _ = File::open(self.log.path()).and_then(|mut f| f.read_to_string(&mut s));
        s
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The s3rver release used as a second server implementation.
pub const S3RVER_VERSION: &str = "3.7.1";
/// s3rver's built-in account (its only accepted access key id and secret).
pub const S3RVER_KEY: &str = "S3RVER";

fn s3rver_installed(module: &Path) -> bool {
    std::fs::read_to_string(module.join("package.json"))
        .is_ok_and(|s| s.contains(&format!("\"version\": \"{S3RVER_VERSION}\"")))
}

/// Installs (or reuses) `s3rver@S3RVER_VERSION` under `target/js-s3rver`.
pub fn ensure_s3rver() -> PathBuf {
    static INSTALL_LOCK: Mutex<()> = Mutex::new(());
    let _guard = INSTALL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let prefix = crate::pyenv::target_dir().join("js-s3rver");
    let module = prefix.join("node_modules").join("s3rver");
    if s3rver_installed(&module) {
        return module;
    }
    std::fs::create_dir_all(&prefix).unwrap();
    let npm = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
        .arg(&prefix)
        .arg(format!("s3rver@{S3RVER_VERSION}"))
        .output()
        .unwrap_or_else(|e| panic!("the storage tests need node and npm on PATH: {e}"));
    assert!(
        npm.status.success(),
        "npm install s3rver@{S3RVER_VERSION} failed (npm registry access is needed once):\n{}",
        String::from_utf8_lossy(&npm.stderr)
    );
    assert!(
        s3rver_installed(&module),
        "s3rver {S3RVER_VERSION} missing after install into {}",
        prefix.display()
    );
    module
}

/// An s3rver on 127.0.0.1 with one bucket, killed when dropped.
pub struct S3rver {
    child: Child,
    pub port: u16,
    _data: tempfile::TempDir,
    log: tempfile::NamedTempFile,
}

impl S3rver {
    pub fn start(bucket: &str) -> S3rver {
        let module = ensure_s3rver();
        let port = free_port();
        let data = tempfile::tempdir().unwrap();
        let log = tempfile::NamedTempFile::new().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/storage_support/s3rver.js");
        let child = Command::new("node")
            .arg(script)
            .env("S3RVER_MODULE", &module)
            .env("S3RVER_PORT", port.to_string())
            .env("S3RVER_DIR", data.path())
            .env("S3RVER_BUCKET", bucket)
            .stdout(Stdio::from(log.reopen().unwrap()))
            .stderr(Stdio::from(log.reopen().unwrap()))
            .spawn()
            .unwrap_or_else(|e| panic!("starting s3rver with node: {e}"));
        let mut server = S3rver {
            child,
            port,
            _data: data,
            log,
        };
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let mut out = String::new();
            let _ = File::open(server.log.path()).and_then(|mut f| f.read_to_string(&mut out));
            if out.contains("listening") {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("s3rver exited early ({status}):\n{out}");
            }
            assert!(
                Instant::now() < end,
                "s3rver did not start within 30 s:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for S3rver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
