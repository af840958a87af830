//! The ETW providers custos reads, and which properties of which events it
//! needs: one table that drives both the Windows callback (what to parse)
//! and the decoder (what to expect), so the two cannot drift apart.

use crate::record::{FieldType, Guid};

/// The kernel logger's `Process` event class (MOF). Its start events carry
/// the command line, which Microsoft-Windows-Kernel-Process does not.
pub const PROCESS_CLASS: Guid =
    Guid::from_fields(0x3d6fa8d0, 0xfe05, 0x11d0, [0x9d, 0xda, 0x00, 0xc0, 0x4f, 0xd7, 0xba, 0x7c]);

/// Microsoft-Windows-Kernel-Network: established/accepted/closed TCP
/// connections and the bytes that cross them, with the owning pid.
pub const KERNEL_NETWORK: Guid =
    Guid::from_fields(0x7dd42a49, 0x5329, 0x4832, [0x8d, 0xfd, 0x43, 0xd9, 0x79, 0x15, 0x3a, 0x88]);

/// Microsoft-Windows-TCPIP: the only provider that reports a failed connect
/// with its pid, endpoints and status (event 1034, TcpConnectTcbFailure).
pub const TCPIP: Guid =
    Guid::from_fields(0x2f07e2ee, 0x15db, 0x40f1, [0x90, 0xef, 0x9d, 0x7b, 0xa2, 0x82, 0x18, 0x8a]);

/// Kernel logger process opcodes.
pub mod process_opcode {
    pub const START: u8 = 1;
    pub const END: u8 = 2;
    /// Rundown of processes that existed when the session started.
    pub const DC_START: u8 = 3;
}

/// Microsoft-Windows-Kernel-Network event ids (IPv4; IPv6 is [`V6_OFFSET`] more).
pub mod net_event {
    pub const SEND: u16 = 10;
    pub const RECV: u16 = 11;
    /// Outbound connection established (the provider's "connection attempted").
    pub const CONNECT: u16 = 12;
    pub const DISCONNECT: u16 = 13;
    pub const RETRANSMIT: u16 = 14;
    /// Inbound connection established.
    pub const ACCEPT: u16 = 15;
    pub const V6_OFFSET: u16 = 16;
}

/// Microsoft-Windows-TCPIP TcpRequestConnect: the connect call (SYN about
/// to go out), the start of the connect latency.
pub const TCPIP_REQUEST_CONNECT: u16 = 1002;
/// Microsoft-Windows-TCPIP TcpConnectTcbFailure.
pub const TCPIP_CONNECT_FAILURE: u16 = 1034;

/// Kernel-Network keywords: KERNEL_NETWORK_KEYWORD_IPV4 | _IPV6.
pub const KERNEL_NETWORK_KEYWORDS: u64 = 0x10 | 0x20;
/// Kernel-Process keyword bit for the kernel logger is a flag, not a keyword:
/// `EVENT_TRACE_FLAG_PROCESS`.
pub const EVENT_TRACE_FLAG_PROCESS: u32 = 0x0000_0001;

const PROCESS_FIELDS: &[(&str, FieldType)] = &[
    ("ProcessId", FieldType::U32),
    ("ParentId", FieldType::U32),
    ("ExitStatus", FieldType::I32),
    ("ImageFileName", FieldType::Str),
    ("CommandLine", FieldType::Str),
];

const NET_V4_FIELDS: &[(&str, FieldType)] = &[
    ("PID", FieldType::U32),
    ("size", FieldType::U32),
    ("daddr", FieldType::U32),
    ("saddr", FieldType::U32),
    ("dport", FieldType::U16),
    ("sport", FieldType::U16),
];

const NET_V6_FIELDS: &[(&str, FieldType)] = &[
    ("PID", FieldType::U32),
    ("size", FieldType::U32),
    ("daddr", FieldType::Bytes),
    ("saddr", FieldType::Bytes),
    ("dport", FieldType::U16),
    ("sport", FieldType::U16),
];

const TCPIP_FAILURE_FIELDS: &[(&str, FieldType)] = &[
    ("LocalAddress", FieldType::Bytes),
    ("RemoteAddress", FieldType::Bytes),
    ("Status", FieldType::U32),
    ("ProcessId", FieldType::U32),
];

const TCPIP_REQUEST_FIELDS: &[(&str, FieldType)] =
    &[("LocalAddress", FieldType::Bytes), ("RemoteAddress", FieldType::Bytes)];

/// The properties custos reads from an event, or `None` for an event it
/// does not use (the callback then skips it without parsing).
pub fn fields(provider: Guid, event_id: u16, opcode: u8) -> Option<&'static [(&'static str, FieldType)]> {
    use net_event::*;
    match provider {
        p if p == PROCESS_CLASS => match opcode {
            process_opcode::START | process_opcode::END | process_opcode::DC_START => Some(PROCESS_FIELDS),
            _ => None,
        },
        p if p == KERNEL_NETWORK => match event_id {
            SEND | RECV | CONNECT | DISCONNECT | RETRANSMIT | ACCEPT => Some(NET_V4_FIELDS),
            id if id >= V6_OFFSET && matches!(id - V6_OFFSET, SEND..=ACCEPT) => Some(NET_V6_FIELDS),
            _ => None,
        },
        p if p == TCPIP && event_id == TCPIP_CONNECT_FAILURE => Some(TCPIP_FAILURE_FIELDS),
        p if p == TCPIP && event_id == TCPIP_REQUEST_CONNECT => Some(TCPIP_REQUEST_FIELDS),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_spell_the_documented_providers() {
        assert_eq!(PROCESS_CLASS.to_string(), "3d6fa8d0-fe05-11d0-9dda-00c04fd7ba7c");
        assert_eq!(KERNEL_NETWORK.to_string(), "7dd42a49-5329-4832-8dfd-43d979153a88");
        assert_eq!(TCPIP.to_string(), "2f07e2ee-15db-40f1-90ef-9d7ba282188a");
    }

    #[test]
    fn field_tables_cover_used_events_only() {
        assert!(fields(KERNEL_NETWORK, 12, 0).is_some());
        assert_eq!(fields(KERNEL_NETWORK, 28, 0), Some(NET_V6_FIELDS));
        assert!(fields(KERNEL_NETWORK, 17, 0).is_none(), "v4 failure has no pid: unused");
        assert!(fields(KERNEL_NETWORK, 33, 0).is_none());
        assert!(fields(PROCESS_CLASS, 0, 4).is_none());
        assert!(fields(TCPIP, 1033, 0).is_none());
        assert!(fields(TCPIP, 1034, 0).is_some());
        assert!(fields(TCPIP, 1002, 0).is_some());
    }
}
