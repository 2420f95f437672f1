//! Python tools for tests (the official `runpod` client, the `moto` S3 server), each pinned and
//! installed once into its own virtualenv under `target/`. Setup problems fail the test with
//! a clear message; nothing is skipped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// Only one test of a binary at a time may create a virtualenv.
static VENV_LOCK: Mutex<()> = Mutex::new(());

/// `target/` of the running test binary (`target/<profile>/deps/<test exe>`).
pub fn target_dir() -> PathBuf {
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

/// Whether `check` (Python source that exits 0 when the right version is importable) passes.
fn ready(python: &Path, check: &str) -> bool {
    Command::new(python)
        .args(["-c", check])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Creates (or reuses) `target/<name>` with `requirement` installed; `check` is Python code
/// that exits 0 once the pinned version imports. Returns the venv's python.
pub fn ensure_venv(name: &str, requirement: &str, check: &str) -> PathBuf {
    let _guard = VENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let venv = target_dir().join(name);
    let python = venv_python(&venv);
    if ready(&python, check) {
        return python;
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .unwrap_or_else(|e| panic!("this test needs python3 (with the venv module) on PATH: {e}"));
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
        .arg(requirement)
        .output()
        .unwrap();
    assert!(
        pip.status.success(),
        "pip install {requirement} failed (network access to PyPI is needed once):\n{}",
        String::from_utf8_lossy(&pip.stderr)
    );
    assert!(
        ready(&python, check),
        "{requirement} is not importable after install into {}",
        venv.display()
    );
    python
}
