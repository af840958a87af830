//! The systemd sandbox harness itself: boots, runs units with real cgroups,
//! leaves the host's /tmp alone, and disappears on drop.

use custos_tests::systemd;
use std::time::{Duration, Instant};

#[test]
fn sandbox_boots_runs_a_unit_and_spares_host_tmp() {
    let marker = tempfile::NamedTempFile::new_in("/tmp").expect("host /tmp marker");
    let Some(sd) = systemd::sandbox_or_skip("sandbox_boots_runs_a_unit_and_spares_host_tmp") else {
        return;
    };
    let pid = sd.pid();
    sd.write_unit("sleeper.service", "[Service]\nExecStart=/bin/sleep 1000\n").unwrap();
    sd.systemctl(&["start", "sleeper.service"]).unwrap();
    assert_eq!(sd.property("sleeper.service", "ActiveState").unwrap(), "active");
    let main_pid: u32 = sd.property("sleeper.service", "MainPID").unwrap().parse().unwrap();
    assert!(main_pid > 1, "main pid inside the namespace: {main_pid}");
    assert_eq!(sd.property("sleeper.service", "ControlGroup").unwrap(), "/system.slice/sleeper.service");
    assert!(sd.private_socket().exists(), "{} missing", sd.private_socket().display());
    drop(sd);
    assert!(marker.path().exists(), "the sandbox emptied the host's /tmp");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "sandbox pid {pid} survived drop");
        std::thread::sleep(Duration::from_millis(20));
    }
}
