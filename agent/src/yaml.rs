//! YAML read with its places: serde-saphyr's errors and `Spanned` values
//! turned into `file:line:column: message` errors. The configuration and
//! the runbooks both read YAML this way, so both say where and what alike.
//!
//! Structural errors (bad YAML, unknown key, wrong type) stop at the first,
//! because serde stops there; semantic problems are collected in
//! [`Problems`] so that one run shows them all.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use std::fmt;

pub use serde_saphyr::Location;

/// A value with the place it was written. Equal when the values are equal,
/// wherever they were written: a reload compares configurations, and the
/// same setting moved to another line is the same setting.
#[derive(Debug, Clone, Copy)]
pub struct Spanned<T> {
    pub value: T,
    /// Where the value is used (an alias's place for an anchored value).
    pub referenced: Location,
    /// Where the value is written.
    pub defined: Location,
}

impl<T> Spanned<T> {
    pub const fn new(value: T, referenced: Location, defined: Location) -> Self {
        Spanned { value, referenced, defined }
    }

    /// A value that comes from no file: a default, the environment.
    pub const fn unlocated(value: T) -> Self {
        Spanned::new(value, Location::UNKNOWN, Location::UNKNOWN)
    }
}

/// A located value reads as its value: `interval.0`, `*capacity`.
impl<T> std::ops::Deref for Spanned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: fmt::Display> fmt::Display for Spanned<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

impl<T: Default> Default for Spanned<T> {
    fn default() -> Self {
        Spanned::unlocated(T::default())
    }
}

impl<T: PartialEq> PartialEq for Spanned<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<T: Eq> Eq for Spanned<T> {}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // serde-saphyr recognizes its own wrapper and fills in the places.
        let s = serde_saphyr::Spanned::<T>::deserialize(deserializer)?;
        Ok(Spanned::new(s.value, s.referenced, s.defined))
    }
}

/// An argument list (`exec.argv`, `health.command`): a YAML sequence. A
/// single string is refused with a hint rather than split: custos runs
/// commands without a shell, so `"/bin/x --flag"` would be one program
/// name with a space in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argv<T>(pub Vec<T>);

impl<T> std::ops::Deref for Argv<T> {
    type Target = Vec<T>;
    fn deref(&self) -> &Vec<T> {
        &self.0
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Argv<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = Argv<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of arguments")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                let words: Vec<String> = v.split_whitespace().map(|w| format!("{w:?}")).collect();
                Err(E::custom(format!(
                    "expected a list of arguments, found the string {v:?}: commands run without a shell, so write each argument as an item of a list, such as [{}]",
                    words.join(", ")
                )))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(x) = seq.next_element()? {
                    out.push(x);
                }
                Ok(Argv(out))
            }
        }
        deserializer.deserialize_any(V(std::marker::PhantomData))
    }
}

/// One problem in a YAML source (or the environment, or a flag), with its
/// place when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedError {
    /// The file, or `environment X` / `command line`.
    pub source: String,
    /// 1-based; 0 when unknown (a whole file, the environment, flags).
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl LocatedError {
    /// A problem with a whole source (unreadable, refused), not a place in it.
    pub fn whole(source: impl Into<String>, message: impl Into<String>) -> Self {
        LocatedError { source: source.into(), line: 0, column: 0, message: message.into() }
    }
}

impl fmt::Display for LocatedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: {}", self.source, self.line, self.column, self.message)
        } else {
            write!(f, "{}: {}", self.source, self.message)
        }
    }
}

/// Every problem found, one per line when shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LocatedErrors(pub Vec<LocatedError>);

impl fmt::Display for LocatedErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Collects the semantic problems of one source with their places.
pub struct Problems<'a> {
    source: &'a str,
    errors: Vec<LocatedError>,
}

impl<'a> Problems<'a> {
    pub fn new(source: &'a str) -> Self {
        Problems { source, errors: Vec::new() }
    }

    /// A problem at `loc` (`Location::UNKNOWN` when the value has no place,
    /// such as a default).
    pub fn at(&mut self, loc: Location, message: impl Into<String>) {
        self.errors.push(LocatedError {
            source: self.source.to_string(),
            line: loc.line(),
            column: loc.column(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// A problem at `v`'s place unless `min <= v <= max`. Every number and
    /// duration of the configuration and the runbooks goes through here: a
    /// value that parses can still make the agent panic (a queue of 2^64
    /// slots), spin (probes every 0s) or stop working (an interval of 500
    /// billion years).
    pub fn within<T: PartialOrd + fmt::Display>(&mut self, key: &str, v: &Spanned<T>, min: T, max: T) {
        if v.value < min || v.value > max {
            self.at(v.referenced, format!("`{key}` expects {min} to {max}, found {}", v.value));
        }
    }

    /// `value` when no problem was found, else every problem.
    pub fn finish<T>(self, value: T) -> Result<T, LocatedErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(self.into_errors())
        }
    }

    pub fn into_errors(self) -> LocatedErrors {
        LocatedErrors(self.errors)
    }
}

/// Deserializes YAML text; a structural error comes back located in
/// `source`.
pub fn from_str<T: DeserializeOwned>(text: &str, source: &str) -> Result<T, LocatedErrors> {
    serde_saphyr::from_str(text).map_err(|e| LocatedErrors(vec![error(&e, source)]))
}

/// A serde-saphyr error as a located error with the message alone.
pub fn error(e: &serde_saphyr::Error, source: &str) -> LocatedError {
    let loc = e.location().unwrap_or(Location::UNKNOWN);
    LocatedError { source: source.to_string(), line: loc.line(), column: loc.column(), message: message(e) }
}

/// The library's Display repeats the location in its own words and may
/// quote a snippet over several lines; ours puts the location in front, so
/// only the message itself is kept.
fn message(e: &serde_saphyr::Error) -> String {
    strip_location(&e.to_string())
}

fn strip_location(full: &str) -> String {
    let first = full.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("invalid YAML");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // A `line N column M: ` prefix.
    let first = match first.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") && head.contains(" column ") => rest,
        _ => first,
    };
    // An ` at line N, column M` suffix, or ` (used at line ...)` /
    // ` (defined at line ...)` for values that come through an anchor.
    let end = [" (used at line ", " (defined at line ", " at line "]
        .iter()
        .filter_map(|m| first.find(m))
        .min()
        .unwrap_or(first.len());
    first[..end].trim_end_matches([',', '.']).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        name: Spanned<String>,
        #[serde(default)]
        port: Option<Spanned<u16>>,
    }

    #[test]
    fn messages_lose_the_library_s_own_location() {
        for (full, want) in [
            ("unknown field `x`, expected `a` at line 3, column 5", "unknown field `x`, expected `a`"),
            (
                "error: line 3 column 5: invalid type: string, expected u16",
                "invalid type: string, expected u16",
            ),
            ("invalid value (used at line 3, column 7)", "invalid value"),
            ("invalid value (defined at line 1, column 2) at line 3, column 7", "invalid value"),
            ("unexpected end of file at line 1, column 1.\n   |\n 1 | x\n", "unexpected end of file"),
            ("", "invalid YAML"),
        ] {
            assert_eq!(strip_location(full), want, "{full:?}");
        }
    }

    #[test]
    fn structural_errors_are_located_in_their_source() {
        let e = from_str::<Doc>("name: a\nprot: 1\n", "x.yaml").unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!((e.0[0].line, e.0[0].source.as_str()), (2, "x.yaml"), "{e:?}");
        assert!(e.0[0].message.starts_with("unknown field `prot`"), "{e}");
        assert!(!e.0[0].message.contains("line"), "{e}");
        assert!(e.to_string().starts_with("x.yaml:2:"), "{e}");

        let e = from_str::<Doc>("name: a\nport: high\n", "x.yaml").unwrap_err();
        assert_eq!(e.0[0].line, 2, "{e:?}");
    }

    #[test]
    fn spanned_values_have_places_and_compare_by_value() {
        let a: Doc = from_str("name: api\nport: 80\n", "a").unwrap();
        let b: Doc = from_str("# moved\n\nport: 80\nname: api\n", "b").unwrap();
        assert_eq!((a.name.referenced.line(), b.name.referenced.line()), (1, 4));
        assert_eq!(a.name, b.name);
        assert_eq!(a.port, b.port);
        assert_eq!(a.name, Spanned::unlocated("api".to_string()));
        assert_ne!(a.name, Spanned::unlocated("db".to_string()));
    }

    #[test]
    fn an_argument_list_written_as_a_string_gets_a_hint_and_one_location() {
        #[derive(Debug, Deserialize)]
        struct Step {
            #[allow(dead_code)]
            argv: Spanned<Argv<Spanned<String>>>,
        }
        let ok: Step = from_str("argv: [\"/bin/echo\", hi]\n", "s.yaml").unwrap();
        assert_eq!(ok.argv.value.len(), 2);
        assert_eq!(ok.argv.value[1].referenced.line(), 1);
        for text in ["argv: /bin/echo hi\n", "argv: \"/bin/echo hi\"\n"] {
            let e = from_str::<Step>(text, "s.yaml").unwrap_err().to_string();
            assert!(e.starts_with("s.yaml:1:"), "{e}");
            assert!(e.contains("without a shell") && e.contains(r#"["/bin/echo", "hi"]"#), "{e}");
            assert_eq!(e.matches("line").count(), 0, "the location is given once: {e}");
        }
    }

    #[test]
    fn problems_are_all_kept_in_order() {
        let mut p = Problems::new("f.yaml");
        assert!(p.is_empty());
        p.at(Location::UNKNOWN, "first");
        p.at(Location::UNKNOWN, "second");
        let e = p.finish(()).unwrap_err();
        assert_eq!(e.to_string(), "f.yaml: first\nf.yaml: second");
        assert_eq!(Problems::new("f").finish(7).unwrap(), 7);
        assert_eq!(LocatedError::whole("f", "gone").to_string(), "f: gone");
    }
}
