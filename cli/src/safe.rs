//! Terminal safety: text that comes from torrents, peers and trackers (names, file paths, client
//! names, tracker messages, comments) is shown with its control characters escaped, so that a
//! torrent cannot move the cursor, clear the screen or change the terminal's title.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` must not reach a terminal as it is: C0 and C1 controls, DEL, and the Unicode
/// bidirectional overrides and isolates (which reorder what follows them on the line).
pub fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every unsafe character escaped (`\n`, `\t`, `\r`, `\x1b`, `\u{9b}`, `\u{202e}`, and a
/// backslash that starts such an escape-looking sequence left as it is). Borrows when nothing
/// needs escaping, which is the common case.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
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

/// `s` with every line escaped on its own (line breaks kept): for multi-line reports.
pub fn lines(s: &str) -> String {
    s.split('\n').map(escape).collect::<Vec<_>>().join("\n")
}

/// A JSON value as one line, with every character a terminal could act on written as a `\uXXXX`
/// escape (serde_json escapes C0 controls but passes DEL, C1 controls and bidi overrides through).
/// The JSON means the same; only its spelling is safer.
pub fn json(value: &serde_json::Value) -> String {
    json_text(&value.to_string())
}

/// [`json`], pretty-printed.
pub fn json_pretty(value: &serde_json::Value) -> String {
    json_text(&serde_json::to_string_pretty(value).unwrap_or_default())
}

fn json_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        // Outside strings JSON only has ASCII punctuation, digits, letters and whitespace, and
        // serde_json already escaped C0 controls inside strings: what is left is inside strings.
        if is_unsafe(c) && c != '\n' {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_escaped_and_means_the_same() {
        let v = serde_json::json!({"name": "a\u{1b}[2J\u{7f}\u{9b}\u{202e}b\n", "n": 1});
        for text in [json(&v), json_pretty(&v)] {
            assert!(!text.chars().any(|c| is_unsafe(c) && c != '\n'), "{text}");
            let back: serde_json::Value = serde_json::from_str(&text).expect("still JSON");
            assert_eq!(back, v);
        }
    }

    #[test]
    fn lines_keeps_line_breaks() {
        assert_eq!(lines("a\x1b\nb\tc"), "a\\x1b\nb\\tc");
    }

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        assert!(matches!(escape("Ubuntu 24.04 — ok/π"), Cow::Borrowed(_)));
    }

    #[test]
    fn controls_are_escaped() {
        assert_eq!(escape("a\x1b]0;pwned\x07b"), "a\\x1b]0;pwned\\x07b");
        assert_eq!(escape("x\u{9b}2Jy"), "x\\u{9b}2Jy");
        assert_eq!(escape("l\ni\tr\r\x7f"), "l\\ni\\tr\\r\\x7f");
        assert_eq!(escape("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
    }

    #[test]
    fn escaped_output_never_holds_an_unsafe_character() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        assert!(!escape(&all).chars().any(is_unsafe));
    }
}
