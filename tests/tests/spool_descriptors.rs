//! Out of file descriptors while the spool is read (a local user holding
//! connections to `/metrics`, EMFILE): the batches stay, none is deleted,
//! and they are read once descriptors are back. Alone in its binary: it
//! lowers the process's descriptor limit.
#![cfg(unix)]

use custos::export::{AgentStats, Batch, BatchKind, Spool};
use std::sync::Arc;

#[test]
fn emfile_during_spool_reads_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let stats = Arc::new(AgentStats::default());
    let mut spool = Spool::open(dir.path(), 1 << 20, stats.clone()).unwrap();
    for i in 1..=3u8 {
        spool.push(&Batch { kind: BatchKind::Logs, records: i as u64, payload: vec![i; 100] }).unwrap();
    }
    let files = || std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(files(), 3);

    // Use up every descriptor the limit allows.
    let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid pointer to an rlimit.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
    let low = libc::rlimit { rlim_cur: 64, rlim_max: old.rlim_max };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
    let mut held = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        held.push(f);
    }
    let mut errors = Vec::new();
    for _ in 0..5 {
        match spool.oldest() {
            Some(Err(e)) => errors.push(e),
            other => panic!("expected a read error, got {other:?}"),
        }
    }
    drop(held);
    // SAFETY: restores the limit read above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) }, 0);
    assert!(errors.iter().all(|e| e.is_transient()), "{errors:?}");
    assert!(errors[0].to_string().contains("Too many open files"), "{}", errors[0]);
    assert_eq!(files(), 3, "no batch was deleted or set aside");
    assert_eq!(spool.len(), 3);
    assert_eq!(stats.snapshot().spool_read_errors, 5);
    let mut got = Vec::new();
    while let Some(r) = spool.oldest() {
        let (seq, b) = r.unwrap();
        got.push(b.records);
        spool.remove(seq);
    }
    assert_eq!(got, vec![1, 2, 3], "every batch is read once descriptors are back");
}
