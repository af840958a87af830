//! Text from the host shown on a terminal: argv, comm, executable paths,
//! service and unit names, file paths, error messages quoting them. Any of
//! these can hold what a local user chose, and a terminal obeys escape
//! sequences (clearing the screen, setting the window title, writing the
//! clipboard with OSC 52) and line breaks (a forged event line). Every such
//! string goes through [`printable`] on its way to a terminal; JSON output
//! escapes on its own.

use std::borrow::Cow;
use std::fmt::Write;

/// True for a character a terminal would act on rather than show: C0 and
/// C1 controls, DEL, and the bidirectional overrides that reorder what is
/// shown.
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every control character written as an escape (`\n`, `\t`,
/// `\r`, `\x1b`, `\u{9b}`...), so that it shows as text and stays on its
/// line. Borrowed when there is nothing to escape.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if is_unsafe(c) && (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_and_line_breaks_show_as_text() {
        assert!(matches!(printable("/usr/bin/api --port 80"), Cow::Borrowed(_)));
        assert_eq!(printable("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(printable("\x1b]0;owned\x07"), "\\x1b]0;owned\\x07");
        assert_eq!(printable("\x1b]52;c;ZXZpbA==\x1b\\"), "\\x1b]52;c;ZXZpbA==\\x1b\\");
        assert_eq!(printable("x\n12:00:00 api exec /bin/sh"), "x\\n12:00:00 api exec /bin/sh");
        assert_eq!(printable("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(printable("abc\u{202e}fdp.exe"), "abc\\u{202e}fdp.exe");
        assert_eq!(printable("tab\there\r"), "tab\\there\\r");
        assert_eq!(printable("\x7f"), "\\x7f");
        assert_eq!(printable("café ✓"), "café ✓", "printable text is left alone");
    }
}
