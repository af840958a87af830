//! custos on Windows: the Service Control Manager (acting on services,
//! installing custos itself with recovery actions), running as a service
//! (dispatcher, control handler, status reports; `app::windows_host` runs
//! the agent in it), the Event Log, and the ETW sensor with service scoping.
//!
//! Pure modules (`plan`, `status`, `eventlog`'s layer) build on every
//! platform and are unit-tested on Linux; the FFI modules are compiled only
//! on Windows, or on Linux with `RUSTFLAGS="--cfg custos_windows_typecheck"`
//! to type-check them (they cannot link there).
//!
//! kernel ETW sessions need LocalSystem (or an administrator): `custos
//! install` creates the service under LocalSystem for that reason.

pub mod discover;
pub mod eventlog;
pub mod plan;
pub mod status;

#[cfg(any(windows, custos_windows_typecheck))]
mod ffi;
#[cfg(any(windows, custos_windows_typecheck))]
pub mod install;
#[cfg(any(windows, custos_windows_typecheck))]
pub mod scm;
#[cfg(any(windows, custos_windows_typecheck))]
pub mod sensor;
#[cfg(any(windows, custos_windows_typecheck))]
pub mod service;
