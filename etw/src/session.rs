//! The ETW sessions of the sensor (Windows only; type-checked on Linux with
//! `--cfg custos_windows_typecheck`).
//!
//! Two real-time sessions, both named so that a custos that crashed and left
//! them running is cleaned up by the next one:
//!
//! - `<name>-kernel`, a system logger session (Windows 8 and later) with the
//!   kernel's process events: the only source of a process's command line
//!   and exit status together. Its rundown of existing processes seeds the
//!   process tree used for scoping.
//! - `<name>`, a user session with Microsoft-Windows-Kernel-Network (TCP
//!   connections with their bytes) and events 1002 and 1034 of
//!   Microsoft-Windows-TCPIP (connect requested, for latency; connect
//!   failed), filtered to those two events in the kernel.
//!
//! Both need LocalSystem (or Administrators plus "Performance Log Users").
//! Per-syscall rates are not collected: the kernel logger's
//! `EVENT_TRACE_FLAG_SYSTEMCALL` emits one event per system call with no
//! process id (only a thread id to map), which costs more CPU than every
//! other source together on a busy host (see etw/README.md).
//!
//! Every record is turned into a [`Record`] with just the properties
//! [`providers::fields`] names and handed to the pure [`Decoder`].

use crate::decode::{DecodeStats, Decoded, Decoder, DecoderConfig, ExistingProcess};
use crate::providers;
use crate::record::{FieldType, Guid, Record, Value};
use custos_event::Event;
use ferrisetw::parser::Parser;
use ferrisetw::provider::{EventFilter, Provider};
use ferrisetw::trace::{stop_trace_by_name, TraceProperties, TraceTrait};
use ferrisetw::{EventRecord, KernelTrace, SchemaLocator, UserTrace, GUID};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Default base name of the sessions.
pub const DEFAULT_SESSION_NAME: &str = "custos-sensor";

/// Where the sensor's output goes. Called on ETW's processing threads: must
/// not block (queue with `try_send` and report a full queue as `false`).
pub trait SensorSink: Send + Sync + 'static {
    /// Queues an event; `false` when it had to be dropped.
    fn event(&self, event: Event) -> bool;
    /// A process that existed before the session started (for scoping).
    fn existing_process(&self, process: ExistingProcess);
}

/// What the sensor watches.
#[derive(Debug, Clone)]
pub struct SensorConfig {
    /// Base name of the sessions (`<name>` and `<name>-kernel`).
    pub session_name: String,
    pub process: bool,
    pub tcp: bool,
    pub decoder: DecoderConfig,
    /// How often ETW's own loss counters are read.
    pub loss_poll: Duration,
    /// Size of each ETW buffer in KiB.
    pub buffer_kib: u32,
}

impl Default for SensorConfig {
    fn default() -> Self {
        SensorConfig {
            session_name: DEFAULT_SESSION_NAME.to_string(),
            process: true,
            tcp: true,
            decoder: DecoderConfig::default(),
            loss_poll: Duration::from_secs(1),
            buffer_kib: 64,
        }
    }
}

/// Why the sensor could not start.
#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error("cannot start the ETW session `{session}`: {detail} (custos must run as LocalSystem or an administrator)")]
    Start { session: String, detail: String },
    #[error("no ETW source is enabled: enable `sensors.process` or `sensors.tcp`")]
    NothingEnabled,
}

/// Counters of the sensor, monotonic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SensorCounters {
    pub decode: DecodeStats,
    /// Events dropped because the sink was full.
    pub channel_dropped: u64,
    /// Events (or whole buffers) ETW reported lost. No `loss` event is put
    /// into the stream for them: the consumer marks the gap from this.
    pub platform_lost: u64,
}

struct Shared {
    decoder: Mutex<Decoder>,
    sink: Box<dyn SensorSink>,
    channel_dropped: AtomicU64,
    platform_lost: AtomicU64,
}

impl Shared {
    fn emit(&self, event: Event) {
        if !self.sink.event(event) {
            self.channel_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_record(&self, rec: &EventRecord, locator: &SchemaLocator) {
        let provider = Guid(rec.provider_id().to_u128());
        let mut props = BTreeMap::new();
        if let Some(fields) = providers::fields(provider, rec.event_id(), rec.opcode()) {
            // A schema that cannot be found leaves the properties empty: the
            // decoder then counts the record as truncated.
            if let Ok(schema) = locator.event_schema(rec) {
                let parser = Parser::create(rec, &schema);
                for &(name, ty) in fields {
                    let value = match ty {
                        FieldType::U16 => parser.try_parse::<u16>(name).ok().map(Value::U16),
                        FieldType::U32 => parser.try_parse::<u32>(name).ok().map(Value::U32),
                        FieldType::U64 => parser.try_parse::<u64>(name).ok().map(Value::U64),
                        FieldType::I32 => parser.try_parse::<i32>(name).ok().map(Value::I32),
                        FieldType::Str => parser.try_parse::<String>(name).ok().map(Value::Str),
                        FieldType::Bytes => parser.try_parse::<Vec<u8>>(name).ok().map(Value::Bytes),
                    };
                    if let Some(v) = value {
                        props.insert(std::borrow::Cow::Borrowed(name), v);
                    }
                }
            }
        }
        let record = Record {
            provider,
            event_id: rec.event_id(),
            opcode: rec.opcode(),
            version: rec.version(),
            pid: rec.process_id(),
            tid: rec.thread_id(),
            filetime: rec.raw_timestamp(),
            props,
        };
        let decoded = match self.decoder.lock() {
            Ok(mut d) => d.decode(&record),
            Err(poisoned) => poisoned.into_inner().decode(&record),
        };
        match decoded {
            Some(Decoded::Event(e)) => self.emit(*e),
            Some(Decoded::Existing(p)) => self.sink.existing_process(p),
            Some(Decoded::Updated) | None => {}
        }
    }
}

/// The running sensor. Dropping it (or [`EtwSensor::stop`]) stops both
/// sessions and waits for their threads.
pub struct EtwSensor {
    shared: Arc<Shared>,
    user: Option<UserTrace>,
    kernel: Option<KernelTrace>,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    names: Vec<String>,
}

fn to_guid(g: Guid) -> GUID {
    GUID::from_u128(g.0)
}

/// Stops a session left running by a custos that did not shut down; ETW
/// sessions outlive their process. Returns whether there was one.
pub fn stop_leftover_session(name: &str) -> bool {
    match stop_trace_by_name(name) {
        Ok(()) => {
            tracing::warn!(session = %name, "Stopped an ETW session left behind by a previous custos.");
            true
        }
        // Not found is the normal case.
        Err(_) => false,
    }
}

impl EtwSensor {
    /// Starts the sessions `config` asks for, sending events to `sink`.
    pub fn start(config: SensorConfig, sink: impl SensorSink) -> Result<Self, SensorError> {
        if !config.process && !config.tcp {
            return Err(SensorError::NothingEnabled);
        }
        let shared = Arc::new(Shared {
            decoder: Mutex::new(Decoder::new(config.decoder)),
            sink: Box::new(sink),
            channel_dropped: AtomicU64::new(0),
            platform_lost: AtomicU64::new(0),
        });
        let props = TraceProperties {
            buffer_size: config.buffer_kib,
            flush_timer: Duration::from_secs(1),
            ..TraceProperties::default()
        };
        let mut sensor = EtwSensor {
            shared: shared.clone(),
            user: None,
            kernel: None,
            threads: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            names: Vec::new(),
        };

        if config.process {
            let name = format!("{}-kernel", config.session_name);
            stop_leftover_session(&name);
            let s = shared.clone();
            let provider = Provider::kernel(&ferrisetw::provider::kernel_providers::PROCESS_PROVIDER)
                .add_callback(move |rec: &EventRecord, loc: &SchemaLocator| s.on_record(rec, loc))
                .build();
            let (trace, handle) = KernelTrace::new()
                .named(name.clone())
                .set_trace_properties(props)
                .enable(provider)
                .start()
                .map_err(|e| SensorError::Start { session: name.clone(), detail: format!("{e:?}") })?;
            sensor.kernel = Some(trace);
            sensor.threads.push(spawn_processing(name.clone(), move || {
                KernelTrace::process_from_handle(handle).map_err(|e| format!("{e:?}"))
            }));
            sensor.names.push(name);
        }

        if config.tcp {
            let name = config.session_name.clone();
            stop_leftover_session(&name);
            let s1 = shared.clone();
            let network = Provider::by_guid(to_guid(providers::KERNEL_NETWORK))
                .any(providers::KERNEL_NETWORK_KEYWORDS)
                .add_callback(move |rec: &EventRecord, loc: &SchemaLocator| s1.on_record(rec, loc))
                .build();
            let s2 = shared.clone();
            // Keywords 0 would leave keyworded events off: enable all, and
            // let the event-id filter keep only 1002 and 1034.
            let failures = Provider::by_guid(to_guid(providers::TCPIP))
                .any(u64::MAX)
                .add_filter(EventFilter::ByEventIds(vec![
                    providers::TCPIP_REQUEST_CONNECT,
                    providers::TCPIP_CONNECT_FAILURE,
                ]))
                .add_callback(move |rec: &EventRecord, loc: &SchemaLocator| s2.on_record(rec, loc))
                .build();
            let (trace, handle) = UserTrace::new()
                .named(name.clone())
                .set_trace_properties(props)
                .enable(network)
                .enable(failures)
                .start()
                .map_err(|e| SensorError::Start { session: name.clone(), detail: format!("{e:?}") })?;
            sensor.user = Some(trace);
            sensor.threads.push(spawn_processing(name.clone(), move || {
                UserTrace::process_from_handle(handle).map_err(|e| format!("{e:?}"))
            }));
            sensor.names.push(name);
        }

        let (stop, names, poll, s) = (sensor.stop.clone(), sensor.names.clone(), config.loss_poll, shared);
        sensor.threads.push(std::thread::spawn(move || poll_losses(&s, &names, &stop, poll)));
        Ok(sensor)
    }

    /// The names of the running sessions.
    pub fn session_names(&self) -> &[String] {
        &self.names
    }

    pub fn counters(&self) -> SensorCounters {
        let decode = match self.shared.decoder.lock() {
            Ok(d) => d.stats(),
            Err(p) => p.into_inner().stats(),
        };
        SensorCounters {
            decode,
            channel_dropped: self.shared.channel_dropped.load(Ordering::Relaxed),
            platform_lost: self.shared.platform_lost.load(Ordering::Relaxed),
        }
    }

    /// Stops both sessions and waits for their processing threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Stopping a session makes its ProcessTrace call return.
        if let Some(t) = self.user.take() {
            if let Err(e) = t.stop() {
                tracing::warn!(error = ?e, "Stopping the ETW user session failed.");
            }
        }
        if let Some(t) = self.kernel.take() {
            if let Err(e) = t.stop() {
                tracing::warn!(error = ?e, "Stopping the ETW kernel session failed.");
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for EtwSensor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn spawn_processing(
    name: String,
    run: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        if let Err(e) = run() {
            tracing::error!(session = %name, error = %e, "ETW processing ended with an error.");
        }
    })
}

/// Reads ETW's loss counters of each session and adds increases to the
/// platform loss counter. Only counted: the agent's pipeline reads the
/// counters ([`EtwSensor::counters`]) and marks each gap in the stream, so
/// a `loss` event from here would mark it twice.
fn poll_losses(shared: &Shared, names: &[String], stop: &AtomicBool, every: Duration) {
    let mut last = vec![0u64; names.len()];
    let step = Duration::from_millis(100);
    let mut waited = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(step);
        waited += step;
        if waited < every {
            continue;
        }
        waited = Duration::ZERO;
        for (i, name) in names.iter().enumerate() {
            let Some(lost) = query_lost(name) else { continue };
            let delta = lost.saturating_sub(last[i]);
            last[i] = lost;
            if delta > 0 {
                shared.platform_lost.fetch_add(delta, Ordering::Relaxed);
                tracing::warn!(session = %name, lost = delta, "ETW dropped events.");
            }
        }
    }
}

/// `EventsLost + RealTimeBuffersLost` of a running session, by name.
fn query_lost(name: &str) -> Option<u64> {
    use windows::core::PCWSTR;
    use windows::Win32::System::Diagnostics::Etw::{
        ControlTraceW, CONTROLTRACE_HANDLE, EVENT_TRACE_CONTROL_QUERY, EVENT_TRACE_PROPERTIES,
    };
    const NAMES_BYTES: usize = 2 * 1024 * 2;
    let size = std::mem::size_of::<EVENT_TRACE_PROPERTIES>() + NAMES_BYTES;
    // u64 storage keeps the structure aligned.
    let mut buf = vec![0u64; size.div_ceil(8)];
    let props = buf.as_mut_ptr().cast::<EVENT_TRACE_PROPERTIES>();
    let wide: Vec<u16> = name.encode_utf16().chain(std::iter::once(0)).collect();
    // SAFETY: `buf` is zeroed, aligned and large enough for the structure
    // followed by the two name buffers ETW writes at the offsets we set;
    // `wide` is NUL-terminated and outlives the call.
    let err = unsafe {
        (*props).Wnode.BufferSize = size as u32;
        (*props).LoggerNameOffset = std::mem::size_of::<EVENT_TRACE_PROPERTIES>() as u32;
        (*props).LogFileNameOffset = (std::mem::size_of::<EVENT_TRACE_PROPERTIES>() + NAMES_BYTES / 2) as u32;
        ControlTraceW(
            CONTROLTRACE_HANDLE { Value: 0 },
            PCWSTR(wide.as_ptr()),
            props,
            EVENT_TRACE_CONTROL_QUERY,
        )
    };
    if err.0 != 0 {
        return None;
    }
    // SAFETY: the call succeeded and filled the structure.
    let p = unsafe { &*props };
    Some(u64::from(p.EventsLost) + u64::from(p.RealTimeBuffersLost))
}
