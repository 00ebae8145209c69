//! Text from elsewhere (a program's request, an upstream's words, names an
//! administrator chose, a client certificate's subject) made safe to print
//! on a terminal or to record.

/// `text` with control characters and bidirectional-text controls
/// escaped: none of it may move the cursor, retitle the window or reorder
/// what the user reads.
pub fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() || is_bidi_control(c) {
                c.escape_unicode().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// The Unicode format characters that reorder text on display.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_cannot_drive_the_terminal() {
        assert_eq!(
            super::printable("host\u{1b}]0;pwned\u{7}:443\nnext"),
            "host\\u{1b}]0;pwned\\u{7}:443\\u{a}next"
        );
        assert_eq!(super::printable("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(super::printable("plain: text é"), "plain: text é");
    }
}
