//! Platform-specific code, gated at module level.

#[cfg(target_os = "linux")]
pub mod linux;
