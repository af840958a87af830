//! A full disk, for real: a tiny tmpfs as the state directory. Writes that
//! fail in the middle of a record leave no partial line behind: once space
//! is back the audit chain and the OTLP/JSON files go on whole, and the
//! failures were counted rather than breaking anything for good.
#![cfg(target_os = "linux")]

use custos::audit::{AuditEntry, AuditKind, AuditLog};
use custos::export::{BatchKind, FileSink};
use custos_tests::gate;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("mounting a tmpfs needs root".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("mount: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn entry(i: usize) -> AuditEntry {
    AuditEntry {
        kind: AuditKind::Outcome,
        runbook: "rb".into(),
        service: "api".into(),
        message: format!("record {i}"),
        // Command output makes records large.
        details: serde_json::json!({ "output": "x".repeat(3000) }),
        dry_run: false,
    }
}

fn fill(dir: &Path, bytes: usize) -> PathBuf {
    let filler = dir.join("filler");
    std::fs::write(&filler, vec![0u8; bytes]).unwrap();
    filler
}

#[test]
fn a_full_disk_leaves_the_audit_chain_whole_and_counted() {
    let fs = match Tmpfs::mount("512k") {
        Ok(fs) => fs,
        Err(e) => {
            gate("a_full_disk_leaves_the_audit_chain_whole_and_counted", Err(e));
            return;
        }
    };
    let dir = fs.path().join("audit");
    let filler = fill(fs.path(), 400 * 1024);
    let log = AuditLog::open(&dir, 1 << 20).unwrap();
    let mut written = 0;
    let mut failed = 0;
    for i in 0..200 {
        match log.append(entry(i), SystemTime::now()) {
            Ok(_) => written += 1,
            Err(_) => failed += 1,
        }
    }
    assert!(written > 0 && failed > 50, "written {written}, failed {failed}");
    assert!(log.write_failures() >= failed, "{} < {failed}", log.write_failures());
    // Space is back: the chain goes on where it stopped.
    std::fs::remove_file(&filler).unwrap();
    let r = log.append(entry(999), SystemTime::now()).unwrap();
    assert_eq!(r.seq, written + 1, "no sequence number was lost or reused");
    drop(log);
    let s = custos::audit::verify(&dir).unwrap_or_else(|b| panic!("{b}"));
    assert_eq!(s.records, written + 1);
    assert_eq!(s.torn_bytes, 0);
}

#[test]
fn a_full_disk_leaves_no_partial_otlp_json_line() {
    let fs = match Tmpfs::mount("256k") {
        Ok(fs) => fs,
        Err(e) => {
            gate("a_full_disk_leaves_no_partial_otlp_json_line", Err(e));
            return;
        }
    };
    let filler = fill(fs.path(), 200 * 1024);
    let otlp = fs.path().join("otlp");
    let mut sink = FileSink::new(&otlp, 1 << 20, 4).unwrap();
    let line = format!("{{\"resourceLogs\":[{{\"pad\":\"{}\"}}]}}", "y".repeat(5000));
    let mut failed = 0;
    for _ in 0..40 {
        if sink.write_logged(BatchKind::Logs, &line).is_err() {
            failed += 1;
        }
    }
    assert!(failed > 0, "the disk never filled");
    assert_eq!(sink.failures(), failed);
    std::fs::remove_file(&filler).unwrap();
    sink.write_logged(BatchKind::Logs, &line).unwrap();
    for f in std::fs::read_dir(&otlp).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        for l in text.lines() {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("a partial line: {e}"));
        }
    }
}
