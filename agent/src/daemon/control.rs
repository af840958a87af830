//! The local control socket: line-delimited JSON, one request and one
//! response per line, over a Unix stream socket that only root (or the
//! agent's own user) can reach — the directory is 0700, the socket 0600,
//! and the server also checks the peer's uid.

use super::status::StatusSnapshot;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where the agent listens by default (systemd's `RuntimeDirectory=custos`).
pub const DEFAULT_SOCKET: &str = "/run/custos/control.sock";
/// Overrides the socket path for `custos run` and `custos status`.
pub const SOCKET_ENV: &str = "CUSTOS_CONTROL_SOCKET";

/// The socket path: the flag, else `CUSTOS_CONTROL_SOCKET`, else the default.
pub fn socket_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os(SOCKET_ENV).filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// A request on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Ping,
    Status,
    /// The same as SIGHUP.
    Reload,
    /// Maintenance: the service's runbooks decide and audit, and act on
    /// nothing, for `for_secs` (or until `resume`).
    Pause {
        service: String,
        #[serde(default)]
        for_secs: Option<u64>,
    },
    /// Ends a pause.
    Resume {
        service: String,
    },
    /// The last `limit` runbook actions of the whole host, newest first.
    Actions {
        limit: usize,
    },
}

/// A response on the control socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Pong {
        version: String,
    },
    Status {
        status: Box<StatusSnapshot>,
    },
    /// `notes`: what the reload could not apply at once (settings that
    /// take effect at the next restart), by key.
    Reloaded {
        ok: bool,
        error: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        notes: Vec<String>,
    },
    /// `until`: seconds since the Unix epoch; `None` until `resume`.
    Paused {
        service: String,
        until: Option<u64>,
    },
    Resumed {
        service: String,
        was_paused: bool,
    },
    Actions {
        actions: Vec<super::status::ActionRecord>,
    },
    Error {
        error: String,
    },
}

/// Answers requests; implemented by the daemon.
pub trait ControlHandler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> impl std::future::Future<Output = Response> + Send;
}

/// Errors of `custos status` and other clients.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("custos is not running (no agent listening on {0})")]
    NotRunning(PathBuf),
    #[error("permission denied on {0}: the control socket is root-only")]
    PermissionDenied(PathBuf),
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("control socket {path}: unexpected answer: {detail}")]
    Protocol { path: PathBuf, detail: String },
}

/// Sends one request and waits (bounded) for its response.
#[cfg(unix)]
pub fn request(path: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    let io_err = |source: io::Error| ClientError::Io { path: path.to_path_buf(), source };
    let mut stream = UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning(path.to_path_buf())
        }
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(path.to_path_buf()),
        _ => io_err(e),
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    let mut line = serde_json::to_string(req).map_err(|e| io_err(io::Error::other(e)))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io_err)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io_err)?;
    if answer.is_empty() {
        return Err(ClientError::Protocol { path: path.to_path_buf(), detail: "connection closed".into() });
    }
    serde_json::from_str(&answer)
        .map_err(|e| ClientError::Protocol { path: path.to_path_buf(), detail: e.to_string() })
}

/// Longest request line accepted; requests are tiny.
const MAX_REQUEST: usize = 64 * 1024;
/// Control connections served at once; beyond, a new one is closed.
pub const MAX_CONTROL_CONNECTIONS: usize = 16;

/// A bound control socket, removed again when dropped.
#[cfg(unix)]
pub struct ControlServer {
    listener: tokio::net::UnixListener,
    path: PathBuf,
    /// The directory, when this server created it (removed again if empty).
    created_dir: Option<PathBuf>,
}

#[cfg(unix)]
impl ControlServer {
    /// Binds the socket: creates its directory (0700) if missing, replaces a
    /// stale socket file, refuses when another agent answers on it.
    /// Needs a tokio runtime.
    pub fn bind(path: &Path) -> io::Result<ControlServer> {
        use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
        let mut created_dir = None;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
                created_dir = Some(dir.to_path_buf());
            }
        }
        if let Ok(md) = std::fs::symlink_metadata(path) {
            if !md.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another custos agent is listening on {}", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        // The 0700 directory already keeps others out; the socket's own mode
        // closes the window for directories that were not ours to create.
        // SAFETY: umask has no preconditions; it is restored right after bind.
        let old = unsafe { libc::umask(0o177) };
        let bound = tokio::net::UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = bound?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(ControlServer { listener, path: path.to_path_buf(), created_dir })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections until the task is aborted or dropped.
    /// At most [`MAX_CONTROL_CONNECTIONS`] at once.
    pub async fn serve<H: ControlHandler>(self, handler: Arc<H>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONTROL_CONNECTIONS));
        loop {
            let (stream, _) = match self.listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "Control socket accept failed.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!("Control connection refused: too many at once.");
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let _slot = slot;
                if let Err(e) = serve_one(stream, handler).await {
                    tracing::debug!(error = %e, "Control connection ended with an error.");
                }
            });
        }
    }
}

#[cfg(unix)]
impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(dir) = &self.created_dir {
            // Only succeeds when empty: never takes anything else with it.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[cfg(unix)]
async fn serve_one<H: ControlHandler>(stream: tokio::net::UnixStream, handler: Arc<H>) -> io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let peer = stream.peer_cred()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let (read, mut write) = stream.into_split();
    if peer.uid() != 0 && peer.uid() != me {
        let r = Response::Error { error: format!("uid {} may not use the control socket", peer.uid()) };
        write.write_all(format!("{}\n", serde_json::to_string(&r)?).as_bytes()).await?;
        return Ok(());
    }
    let mut lines = BufReader::new(read.take(MAX_REQUEST as u64 * 16));
    let mut line = String::new();
    loop {
        line.clear();
        let n = tokio::time::timeout(Duration::from_secs(30), lines.read_line(&mut line))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "idle control connection"))??;
        if n == 0 {
            return Ok(());
        }
        let response = if line.len() > MAX_REQUEST {
            Response::Error { error: "request too long".into() }
        } else {
            match serde_json::from_str::<Request>(line.trim()) {
                Ok(req) => handler.handle(req).await,
                Err(e) => Response::Error { error: format!("invalid request: {e}") },
            }
        };
        let mut out = serde_json::to_string(&response)?;
        out.push('\n');
        write.write_all(out.as_bytes()).await?;
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct Fixed;
    impl ControlHandler for Fixed {
        async fn handle(&self, request: Request) -> Response {
            match request {
                Request::Ping => Response::Pong { version: "t".into() },
                Request::Status => Response::Status {
                    status: Box::new(StatusSnapshot { version: "t".into(), pid: 7, ..Default::default() }),
                },
                Request::Reload => {
                    Response::Reloaded { ok: false, error: Some("x:1:2: bad".into()), notes: vec![] }
                }
                Request::Pause { service, for_secs } => {
                    Response::Paused { service, until: for_secs.map(|s| 1_700_000_000 + s) }
                }
                Request::Resume { service } => Response::Resumed { service, was_paused: true },
                Request::Actions { limit } => Response::Actions { actions: vec![Default::default(); limit] },
            }
        }
    }

    #[test]
    fn request_and_response_json_shapes() {
        assert_eq!(serde_json::to_string(&Request::Status).unwrap(), r#"{"cmd":"status"}"#);
        assert_eq!(serde_json::from_str::<Request>(r#"{"cmd":"reload"}"#).unwrap(), Request::Reload);
        let r = Response::Reloaded { ok: true, error: None, notes: vec![] };
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"result":"reloaded","ok":true,"error":null}"#);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"pause","service":"api","for_secs":600}"#).unwrap(),
            Request::Pause { service: "api".into(), for_secs: Some(600) }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"pause","service":"api"}"#).unwrap(),
            Request::Pause { service: "api".into(), for_secs: None }
        );
        assert_eq!(
            serde_json::to_string(&Request::Resume { service: "api".into() }).unwrap(),
            r#"{"cmd":"resume","service":"api"}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Actions { limit: 50 }).unwrap(),
            r#"{"cmd":"actions","limit":50}"#
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn round_trip_over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/custos/control.sock");
        let server = ControlServer::bind(&path).unwrap();
        let dir_mode = std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777;
        let sock_mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!((dir_mode, sock_mode), (0o700, 0o600));
        let task = tokio::spawn(server.serve(Arc::new(Fixed)));
        let p = path.clone();
        let (status, reload, ping) = tokio::task::spawn_blocking(move || {
            let t = Duration::from_secs(5);
            (
                request(&p, &Request::Status, t),
                request(&p, &Request::Reload, t),
                request(&p, &Request::Ping, t),
            )
        })
        .await
        .unwrap();
        match status.unwrap() {
            Response::Status { status } => assert_eq!((status.version.as_str(), status.pid), ("t", 7)),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            reload.unwrap(),
            Response::Reloaded { ok: false, error: Some("x:1:2: bad".into()), notes: vec![] }
        );
        assert_eq!(ping.unwrap(), Response::Pong { version: "t".into() });

        // A second agent must not steal the socket of a live one.
        let err = ControlServer::bind(&path).err().expect("second bind succeeded");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        task.abort();
        let _ = task.await;
        assert!(!path.exists(), "socket left behind after the server ended");
        assert!(!path.parent().unwrap().exists(), "directory it created left behind");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_request_gets_an_error_answer() {
        use std::io::{BufRead, BufReader, Write};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let task = tokio::spawn(ControlServer::bind(&path).unwrap().serve(Arc::new(Fixed)));
        let p = path.clone();
        let answer = tokio::task::spawn_blocking(move || {
            let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"{\"cmd\":\"explode\"}\n").unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            line
        })
        .await
        .unwrap();
        let r: Response = serde_json::from_str(&answer).unwrap();
        assert!(matches!(r, Response::Error { ref error } if error.contains("invalid request")), "{r:?}");
        task.abort();
    }

    #[test]
    fn stale_socket_is_replaced_and_absent_agent_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        // A socket file nobody listens on, as a crashed agent leaves behind.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        match request(&path, &Request::Status, Duration::from_secs(1)) {
            Err(ClientError::NotRunning(_)) => {}
            other => panic!("expected NotRunning, got {other:?}"),
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let server = ControlServer::bind(&path).unwrap();
            assert_eq!(server.path(), path);
        });
        match request(&dir.path().join("absent.sock"), &Request::Status, Duration::from_secs(1)) {
            Err(e @ ClientError::NotRunning(_)) => {
                assert!(e.to_string().starts_with("custos is not running"))
            }
            other => panic!("expected NotRunning, got {other:?}"),
        }
    }
}
