//! The one rule for text a caller sends (every string field of every RPC
//! that is stored or shown to someone): a length limit in characters, no
//! control characters (a free-text field may hold tab and line breaks), and
//! no bidirectional embedding, override or isolate characters, which make
//! text display as something other than what it says (a customer id that
//! reads `cust-1` but sorts and matches as another). Each refusal says what
//! was found, where, and how to fix it.

/// What kind of text a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// A name, reference or key on one line: no control character at all.
    Line,
    /// Free text a person writes (a summary, a note, a comment): tab, line
    /// feed and carriage return are allowed.
    Free,
}

/// Whether `c` is a bidirectional embedding, override or isolate control
/// (U+202A–U+202E, U+2066–U+2069). The implicit marks (U+200E, U+200F,
/// U+061C) stay allowed: right-to-left text needs them and they cannot
/// reorder what follows.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Checks `value` of the field `kind` holds against the rule, with at most
/// `max_chars` characters. The error says what is wrong and how to fix it
/// (the caller prefixes the field's name).
pub fn check(value: &str, kind: TextKind, max_chars: usize) -> Result<(), String> {
    let mut count = 0usize;
    for (i, c) in value.chars().enumerate() {
        count += 1;
        let allowed_control = kind == TextKind::Free && matches!(c, '\t' | '\n' | '\r');
        if c.is_control() && !allowed_control {
            return Err(format!(
                "contains the control character U+{:04X} at character {}; use printable text{}",
                c as u32,
                i + 1,
                match kind {
                    TextKind::Free => " (tab and line breaks are allowed here)",
                    TextKind::Line => " on one line",
                }
            ));
        }
        if is_bidi_control(c) {
            return Err(format!(
                "contains the bidirectional control U+{:04X} at character {}, which makes text display differently from what it is; remove it",
                c as u32,
                i + 1
            ));
        }
    }
    if count > max_chars {
        return Err(format!(
            "is {count} characters long; shorten it to at most {max_chars}"
        ));
    }
    Ok(())
}

/// Inputs every string field must refuse, each with the word its error
/// names: the shared list the services' table-driven tests run through
/// every field.
pub const BAD_TEXT: &[(&str, &str)] = &[
    ("nul\u{0}byte", "U+0000"),
    ("bell\u{7}", "U+0007"),
    ("back\u{8}space", "U+0008"),
    ("escape\u{1b}[31m", "U+001B"),
    ("c1\u{85}control", "U+0085"),
    ("tnemyap\u{202E}", "U+202E"),
    ("isolate\u{2067}x\u{2069}", "U+2067"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_input_is_refused_naming_what_was_found() {
        for kind in [TextKind::Line, TextKind::Free] {
            for (bad, found) in BAD_TEXT {
                let e = check(bad, kind, 100).unwrap_err();
                assert!(e.contains(found), "{bad:?} as {kind:?}: {e}");
            }
        }
    }

    #[test]
    fn free_text_keeps_its_line_breaks_and_lines_do_not() {
        let note = "line one\n\tline two\r\nthree";
        assert!(check(note, TextKind::Free, 100).is_ok());
        let e = check(note, TextKind::Line, 100).unwrap_err();
        assert!(e.contains("U+000A") && e.contains("at character 9"), "{e}");
    }

    #[test]
    fn printable_text_of_any_script_passes_and_length_counts_characters() {
        for ok in ["Zoë", "مرحبا\u{200F} 42", "東京", "emoji 🙂", ""] {
            assert!(check(ok, TextKind::Line, 20).is_ok(), "{ok}");
        }
        assert!(check(&"é".repeat(10), TextKind::Line, 10).is_ok());
        let e = check(&"é".repeat(11), TextKind::Line, 10).unwrap_err();
        assert!(
            e.contains("11 characters") && e.contains("at most 10"),
            "{e}"
        );
    }
}
