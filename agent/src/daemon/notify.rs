//! The systemd notification protocol (`sd_notify(3)`): newline-separated
//! `KEY=value` assignments in one datagram to the Unix socket named by
//! `NOTIFY_SOCKET`, which may be a path or an abstract name (`@name`).
//!
//! Without `NOTIFY_SOCKET` (not started by systemd, or `Type=` without
//! notification) every call is a no-op, so callers never need to check.

use std::io;
use std::path::PathBuf;

/// One assignment in a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyState {
    /// Start-up (or a reload) is finished.
    Ready,
    /// A reload began; `READY=1` ends it. Carries the `MONOTONIC_USEC` that
    /// systemd 253+ requires with `Type=notify-reload` and older ones ignore.
    Reloading { monotonic_usec: u64 },
    /// The service is stopping.
    Stopping,
    /// Keep-alive for `WatchdogSec=`.
    Watchdog,
    /// One line shown by `systemctl status`.
    Status(String),
    /// The main PID, when it is not the sender.
    MainPid(u32),
}

impl NotifyState {
    fn write_to(&self, out: &mut String) {
        match self {
            NotifyState::Ready => out.push_str("READY=1"),
            NotifyState::Reloading { monotonic_usec } => {
                out.push_str("RELOADING=1\nMONOTONIC_USEC=");
                out.push_str(&monotonic_usec.to_string());
            }
            NotifyState::Stopping => out.push_str("STOPPING=1"),
            NotifyState::Watchdog => out.push_str("WATCHDOG=1"),
            NotifyState::Status(s) => {
                out.push_str("STATUS=");
                // A newline would start a new assignment: the protocol has no
                // escaping, so a multi-line status is folded into one line.
                out.extend(s.chars().map(|c| if c == '\n' { ' ' } else { c }));
            }
            NotifyState::MainPid(pid) => {
                out.push_str("MAINPID=");
                out.push_str(&pid.to_string());
            }
        }
    }
}

/// The datagram for a set of assignments.
pub fn format_message(states: &[NotifyState]) -> String {
    let mut out = String::new();
    for (i, s) in states.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        s.write_to(&mut out);
    }
    out
}

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyAddr {
    Path(PathBuf),
    /// Linux abstract socket name, without the leading `@`/NUL.
    Abstract(Vec<u8>),
}

impl NotifyAddr {
    /// Parses a `NOTIFY_SOCKET` value: `/path`, or `@name` for an abstract socket.
    pub fn parse(value: &str) -> Option<NotifyAddr> {
        if let Some(name) = value.strip_prefix('@') {
            (!name.is_empty()).then(|| NotifyAddr::Abstract(name.as_bytes().to_vec()))
        } else if value.starts_with('/') {
            Some(NotifyAddr::Path(PathBuf::from(value)))
        } else {
            // `vsock:` addresses (VMs) are not for a host agent.
            None
        }
    }
}

/// A sender of notifications to the service manager.
#[derive(Debug, Clone)]
pub struct Notifier {
    addr: Option<NotifyAddr>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`. The variable is left in place: children that
    /// runbooks start go through `exec`, which clears the environment.
    pub fn from_env() -> Notifier {
        let addr = std::env::var("NOTIFY_SOCKET").ok().and_then(|v| NotifyAddr::parse(&v));
        Notifier { addr }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier { addr: None }
    }

    pub fn to_addr(addr: NotifyAddr) -> Notifier {
        Notifier { addr: Some(addr) }
    }

    pub fn is_enabled(&self) -> bool {
        self.addr.is_some()
    }

    /// Sends the assignments in one datagram. Ok and nothing sent when disabled.
    pub fn notify(&self, states: &[NotifyState]) -> io::Result<()> {
        let Some(addr) = &self.addr else { return Ok(()) };
        send(addr, format_message(states).as_bytes())
    }

    /// Like `notify`, logging a failure instead of returning it: losing one
    /// notification must not stop the agent (the watchdog catches real hangs).
    pub fn notify_logged(&self, states: &[NotifyState]) {
        if let Err(e) = self.notify(states) {
            tracing::warn!(error = %e, "Could not notify the service manager.");
        }
    }
}

#[cfg(unix)]
fn send(addr: &NotifyAddr, message: &[u8]) -> io::Result<()> {
    use std::os::unix::net::UnixDatagram;
    let sock = UnixDatagram::unbound()?;
    match addr {
        NotifyAddr::Path(p) => sock.send_to(message, p)?,
        #[cfg(any(target_os = "linux", target_os = "android"))]
        NotifyAddr::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            let a = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(message, &a)?
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        NotifyAddr::Abstract(_) => {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "abstract sockets are Linux-only"))
        }
    };
    Ok(())
}

#[cfg(not(unix))]
fn send(_addr: &NotifyAddr, _message: &[u8]) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "sd_notify needs Unix sockets"))
}

/// `CLOCK_MONOTONIC` in microseconds, as `RELOADING=1` wants it.
pub fn monotonic_usec() -> u64 {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: ts is a valid, writable timespec; CLOCK_MONOTONIC always exists.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
    }
    #[cfg(not(unix))]
    {
        0
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;

    #[test]
    fn formats_assignments_one_per_line() {
        let m = format_message(&[
            NotifyState::Ready,
            NotifyState::Status("12 events/s\n0 drops".into()),
            NotifyState::Watchdog,
        ]);
        assert_eq!(m, "READY=1\nSTATUS=12 events/s 0 drops\nWATCHDOG=1");
        assert_eq!(
            format_message(&[NotifyState::Reloading { monotonic_usec: 42 }]),
            "RELOADING=1\nMONOTONIC_USEC=42"
        );
        assert_eq!(
            format_message(&[NotifyState::Stopping, NotifyState::MainPid(7)]),
            "STOPPING=1\nMAINPID=7"
        );
    }

    #[test]
    fn parses_notify_socket_values() {
        assert_eq!(
            NotifyAddr::parse("/run/systemd/notify"),
            Some(NotifyAddr::Path("/run/systemd/notify".into()))
        );
        assert_eq!(NotifyAddr::parse("@abc"), Some(NotifyAddr::Abstract(b"abc".to_vec())));
        assert_eq!(NotifyAddr::parse("@"), None);
        assert_eq!(NotifyAddr::parse("vsock:2:1234"), None);
        assert_eq!(NotifyAddr::parse(""), None);
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::to_addr(NotifyAddr::Path(path));
        n.notify(&[NotifyState::Ready, NotifyState::Status("up".into())]).unwrap();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=up");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("custos-test-notify-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::to_addr(NotifyAddr::parse(&format!("@{name}")).unwrap());
        n.notify(&[NotifyState::Watchdog]).unwrap();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn disabled_notifier_sends_nothing_and_succeeds() {
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        n.notify(&[NotifyState::Ready]).unwrap();
    }

    #[test]
    fn missing_socket_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let n = Notifier::to_addr(NotifyAddr::Path(dir.path().join("absent")));
        assert!(n.notify(&[NotifyState::Ready]).is_err());
    }
}
