//! Splitting a Windows command line into argv, by the rules of
//! `CommandLineToArgvW` and the Microsoft C runtime (2008 and later), which
//! is how almost every Windows program sees its own arguments.

/// Splits `line` into at most `max_args` arguments; the flag says whether
/// arguments were cut.
///
/// - The program name (argv[0]) ends at the next `"` when it starts with
///   one, else at the first space or tab; backslashes in it are literal.
/// - After it: whitespace outside quotes separates arguments; `2n`
///   backslashes before a `"` give `n` backslashes and the quote toggles
///   quoting; `2n+1` give `n` backslashes and a literal `"`; other
///   backslashes are literal; inside quotes `""` is a literal `"`.
pub fn split_command_line(line: &str, max_args: usize) -> (Vec<String>, bool) {
    let mut args = Vec::new();
    let mut chars = line.chars().peekable();
    while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
    if chars.peek().is_none() {
        return (args, false);
    }

    let mut program = String::new();
    if chars.next_if_eq(&'"').is_some() {
        for c in chars.by_ref() {
            if c == '"' {
                break;
            }
            program.push(c);
        }
    } else {
        while let Some(c) = chars.next_if(|c| *c != ' ' && *c != '\t') {
            program.push(c);
        }
    }
    args.push(program);

    loop {
        while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
        if chars.peek().is_none() {
            break;
        }
        if args.len() >= max_args {
            return (args, true);
        }
        let mut arg = String::new();
        let mut in_quotes = false;
        while let Some(&c) = chars.peek() {
            match c {
                '\\' => {
                    let mut n = 0;
                    while chars.next_if_eq(&'\\').is_some() {
                        n += 1;
                    }
                    if chars.peek() == Some(&'"') {
                        arg.extend(std::iter::repeat_n('\\', n / 2));
                        if n % 2 == 1 {
                            chars.next();
                            arg.push('"');
                        }
                    } else {
                        arg.extend(std::iter::repeat_n('\\', n));
                    }
                }
                '"' => {
                    chars.next();
                    if in_quotes && chars.next_if_eq(&'"').is_some() {
                        arg.push('"');
                    } else {
                        in_quotes = !in_quotes;
                    }
                }
                ' ' | '\t' if !in_quotes => break,
                _ => {
                    chars.next();
                    arg.push(c);
                }
            }
        }
        args.push(arg);
    }
    if args.len() > max_args {
        args.truncate(max_args);
        return (args, true);
    }
    (args, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<String> {
        split_command_line(s, 64).0
    }

    #[test]
    fn program_name_keeps_backslashes_and_spaces_in_quotes() {
        assert_eq!(
            split(r#""C:\Program Files\Api\api.exe" --port 8080"#),
            [r"C:\Program Files\Api\api.exe", "--port", "8080"]
        );
        assert_eq!(split(r"C:\svc\api.exe"), [r"C:\svc\api.exe"]);
        assert_eq!(split("   \t "), Vec::<String>::new());
    }

    #[test]
    fn documented_examples_split_like_the_c_runtime() {
        // The table of "Parsing C++ command-line arguments".
        assert_eq!(split(r#"p "a b c" d e"#), ["p", "a b c", "d", "e"]);
        assert_eq!(split(r#"p "ab\"c" "\\" d"#), ["p", r#"ab"c"#, r"\", "d"]);
        assert_eq!(split(r#"p a\\\b d"e f"g h"#), ["p", r"a\\\b", "de fg", "h"]);
        assert_eq!(split(r#"p a\\\"b c d"#), ["p", r#"a\"b"#, "c", "d"]);
        assert_eq!(split(r#"p a\\\\"b c" d e"#), ["p", r"a\\b c", "d", "e"]);
        assert_eq!(split(r#"p a"b"" c d"#), ["p", r#"ab" c d"#]);
    }

    #[test]
    fn empty_quoted_arguments_are_kept() {
        assert_eq!(split(r#"p "" x"#), ["p", "", "x"]);
    }

    #[test]
    fn arguments_beyond_the_bound_are_cut_and_flagged() {
        assert_eq!(split_command_line("p a b c", 3), (vec!["p".into(), "a".into(), "b".into()], true));
        assert_eq!(split_command_line("p a b", 3), (vec!["p".into(), "a".into(), "b".into()], false));
        assert_eq!(split_command_line("p a", 1), (vec!["p".into()], true));
    }
}
