//! Windows socket errors (WSA codes) and NTSTATUS values mapped onto errno
//! names, so that runbooks and metrics say `ECONNREFUSED` on both platforms.

use custos_event::{errno_from_name, ConnectResult};

/// `(WSA code, NTSTATUS, errno name)` for every failure a connect can report.
const TABLE: &[(u32, u32, &str)] = &[
    (10013, 0xC000_0022, "EACCES"),        // WSAEACCES, STATUS_ACCESS_DENIED
    (10047, 0xC000_02E1, "EAFNOSUPPORT"),  // WSAEAFNOSUPPORT, STATUS_INVALID_ADDRESS_WILDCARD
    (10048, 0xC000_020A, "EADDRINUSE"),    // WSAEADDRINUSE, STATUS_ADDRESS_ALREADY_EXISTS
    (10049, 0xC000_0207, "EADDRNOTAVAIL"), // WSAEADDRNOTAVAIL, STATUS_INVALID_ADDRESS_COMPONENT
    (10050, 0xC000_00C4, "ENETDOWN"),      // WSAENETDOWN, STATUS_UNEXPECTED_NETWORK_ERROR
    (10051, 0xC000_023C, "ENETUNREACH"),   // WSAENETUNREACH, STATUS_NETWORK_UNREACHABLE
    (10052, 0xC000_0241, "ENETRESET"),     // WSAENETRESET (no own NTSTATUS: aborted)
    (10053, 0xC000_0241, "ECONNABORTED"),  // WSAECONNABORTED, STATUS_CONNECTION_ABORTED
    (10054, 0xC000_020D, "ECONNRESET"),    // WSAECONNRESET, STATUS_CONNECTION_RESET
    (10055, 0xC000_009A, "ENOBUFS"),       // WSAENOBUFS, STATUS_INSUFFICIENT_RESOURCES
    (10056, 0xC000_0000, "EISCONN"),       // WSAEISCONN (no NTSTATUS)
    (10060, 0xC000_00B5, "ETIMEDOUT"),     // WSAETIMEDOUT, STATUS_IO_TIMEOUT
    (10061, 0xC000_0236, "ECONNREFUSED"),  // WSAECONNREFUSED, STATUS_CONNECTION_REFUSED
    (10064, 0xC000_0000, "EHOSTDOWN"),     // WSAEHOSTDOWN (no NTSTATUS)
    (10065, 0xC000_023D, "EHOSTUNREACH"),  // WSAEHOSTUNREACH, STATUS_HOST_UNREACHABLE
    (10037, 0xC000_0000, "EALREADY"),      // WSAEALREADY (no NTSTATUS)
    (10036, 0x0000_0103, "EINPROGRESS"),   // WSAEINPROGRESS, STATUS_PENDING
    (995, 0xC000_0120, "ECANCELED"),       // ERROR_OPERATION_ABORTED, STATUS_CANCELLED
];

/// More NTSTATUS values a TCP connect ends with, without a WSA twin of their own.
const NTSTATUS_EXTRA: &[(u32, &str)] = &[
    (0xC000_023F, "ECONNREFUSED"),  // STATUS_PORT_UNREACHABLE: ICMP port unreachable
    (0xC000_023E, "ECONNREFUSED"),  // STATUS_PROTOCOL_UNREACHABLE
    (0xC000_0710, "ECONNREFUSED"),  // STATUS_CONNECTION_REFUSED (WFP rejected)
    (0xC000_0242, "ETIMEDOUT"),     // STATUS_RETRY: SYN retries exhausted
    (0xC000_023A, "ENOTCONN"),      // STATUS_CONNECTION_INVALID
    (0xC000_0208, "EADDRNOTAVAIL"), // STATUS_INVALID_ADDRESS
];

/// The errno of a Windows socket error (`WSAGetLastError`).
pub fn wsa_to_errno(wsa: u32) -> Option<i32> {
    TABLE.iter().find(|(w, _, _)| *w == wsa).and_then(|(_, _, n)| errno_from_name(n))
}

/// The errno of an NTSTATUS a connect failed with.
pub fn ntstatus_to_errno(status: u32) -> Option<i32> {
    if status == 0xC000_0000 {
        return None;
    }
    TABLE
        .iter()
        .find(|(_, s, _)| *s == status)
        .map(|(_, _, n)| *n)
        .or_else(|| NTSTATUS_EXTRA.iter().find(|(s, _)| *s == status).map(|(_, n)| *n))
        .and_then(errno_from_name)
}

/// The connect result for an NTSTATUS: `ok` on success, the mapped errno,
/// or `EIO` for a failure no errno names (the raw status is logged by the
/// sensor, which counts it as unmapped).
pub fn connect_result(status: u32) -> (ConnectResult, bool) {
    if status & 0xC000_0000 != 0xC000_0000 {
        return (ConnectResult::Ok, true);
    }
    match ntstatus_to_errno(status) {
        Some(e) => (ConnectResult::Err(e), true),
        None => (ConnectResult::Err(5), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_name_is_a_known_errno() {
        for (_, _, n) in TABLE {
            assert!(errno_from_name(n).is_some(), "{n} is not in custos_event's errno table");
        }
        for (_, n) in NTSTATUS_EXTRA {
            assert!(errno_from_name(n).is_some(), "{n} is not in custos_event's errno table");
        }
    }

    #[test]
    fn common_connect_failures_map_to_linux_names() {
        assert_eq!(wsa_to_errno(10061).and_then(custos_event::errno_name), Some("ECONNREFUSED"));
        assert_eq!(wsa_to_errno(10060).and_then(custos_event::errno_name), Some("ETIMEDOUT"));
        assert_eq!(wsa_to_errno(10065).and_then(custos_event::errno_name), Some("EHOSTUNREACH"));
        assert_eq!(wsa_to_errno(4242), None);
        assert_eq!(ntstatus_to_errno(0xC000_0236).and_then(custos_event::errno_name), Some("ECONNREFUSED"));
        assert_eq!(ntstatus_to_errno(0xC000_00B5).and_then(custos_event::errno_name), Some("ETIMEDOUT"));
        assert_eq!(ntstatus_to_errno(0xC000_023F).and_then(custos_event::errno_name), Some("ECONNREFUSED"));
        assert_eq!(ntstatus_to_errno(0xC000_0000), None);
    }

    #[test]
    fn connect_result_of_status() {
        assert_eq!(connect_result(0), (ConnectResult::Ok, true));
        assert_eq!(connect_result(0xC000_0236).0.name(), "ECONNREFUSED");
        assert_eq!(connect_result(0xC0DE_0001), (ConnectResult::Err(5), false));
    }
}
