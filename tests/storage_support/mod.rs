//! A real S3-compatible server for the storage tests: `moto` (pinned) in a virtualenv under
//! `target/py-moto`, created on first use. Setup problems fail the test, never skip it.

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The moto release the tests are pinned to.
pub const MOTO_VERSION: &str = "5.2.5";

/// Only one test at a time may create the virtualenv.
static VENV_LOCK: Mutex<()> = Mutex::new(());

fn target_dir() -> PathBuf {
    // target/<profile>/deps/<test exe>
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

fn venv_python(venv: &Path) -> PathBuf {
    if cfg!(windows) {
        venv.join("Scripts").join("python.exe")
    } else {
        venv.join("bin").join("python")
    }
}

fn has_pinned_moto(python: &Path) -> bool {
    Command::new(python)
        .args([
            "-c",
            &format!(
                "import moto, moto.server, flask, sys; sys.exit(moto.__version__ != '{MOTO_VERSION}')"
            ),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Creates (or reuses) `target/py-moto` with `moto[server]==MOTO_VERSION`.
pub fn ensure_moto() -> PathBuf {
    let _guard = VENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let venv = target_dir().join("py-moto");
    let python = venv_python(&venv);
    if has_pinned_moto(&python) {
        return python;
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .unwrap_or_else(|e| panic!("the storage tests need python3 (with venv) on PATH: {e}"));
    assert!(
        made.status.success(),
        "python3 -m venv {} failed:\n{}",
        venv.display(),
        String::from_utf8_lossy(&made.stderr)
    );
    let pip = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg(format!("moto[server]=={MOTO_VERSION}"))
        .output()
        .unwrap();
    assert!(
        pip.status.success(),
        "pip install moto[server]=={MOTO_VERSION} failed (PyPI access is needed once):\n{}",
        String::from_utf8_lossy(&pip.stderr)
    );
    assert!(
        has_pinned_moto(&python),
        "moto {MOTO_VERSION} is not importable after install into {}",
        venv.display()
    );
    python
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
