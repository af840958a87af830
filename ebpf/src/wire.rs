//! Rust mirror of bpf/include/custos_wire.h: the records the BPF programs put
//! in the ring buffer and the maps user space reads and writes. Sizes are
//! asserted here and with `_Static_assert` in C, so a change on one side only
//! fails the build.

pub const COMM_LEN: usize = 16;
pub const FILENAME_LEN: usize = 256;
pub const ARGS_LEN: usize = 4096;
pub const LATENCY_BUCKETS: usize = 32;

pub const EV_EXEC: u32 = 1;
pub const EV_EXIT: u32 = 2;
pub const EV_SIGNAL: u32 = 3;
pub const EV_OOM: u32 = 4;
pub const EV_CONNECT: u32 = 5;
pub const EV_ACCEPT: u32 = 6;
pub const EV_CLOSE: u32 = 7;
pub const EV_LISTEN: u32 = 8;

pub const MODE_EVERYTHING: u32 = 0;
pub const MODE_MANAGED: u32 = 1;

pub const EXEC_ARGS_TRUNCATED: u32 = 1;
pub const EXEC_FILENAME_TRUNCATED: u32 = 2;

pub const TCP_INBOUND: u32 = 1;
pub const TCP_CLOSED_BY_LOCAL: u32 = 2;
pub const TCP_CLOSED_BY_PEER: u32 = 4;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Config {
    pub mode: u32,
    pub emit_all_execs: u32,
    pub any_tracked: u32,
    pub process_events: u32,
    pub scope_gen: u32,
    pub _pad0: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hdr {
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    pub _pad0: u32,
    pub ts_boot_ns: u64,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// The fixed part of an exec record; `args_len` bytes of arguments follow
/// (the record is sent with its real length, not the full `ARGS_LEN`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ExecFixed {
    pub hdr: Hdr,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub flags: u32,
    pub filename_len: u32,
    pub args_len: u32,
    pub filename: [u8; FILENAME_LEN],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Exit {
    pub hdr: Hdr,
    pub ppid: u32,
    pub exit_status: i32,
    pub lifetime_ns: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Signal {
    pub hdr: Hdr,
    pub sig: u32,
    pub sender_pid: u32,
    pub code: i32,
    pub _pad0: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Oom {
    pub hdr: Hdr,
    pub rss_bytes: u64,
    pub memcg: u32,
    pub _pad0: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Tcp {
    pub hdr: Hdr,
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub _pad0: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub err: i32,
    pub retransmits: u32,
    pub flags: u32,
    pub _pad1: u32,
    pub latency_ns: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SysKey {
    pub cgroup_id: u64,
    pub nr: u32,
    pub _pad0: u32,
}

/// Syscall numbers below this are counted in a slotted cgroup's row of the
/// kernel's `syscall_rows` array (`CUSTOS_SYSCALL_NRS`).
pub const SYSCALL_NRS: u32 = 512;

/// Calls and failed calls of one syscall in one slotted cgroup
/// (`struct custos_sys_row`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SysRow {
    pub count: u64,
    pub errors: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysVal {
    pub count: u64,
    pub errors: u64,
    pub buckets: [u64; LATENCY_BUCKETS],
}

impl Default for SysVal {
    fn default() -> Self {
        SysVal { count: 0, errors: 0, buckets: [0; LATENCY_BUCKETS] }
    }
}

const _: () = assert!(std::mem::size_of::<Config>() == 24);
const _: () = assert!(std::mem::size_of::<Hdr>() == 48);
const _: () = assert!(std::mem::size_of::<ExecFixed>() == 48 + 24 + 256);
const _: () = assert!(std::mem::size_of::<Exit>() == 64);
const _: () = assert!(std::mem::size_of::<Signal>() == 64);
const _: () = assert!(std::mem::size_of::<Oom>() == 64);
const _: () = assert!(std::mem::size_of::<Tcp>() == 48 + 8 + 32 + 16 + 24);
const _: () = assert!(std::mem::size_of::<SysKey>() == 16);
const _: () = assert!(std::mem::size_of::<SysRow>() == 16);
const _: () = assert!(std::mem::size_of::<SysVal>() == 8 * (2 + LATENCY_BUCKETS));
const _: () = assert!(LATENCY_BUCKETS == custos_event::LATENCY_BUCKETS);

/// Marker for the plain-data wire structs above: every bit pattern is a valid
/// value (integers and byte arrays only), so they may be read from bytes.
///
/// # Safety
/// Implement only for `#[repr(C)]` structs made of integers and integer arrays.
pub unsafe trait Pod: Copy {}
unsafe impl Pod for Config {}
unsafe impl Pod for Hdr {}
unsafe impl Pod for ExecFixed {}
unsafe impl Pod for Exit {}
unsafe impl Pod for Signal {}
unsafe impl Pod for Oom {}
unsafe impl Pod for Tcp {}
unsafe impl Pod for SysKey {}
unsafe impl Pod for SysRow {}
unsafe impl Pod for SysVal {}

/// Reads a `T` from the start of `bytes`, or `None` when it is too short.
pub fn read<T: Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the length is checked above and `T: Pod` accepts any bits;
    // read_unaligned copes with the ring buffer's 8-byte alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// The bytes of a `T`, e.g. to build test records.
pub fn bytes_of<T: Pod>(v: &T) -> &[u8] {
    // SAFETY: `T: Pod` has no padding bytes left uninitialized: every
    // struct above pads explicitly with named fields.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// A NUL-terminated byte array as text (lossy).
pub fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}
