//! Signals by Linux number, named like `SIGSEGV` in JSON and runbooks.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub(crate) const SIGKILL: i32 = 9;

const TABLE: &[(i32, &str)] = &[
    (1, "SIGHUP"),
    (2, "SIGINT"),
    (3, "SIGQUIT"),
    (4, "SIGILL"),
    (5, "SIGTRAP"),
    (6, "SIGABRT"),
    (7, "SIGBUS"),
    (8, "SIGFPE"),
    (SIGKILL, "SIGKILL"),
    (10, "SIGUSR1"),
    (11, "SIGSEGV"),
    (12, "SIGUSR2"),
    (13, "SIGPIPE"),
    (14, "SIGALRM"),
    (15, "SIGTERM"),
    (16, "SIGSTKFLT"),
    (17, "SIGCHLD"),
    (18, "SIGCONT"),
    (19, "SIGSTOP"),
    (20, "SIGTSTP"),
    (21, "SIGTTIN"),
    (22, "SIGTTOU"),
    (23, "SIGURG"),
    (24, "SIGXCPU"),
    (25, "SIGXFSZ"),
    (26, "SIGVTALRM"),
    (27, "SIGPROF"),
    (28, "SIGWINCH"),
    (29, "SIGIO"),
    (30, "SIGPWR"),
    (31, "SIGSYS"),
];

/// The name of a signal number, e.g. 11 → `SIGSEGV`.
pub fn signal_name(sig: i32) -> Option<&'static str> {
    TABLE.iter().find(|(n, _)| *n == sig).map(|(_, s)| *s)
}

/// The number of a signal name, with or without the `SIG` prefix,
/// case-insensitively (`SIGSEGV`, `segv`).
pub fn signal_from_name(name: &str) -> Option<i32> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    TABLE.iter().find(|(_, s)| *s == full).map(|(n, _)| *n)
}

/// A signal number. Serialized as its name (`SIGSEGV`), or `SIG<n>` for
/// real-time and unknown signals; deserialized from a name or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Signal(pub i32);

impl Signal {
    pub fn name(self) -> String {
        signal_name(self.0).map(str::to_string).unwrap_or_else(|| format!("SIG{}", self.0))
    }

    pub fn parse(s: &str) -> Option<Signal> {
        if let Ok(n) = s.parse::<i32>() {
            return (n > 0 && n < 65).then_some(Signal(n));
        }
        if let Some(n) = signal_from_name(s) {
            return Some(Signal(n));
        }
        let upper = s.to_ascii_uppercase();
        upper.strip_prefix("SIG").and_then(|n| n.parse().ok()).filter(|n| *n > 0 && *n < 65).map(Signal)
    }

    /// Whether the default action of this signal dumps core.
    pub fn dumps_core(self) -> bool {
        matches!(self.0, 3 | 4 | 5 | 6 | 7 | 8 | 11 | 24 | 25 | 31)
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl Serialize for Signal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(i32),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) if n > 0 && n < 65 => Ok(Signal(n)),
            Raw::Num(n) => Err(serde::de::Error::custom(format!("signal number {n} is out of range 1..=64"))),
            Raw::Name(s) => Signal::parse(&s).ok_or_else(|| {
                serde::de::Error::custom(format!("expected a signal name such as SIGSEGV, found `{s}`"))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_forms() {
        assert_eq!(Signal::parse("SIGSEGV"), Some(Signal(11)));
        assert_eq!(Signal::parse("segv"), Some(Signal(11)));
        assert_eq!(Signal::parse("9"), Some(Signal(9)));
        assert_eq!(Signal::parse("SIG40"), Some(Signal(40)));
        assert_eq!(Signal::parse("SIGNOPE"), None);
        assert_eq!(Signal(40).name(), "SIG40");
        assert!(Signal(11).dumps_core());
        assert!(!Signal(15).dumps_core());
    }
}
