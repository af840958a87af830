//! Logging to the Windows Event Log when custos runs as a service.
//!
//! [`EventLogLayer`] is a `tracing` layer that formats each event into one
//! Event Log message and hands it to an [`EventLogWriter`]; the Windows
//! writer ([`EventSource`]) calls `ReportEventW` with the source `custos
//! install` registered. The layer is pure and tested on every platform.

use std::fmt::Write as _;
use tracing::field::{Field, Visit};
use tracing::{Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Event Log entry types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    Error,
    Warning,
    Information,
}

impl EntryType {
    /// `EVENTLOG_ERROR_TYPE`, `EVENTLOG_WARNING_TYPE`, `EVENTLOG_INFORMATION_TYPE`.
    pub fn code(self) -> u16 {
        match self {
            EntryType::Error => 0x1,
            EntryType::Warning => 0x2,
            EntryType::Information => 0x4,
        }
    }

    /// Event ids within EventCreate.exe's message table (1..=1000), one per
    /// type so that Event Viewer filters can tell them apart.
    pub fn event_id(self) -> u32 {
        match self {
            EntryType::Error => 1,
            EntryType::Warning => 2,
            EntryType::Information => 3,
        }
    }

    pub fn of_level(level: &Level) -> Self {
        match *level {
            Level::ERROR => EntryType::Error,
            Level::WARN => EntryType::Warning,
            _ => EntryType::Information,
        }
    }
}

/// Where formatted entries go.
pub trait EventLogWriter: Send + Sync + 'static {
    fn write(&self, entry: EntryType, message: &str);
}

/// A writer that writes nothing until it is armed with a real one: the
/// layer goes into the subscriber when logging starts, before custos knows
/// whether the SCM started it; the service host arms it once it does, so a
/// console run never writes to the Event Log.
pub struct Deferred<W>(std::sync::Arc<std::sync::OnceLock<W>>);

impl<W> Clone for Deferred<W> {
    fn clone(&self) -> Self {
        Deferred(self.0.clone())
    }
}

impl<W> Default for Deferred<W> {
    fn default() -> Self {
        Deferred(Default::default())
    }
}

impl<W> Deferred<W> {
    /// From now on entries go to `writer`. False when already armed.
    pub fn arm(&self, writer: W) -> bool {
        self.0.set(writer).is_ok()
    }
}

impl<W: EventLogWriter> EventLogWriter for Deferred<W> {
    fn write(&self, entry: EntryType, message: &str) {
        if let Some(w) = self.0.get() {
            w.write(entry, message);
        }
    }
}

/// The Event Log takes at most 31,839 characters per string; keep well under.
pub const MAX_MESSAGE_BYTES: usize = 31_000;

/// A `tracing` layer writing every event it sees to an [`EventLogWriter`].
/// Filtering (levels) is the subscriber's job, as for the stderr layer.
pub struct EventLogLayer<W> {
    writer: W,
}

impl<W: EventLogWriter> EventLogLayer<W> {
    pub fn new(writer: W) -> Self {
        EventLogLayer { writer }
    }
}

#[derive(Default)]
struct MessageVisitor {
    message: String,
    fields: String,
}

impl Visit for MessageVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={}", field.name(), quote_if_needed(value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

fn quote_if_needed(v: &str) -> String {
    if v.is_empty() || v.contains([' ', '"', '=']) {
        format!("{v:?}")
    } else {
        v.to_string()
    }
}

/// One entry's text: the sentence, then `key=value` fields, then the target.
pub fn format_message(message: &str, fields: &str, target: &str) -> String {
    let mut s = String::with_capacity(message.len() + fields.len() + target.len() + 16);
    s.push_str(message);
    s.push_str(fields);
    let _ = write!(s, " [{target}]");
    if s.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str(" (cut)");
    }
    s
}

impl<S: Subscriber, W: EventLogWriter> Layer<S> for EventLogLayer<W> {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut v = MessageVisitor::default();
        event.record(&mut v);
        let meta = event.metadata();
        self.writer
            .write(EntryType::of_level(meta.level()), &format_message(&v.message, &v.fields, meta.target()));
    }
}

/// The Event Log source registered by `custos install` (Windows only).
#[cfg(any(windows, custos_windows_typecheck))]
pub struct EventSource {
    handle: windows_sys::Win32::Foundation::HANDLE,
}

// SAFETY: an event source handle may be used from any thread; ReportEventW
// is thread-safe.
#[cfg(any(windows, custos_windows_typecheck))]
unsafe impl Send for EventSource {}
#[cfg(any(windows, custos_windows_typecheck))]
unsafe impl Sync for EventSource {}

#[cfg(any(windows, custos_windows_typecheck))]
impl EventSource {
    /// Opens the source `name` on the local machine.
    pub fn open(name: &str) -> std::io::Result<Self> {
        let wide = super::ffi::wide(name);
        // SAFETY: `wide` is NUL-terminated and lives across the call.
        let handle = unsafe {
            windows_sys::Win32::System::EventLog::RegisterEventSourceW(std::ptr::null(), wide.as_ptr())
        };
        if handle.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        Ok(EventSource { handle })
    }
}

/// The layer custos installs on Windows, and the handle that arms it when
/// custos runs as a service: entries then go to the Event Log source
/// `custos install` registered under the service's name (see
/// [`arm_service_log`]).
#[cfg(any(windows, custos_windows_typecheck))]
pub fn service_layer() -> (EventLogLayer<Deferred<EventSource>>, Deferred<EventSource>) {
    let deferred = Deferred::default();
    (EventLogLayer::new(deferred.clone()), deferred)
}

/// Arms the service layer: opens the source `service_name`.
#[cfg(any(windows, custos_windows_typecheck))]
pub fn arm_service_log(deferred: &Deferred<EventSource>, service_name: &str) -> std::io::Result<()> {
    deferred.arm(EventSource::open(service_name)?);
    Ok(())
}

#[cfg(any(windows, custos_windows_typecheck))]
impl EventLogWriter for EventSource {
    fn write(&self, entry: EntryType, message: &str) {
        let wide = super::ffi::wide(message);
        let strings = [wide.as_ptr()];
        // SAFETY: the handle is open until drop; `strings` holds one
        // NUL-terminated string alive across the call.
        unsafe {
            windows_sys::Win32::System::EventLog::ReportEventW(
                self.handle,
                entry.code(),
                0,
                entry.event_id(),
                std::ptr::null_mut(),
                1,
                0,
                strings.as_ptr(),
                std::ptr::null(),
            );
        }
    }
}

#[cfg(any(windows, custos_windows_typecheck))]
impl Drop for EventSource {
    fn drop(&mut self) {
        // SAFETY: the handle came from RegisterEventSourceW and is closed once.
        unsafe {
            windows_sys::Win32::System::EventLog::DeregisterEventSource(self.handle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<(EntryType, String)>>>);

    impl EventLogWriter for Captured {
        fn write(&self, entry: EntryType, message: &str) {
            self.0.lock().unwrap().push((entry, message.to_string()));
        }
    }

    #[test]
    fn events_become_entries_of_the_matching_type_with_fields() {
        let cap = Captured::default();
        let subscriber = tracing_subscriber::registry().with(EventLogLayer::new(cap.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(service = %"api", lost = 3, "Ring buffer dropped events.");
            tracing::error!(path = "C:\\Program Files\\x", "Cannot read the configuration.");
            tracing::info!("Started.");
            tracing::debug!("Details.");
        });
        let got = cap.0.lock().unwrap().clone();
        let target = module_path!();
        assert_eq!(
            got,
            [
                (EntryType::Warning, format!("Ring buffer dropped events. service=api lost=3 [{target}]")),
                (
                    EntryType::Error,
                    format!(r#"Cannot read the configuration. path="C:\\Program Files\\x" [{target}]"#)
                ),
                (EntryType::Information, format!("Started. [{target}]")),
                (EntryType::Information, format!("Details. [{target}]")),
            ]
        );
    }

    #[test]
    fn a_deferred_writer_writes_only_once_armed() {
        let cap = Captured::default();
        let deferred = Deferred::default();
        let subscriber = tracing_subscriber::registry().with(EventLogLayer::new(deferred.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!("Before the service host knew.");
            assert!(deferred.arm(cap.clone()));
            assert!(!deferred.arm(cap.clone()), "armed once");
            tracing::warn!("Under the SCM.");
        });
        let got: Vec<String> = cap.0.lock().unwrap().iter().map(|(_, m)| m.clone()).collect();
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("Under the SCM."), "{got:?}");
    }

    #[test]
    fn entry_codes_are_the_win32_values() {
        assert_eq!(EntryType::Error.code(), 1);
        assert_eq!(EntryType::Warning.code(), 2);
        assert_eq!(EntryType::Information.code(), 4);
        assert!([EntryType::Error, EntryType::Warning, EntryType::Information]
            .iter()
            .all(|e| (1..=1000).contains(&e.event_id())));
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let m = format_message(&long, "", "t");
        assert!(m.len() <= MAX_MESSAGE_BYTES + 6);
        assert!(m.ends_with(" (cut)"));
    }
}
