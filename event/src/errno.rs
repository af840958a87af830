//! Errno names, Linux numbering. Windows sensors map their socket errors onto
//! these names so that runbooks and metrics say `ECONNREFUSED` everywhere.

const TABLE: &[(i32, &str)] = &[
    (1, "EPERM"),
    (2, "ENOENT"),
    (3, "ESRCH"),
    (4, "EINTR"),
    (5, "EIO"),
    (9, "EBADF"),
    (11, "EAGAIN"),
    (12, "ENOMEM"),
    (13, "EACCES"),
    (14, "EFAULT"),
    (16, "EBUSY"),
    (17, "EEXIST"),
    (22, "EINVAL"),
    (23, "ENFILE"),
    (24, "EMFILE"),
    (28, "ENOSPC"),
    (32, "EPIPE"),
    (88, "ENOTSOCK"),
    (95, "EOPNOTSUPP"),
    (97, "EAFNOSUPPORT"),
    (98, "EADDRINUSE"),
    (99, "EADDRNOTAVAIL"),
    (100, "ENETDOWN"),
    (101, "ENETUNREACH"),
    (102, "ENETRESET"),
    (103, "ECONNABORTED"),
    (104, "ECONNRESET"),
    (105, "ENOBUFS"),
    (106, "EISCONN"),
    (107, "ENOTCONN"),
    (110, "ETIMEDOUT"),
    (111, "ECONNREFUSED"),
    (112, "EHOSTDOWN"),
    (113, "EHOSTUNREACH"),
    (114, "EALREADY"),
    (115, "EINPROGRESS"),
    (125, "ECANCELED"),
];

/// The symbolic name of a (positive) errno, e.g. 111 → `ECONNREFUSED`.
pub fn errno_name(errno: i32) -> Option<&'static str> {
    TABLE.iter().find(|(n, _)| *n == errno.abs()).map(|(_, s)| *s)
}

/// The errno of a symbolic name, case-insensitively.
pub fn errno_from_name(name: &str) -> Option<i32> {
    TABLE.iter().find(|(_, s)| s.eq_ignore_ascii_case(name)).map(|(n, _)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (n, s) in TABLE {
            assert_eq!(errno_name(*n), Some(*s));
            assert_eq!(errno_from_name(s), Some(*n));
        }
        assert_eq!(errno_name(-111), Some("ECONNREFUSED"));
        assert_eq!(errno_from_name("etimedout"), Some(110));
        assert_eq!(errno_name(9999), None);
    }
}
