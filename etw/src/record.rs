//! The small, platform-neutral shape of one ETW record that decoding works on.
//!
//! On Windows the ferrisetw callback fills a [`Record`] from the event header
//! and the properties named in [`crate::providers`]; on every platform tests
//! fill it from JSON fixtures. Values are kept raw, as ETW delivers them (a
//! port is the `u16` read from the record, still in network byte order), so
//! that every interpretation happens in tested code.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A GUID in its canonical text form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`,
/// held as the big-endian 128-bit number that text spells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub u128);

impl Guid {
    /// A GUID from the fields of a Win32 `GUID` structure.
    pub const fn from_fields(data1: u32, data2: u16, data3: u16, data4: [u8; 8]) -> Self {
        Guid(
            ((data1 as u128) << 96)
                | ((data2 as u128) << 80)
                | ((data3 as u128) << 64)
                | u64::from_be_bytes(data4) as u128,
        )
    }

    /// The fields of the Win32 `GUID` structure.
    pub const fn to_fields(self) -> (u32, u16, u16, [u8; 8]) {
        ((self.0 >> 96) as u32, (self.0 >> 80) as u16, (self.0 >> 64) as u16, (self.0 as u64).to_be_bytes())
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b, c, d) = self.to_fields();
        write!(
            f,
            "{a:08x}-{b:04x}-{c:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]
        )
    }
}

/// Why a GUID did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a GUID such as 22fb2cd6-0e7b-422b-a0c7-2fad1fd0e716, found `{0}`")]
pub struct GuidParseError(pub String);

impl FromStr for Guid {
    type Err = GuidParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().trim_start_matches('{').trim_end_matches('}');
        let groups: Vec<&str> = t.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if groups.len() != 5
            || groups.iter().zip(lens).any(|(g, n)| g.len() != n || !g.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(GuidParseError(s.to_string()));
        }
        u128::from_str_radix(&groups.concat(), 16).map(Guid).map_err(|_| GuidParseError(s.to_string()))
    }
}

impl Serialize for Guid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Guid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One property value, typed as ETW's TDH in-types deliver them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    I32(i32),
    I64(i64),
    /// `UnicodeString` and `AnsiString` alike.
    Str(String),
    /// `Binary`: e.g. a `SOCKADDR` or an IPv6 address.
    Bytes(Vec<u8>),
}

/// The type a property is read as (see [`crate::providers::fields`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    U16,
    U32,
    U64,
    I32,
    Str,
    Bytes,
}

impl Value {
    /// The value as an unsigned integer, if it is one (any width).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            Value::Str(_) | Value::Bytes(_) => None,
        }
    }
}

/// One ETW event: header fields and named properties.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The provider (manifest providers) or the event class (kernel MOF events).
    pub provider: Guid,
    #[serde(default)]
    pub event_id: u16,
    #[serde(default)]
    pub opcode: u8,
    #[serde(default)]
    pub version: u8,
    /// Process and thread of the header (the kernel logger often reports
    /// `u32::MAX` here; decoding prefers the payload's pid).
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub tid: u32,
    /// Header timestamp as a Windows FILETIME (100 ns since 1601-01-01 UTC).
    pub filetime: i64,
    /// Property values by name. Names borrow from the static field tables
    /// on the hot path (no allocation per property), and are owned when
    /// read from fixtures.
    #[serde(default)]
    pub props: BTreeMap<Cow<'static, str>, Value>,
}

/// 100 ns intervals between 1601-01-01 and 1970-01-01.
const FILETIME_UNIX_EPOCH: i64 = 116_444_736_000_000_000;

/// The wall time of a FILETIME; `None` before 1970 (a zero or garbage stamp).
pub fn filetime_to_system(ft: i64) -> Option<std::time::SystemTime> {
    let since_unix = ft.checked_sub(FILETIME_UNIX_EPOCH).filter(|t| *t >= 0)?;
    let ns = u64::try_from(since_unix).ok()?.checked_mul(100)?;
    Some(custos_event::from_unix_nanos(ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text_round_trips_and_matches_win32_fields() {
        let g: Guid = "22FB2CD6-0E7B-422B-A0C7-2FAD1FD0E716".parse().unwrap();
        assert_eq!(g.to_string(), "22fb2cd6-0e7b-422b-a0c7-2fad1fd0e716");
        assert_eq!(
            g.to_fields(),
            (0x22fb2cd6, 0x0e7b, 0x422b, [0xa0, 0xc7, 0x2f, 0xad, 0x1f, 0xd0, 0xe7, 0x16])
        );
        let (a, b, c, d) = g.to_fields();
        assert_eq!(Guid::from_fields(a, b, c, d), g);
        assert_eq!("{22fb2cd6-0e7b-422b-a0c7-2fad1fd0e716}".parse::<Guid>().unwrap(), g);
        assert!("22fb2cd6-0e7b-422b-a0c7".parse::<Guid>().is_err());
        assert!("22fb2cd6-0e7b-422b-a0c7-2fad1fd0e71g".parse::<Guid>().is_err());
    }

    #[test]
    fn filetime_converts_to_unix_time() {
        // 2024-01-01T00:00:00Z
        let ft = FILETIME_UNIX_EPOCH + 1_704_067_200 * 10_000_000;
        assert_eq!(custos_event::unix_nanos(filetime_to_system(ft).unwrap()), 1_704_067_200_000_000_000);
        assert_eq!(filetime_to_system(0), None);
        assert_eq!(filetime_to_system(-5), None);
    }
}
