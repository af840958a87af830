//! Platform modules: the code that talks to one operating system's service
//! manager, logging and sensor.
//!
//! `windows` is declared on every platform: its pure parts (SCM recovery
//! encoding, status reporting rules, the install plan, Event Log message
//! formatting) are tested everywhere, while its FFI submodules are gated
//! `#[cfg(any(windows, custos_windows_typecheck))]` inside it. `linux`
//! (systemd over D-Bus) is gated at module level.

#[cfg(target_os = "linux")]
pub mod linux;
pub mod windows;
