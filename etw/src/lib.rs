//! Windows sensor of custos: ETW kernel providers decoded into custos events.
//!
//! - [`record`]: the small record shape decoding works on, filled by the
//!   ferrisetw callback on Windows and by fixtures in tests.
//! - [`decode`]: records to [`custos_event::Event`]s, pure and bounded.
//! - [`scope`]: which managed Windows service a pid belongs to, by process tree.
//! - `session` (Windows only): the named ETW sessions and their lifecycle.

pub mod cmdline;
pub mod decode;
pub mod providers;
pub mod record;
pub mod scope;
pub mod winerr;

#[cfg(any(windows, custos_windows_typecheck))]
pub mod session;

pub use decode::{DecodeStats, Decoded, Decoder, DecoderConfig, ExistingProcess};
pub use record::{Guid, Record, Value};
pub use scope::{ProcessTree, ServiceScope};
