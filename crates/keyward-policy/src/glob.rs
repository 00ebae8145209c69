//! Globs compiled once at policy load and matched without allocation (for
//! patterns up to 127 tokens).
//!
//! Two modes, chosen per evaluation by the action type: in *path* mode `*`
//! and `?` stay within a `/`-separated segment, `**` crosses segments and
//! `**/` also matches no directory at all (`**/*.pem` matches `key.pem`); in
//! *text* mode (commands, branches, fields) `*` and `**` match any
//! characters. In both modes a backslash makes the next character literal
//! (`\*`, `\?`, `\\`): a rule that means a literal star must write `\*`.
//! Matching is an NFA simulation over byte positions, so no pattern can
//! make it backtrack exponentially.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Byte(u8),
    /// `?`
    One,
    /// `*`
    Star,
    /// `**` not followed by `/`
    AnyDepth,
    /// `**/`: zero or more whole directories. Two states: `Dirs` (nothing
    /// consumed yet, so it may be skipped) and `DirsInner` (inside a
    /// directory name, which only a `/` can finish).
    Dirs,
    DirsInner,
}

/// Which `*` semantics apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `*` stays within a path segment.
    Path,
    /// `*` matches anything.
    Text,
}

#[derive(Debug, Clone)]
enum Shape {
    /// No wildcard at all.
    Exact(Box<[u8]>),
    /// A literal followed by one trailing `**` (or `*` in text mode only,
    /// decided at match time).
    Prefix(Box<[u8]>, Token),
    /// One leading `*` or `**`, then a literal.
    Suffix(Token, Box<[u8]>),
    /// `*` or `**` alone.
    Everything(Token),
    /// `**/` then a pattern without `/`: in path mode only the last segment
    /// needs matching.
    LastSegment(Box<Glob>),
    /// Anything else: the NFA, after checking that the longest literal run
    /// occurs at all (most patterns fail here, cheaply).
    General(String),
}

/// `literal` as a glob that matches exactly it: `*`, `?` and `\` escaped
/// with a backslash (`\*` is a literal star in every mode).
pub fn escape(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len());
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A compiled glob.
#[derive(Debug, Clone)]
pub struct Glob {
    source: String,
    tokens: Box<[Token]>,
    shape: Shape,
}

impl Glob {
    /// Compiles `pattern`; an empty pattern is an error.
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("empty pattern".to_owned());
        }
        let bytes = pattern.as_bytes();
        let mut tokens = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'*' if bytes.get(i + 1) == Some(&b'*') => {
                    i += 2;
                    while bytes.get(i) == Some(&b'*') {
                        i += 1;
                    }
                    if bytes.get(i) == Some(&b'/') {
                        i += 1;
                        tokens.push(Token::Dirs);
                        tokens.push(Token::DirsInner);
                    } else {
                        tokens.push(Token::AnyDepth);
                    }
                    continue;
                }
                b'*' => tokens.push(Token::Star),
                b'?' => tokens.push(Token::One),
                b'\\' if i + 1 < bytes.len() => {
                    i += 1;
                    tokens.push(Token::Byte(bytes[i]));
                }
                b => tokens.push(Token::Byte(b)),
            }
            i += 1;
        }
        let literal_prefix: Vec<u8> = tokens
            .iter()
            .map_while(|t| match t {
                Token::Byte(b) => Some(*b),
                _ => None,
            })
            .collect();
        let rest = &tokens[literal_prefix.len()..];
        let all_bytes = |ts: &[Token]| -> Option<Vec<u8>> {
            ts.iter()
                .map(|t| match t {
                    Token::Byte(b) => Some(*b),
                    _ => None,
                })
                .collect()
        };
        let shape = match rest {
            [] => Shape::Exact(literal_prefix.into()),
            [t @ (Token::Star | Token::AnyDepth)] if literal_prefix.is_empty() => {
                Shape::Everything(*t)
            }
            [t @ (Token::Star | Token::AnyDepth)] => Shape::Prefix(literal_prefix.into(), *t),
            [t @ (Token::Star | Token::AnyDepth), tail @ ..]
                if literal_prefix.is_empty() && all_bytes(tail).is_some() =>
            {
                Shape::Suffix(*t, all_bytes(tail).unwrap_or_default().into())
            }
            [Token::Dirs, Token::DirsInner, ..]
                if literal_prefix.is_empty()
                    && !pattern[3..].contains('/')
                    && !pattern[3..].contains("**")
                    && !pattern[3..].is_empty() =>
            {
                Shape::LastSegment(Box::new(Glob::new(&pattern[3..])?))
            }
            _ => Shape::General(longest_literal(&tokens)),
        };
        Ok(Self {
            source: pattern.to_owned(),
            tokens: tokens.into(),
            shape,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str, mode: Mode) -> bool {
        let text_str = text;
        let text = text.as_bytes();
        let crosses = |t: Token| mode == Mode::Text || t == Token::AnyDepth;
        match &self.shape {
            // The first byte rejects most candidates without a memcmp call.
            Shape::Exact(lit) => text.first() == lit.first() && **lit == *text,
            Shape::Everything(t) => crosses(*t) || !text.contains(&b'/'),
            Shape::Prefix(lit, t) => {
                text.first() == lit.first()
                    && text.starts_with(lit)
                    && (crosses(*t) || !text[lit.len()..].contains(&b'/'))
            }
            Shape::Suffix(t, lit) => {
                text.ends_with(lit)
                    && (crosses(*t) || !text[..text.len() - lit.len()].contains(&b'/'))
            }
            Shape::LastSegment(inner) if mode == Mode::Path => {
                let start = text.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
                inner.matches(&text_str[start..], mode)
            }
            Shape::General(required)
                if !required.is_empty() && !text_str.contains(required.as_str()) =>
            {
                false
            }
            Shape::LastSegment(_) | Shape::General(_) => {
                if self.tokens.len() < 128 {
                    let mut cur = [0u64; 2];
                    let mut next = [0u64; 2];
                    simulate(&self.tokens, text, mode, &mut cur, &mut next)
                } else {
                    let words = self.tokens.len() / 64 + 1;
                    let mut cur = vec![0u64; words];
                    let mut next = vec![0u64; words];
                    simulate(&self.tokens, text, mode, &mut cur, &mut next)
                }
            }
        }
    }
}

/// One element of a shell glob (an operand the shell expands).
#[derive(Debug, Clone)]
pub(crate) enum ShellToken {
    Byte(u8),
    /// `?`
    One,
    /// `*` (and `**`: bash's globstar is off by default)
    Star,
    /// `[...]`: byte ranges, negated with `!` or `^`.
    Class(bool, Vec<(u8, u8)>),
}

pub(crate) fn shell_tokens(pattern: &str) -> Vec<ShellToken> {
    let b = pattern.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'*' => {
                if !matches!(out.last(), Some(ShellToken::Star)) {
                    out.push(ShellToken::Star);
                }
            }
            b'?' => out.push(ShellToken::One),
            b'[' => {
                // `]` right after `[` or `[!` is a member, not the end.
                let mut j = i + 1;
                let negated = matches!(b.get(j), Some(b'!' | b'^'));
                j += usize::from(negated);
                let body_start = j;
                if b.get(j) == Some(&b']') {
                    j += 1;
                }
                while j < b.len() && b[j] != b']' {
                    j += 1;
                }
                if j >= b.len() {
                    // No closing `]`: a literal `[`.
                    out.push(ShellToken::Byte(b'['));
                    i += 1;
                    continue;
                }
                let body = &b[body_start..j];
                let mut ranges = Vec::new();
                let mut k = 0;
                while k < body.len() {
                    if body.get(k + 1) == Some(&b'-') && k + 2 < body.len() {
                        ranges.push((body[k], body[k + 2]));
                        k += 3;
                    } else {
                        ranges.push((body[k], body[k]));
                        k += 1;
                    }
                }
                out.push(ShellToken::Class(negated, ranges));
                i = j;
            }
            c => out.push(ShellToken::Byte(c)),
        }
        i += 1;
    }
    out
}

impl ShellToken {
    /// Whether the token takes `c`; `segment_start` when `c` would begin a
    /// path segment, where the shell's wildcards never take a leading `.`.
    pub(crate) fn takes(&self, c: u8, segment_start: bool) -> bool {
        let wild_ok = c != b'/' && !(segment_start && c == b'.');
        match self {
            ShellToken::Byte(b) => *b == c,
            ShellToken::One | ShellToken::Star => wild_ok,
            ShellToken::Class(negated, ranges) => {
                wild_ok && ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
            }
        }
    }
}

impl Glob {
    /// Whether a path the shell glob `pattern` can expand to matches this
    /// (path-mode) glob, where at least two bytes of this glob's literal
    /// text (other than `/`) are written literally in `pattern` at that
    /// place:
    /// `~/.ss?/id*` can be `~/.ssh/id_rsa`, matched by `**/.ssh/**`; `src/*`
    /// could only match `**/*.pem` through its `*` alone (a `src/x.pem`
    /// that may not exist), and `logs/*.*` `**/*.key` through a `.`, which
    /// do not count.
    ///
    /// A search of the product of the two automata, over the bytes either
    /// pattern names plus `/`, `.` and one byte neither names.
    pub(crate) fn overlaps_shell_glob(&self, pattern: &str) -> bool {
        let rule = &self.tokens;
        let shell = shell_tokens(pattern);
        let mut alphabet: Vec<u8> = vec![b'/', b'.', 0x01];
        for t in rule.iter() {
            if let Token::Byte(b) = t {
                alphabet.push(*b);
            }
        }
        for t in &shell {
            match t {
                ShellToken::Byte(b) => alphabet.push(*b),
                ShellToken::Class(_, ranges) => {
                    alphabet.extend(ranges.iter().flat_map(|(lo, hi)| [*lo, *hi]));
                }
                _ => {}
            }
        }
        alphabet.sort_unstable();
        alphabet.dedup();
        let (rn, sn) = (rule.len() + 1, shell.len() + 1);
        // State: rule position, shell position, at a segment start, and how
        // many literal bytes both wrote (0, 1, 2 or more).
        let index = |i: usize, j: usize, start: bool, anchored: u8| {
            ((i * sn + j) * 2 + usize::from(start)) * 3 + usize::from(anchored)
        };
        let mut seen = vec![false; rn * sn * 6];
        let mut stack = Vec::new();
        let push = |stack: &mut Vec<_>, seen: &mut Vec<bool>, state: (usize, usize, bool, u8)| {
            let k = index(state.0, state.1, state.2, state.3);
            if !seen[k] {
                seen[k] = true;
                stack.push(state);
            }
        };
        push(&mut stack, &mut seen, (0, 0, true, 0));
        while let Some((i, j, start, anchored)) = stack.pop() {
            if i == rule.len() && j == shell.len() && anchored >= 2 {
                return true;
            }
            // Moves that take no byte.
            match rule.get(i) {
                Some(Token::Star | Token::AnyDepth) => {
                    push(&mut stack, &mut seen, (i + 1, j, start, anchored));
                }
                Some(Token::Dirs) => push(&mut stack, &mut seen, (i + 2, j, start, anchored)),
                _ => {}
            }
            if let Some(ShellToken::Star) = shell.get(j) {
                push(&mut stack, &mut seen, (i, j + 1, start, anchored));
            }
            let (Some(r), Some(t)) = (rule.get(i), shell.get(j)) else {
                continue;
            };
            for &c in &alphabet {
                if !t.takes(c, start) {
                    continue;
                }
                let j2 = if matches!(t, ShellToken::Star) {
                    j
                } else {
                    j + 1
                };
                let both_literal =
                    c != b'/' && matches!(r, Token::Byte(_)) && matches!(t, ShellToken::Byte(_));
                let anchored = (anchored + u8::from(both_literal)).min(2);
                let start = c == b'/';
                let mut to = |i2: usize| push(&mut stack, &mut seen, (i2, j2, start, anchored));
                match r {
                    Token::Byte(b) if *b == c => to(i + 1),
                    Token::One if c != b'/' => to(i + 1),
                    Token::Star if c != b'/' => to(i),
                    Token::AnyDepth => to(i),
                    Token::Dirs => {
                        to(i + 1);
                        if c == b'/' {
                            to(i + 2);
                        }
                    }
                    Token::DirsInner => {
                        to(i);
                        if c == b'/' {
                            to(i + 1);
                        }
                    }
                    _ => {}
                }
            }
        }
        false
    }
}

/// The longest run of literal characters, for a cheap containment test.
fn longest_literal(tokens: &[Token]) -> String {
    let mut best: &[Token] = &[];
    for run in tokens.split(|t| !matches!(t, Token::Byte(_))) {
        if run.len() > best.len() {
            best = run;
        }
    }
    let bytes: Vec<u8> = best
        .iter()
        .filter_map(|t| match t {
            Token::Byte(b) => Some(*b),
            _ => None,
        })
        .collect();
    // A run cut inside a multi-byte character cannot be searched as text.
    String::from_utf8(bytes).unwrap_or_default()
}

fn set(bits: &mut [u64], i: usize) {
    bits[i / 64] |= 1 << (i % 64);
}

fn get(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

/// Adds the states reachable without consuming input: every wildcard that
/// may match nothing can be skipped. Tokens only move forward, so one pass
/// in order suffices.
fn close(tokens: &[Token], bits: &mut [u64]) {
    for (i, t) in tokens.iter().enumerate() {
        if get(bits, i) {
            match t {
                Token::Star | Token::AnyDepth => set(bits, i + 1),
                Token::Dirs => set(bits, i + 2),
                _ => {}
            }
        }
    }
}

fn simulate(tokens: &[Token], text: &[u8], mode: Mode, cur: &mut [u64], next: &mut [u64]) -> bool {
    cur.fill(0);
    set(cur, 0);
    close(tokens, cur);
    for &c in text {
        next.fill(0);
        let mut any = false;
        for (i, t) in tokens.iter().enumerate() {
            if !get(cur, i) {
                continue;
            }
            let sep = c == b'/' && mode == Mode::Path;
            match t {
                Token::Byte(b) if *b == c => set(next, i + 1),
                Token::One if !sep => set(next, i + 1),
                Token::Star if !sep => set(next, i),
                Token::AnyDepth => set(next, i),
                Token::Dirs | Token::DirsInner => {
                    set(next, if *t == Token::Dirs { i + 1 } else { i });
                    if c == b'/' {
                        set(next, i + 2 - usize::from(*t == Token::DirsInner));
                    }
                }
                _ => continue,
            }
            any = true;
        }
        if !any {
            return false;
        }
        close(tokens, next);
        cur.copy_from_slice(next);
    }
    get(cur, tokens.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str, t: &str) -> bool {
        Glob::new(p).unwrap().matches(t, Mode::Path)
    }
    fn text(p: &str, t: &str) -> bool {
        Glob::new(p).unwrap().matches(t, Mode::Text)
    }

    #[test]
    fn path_stars_stay_in_a_segment_and_double_stars_cross() {
        assert!(path("*.pem", "key.pem"));
        assert!(!path("*.pem", "certs/key.pem"));
        assert!(path("**/*.pem", "key.pem"));
        assert!(path("**/*.pem", "a/b/key.pem"));
        assert!(path("**/*.pem", "/abs/key.pem"));
        assert!(!path("**/*.pem", "a/b/key.pem.txt"));
        assert!(path("src/**", "src/a/b.rs"));
        assert!(!path("src/*", "src/a/b.rs"));
        assert!(path("src/*", "src/a"));
        assert!(path("**/id_rsa*", "/home/u/.ssh/id_rsa.pub"));
        assert!(path("a/**/b", "a/b"));
        assert!(path("a/**/b", "a/x/y/b"));
        assert!(!path("a/**/b", "a/xb"));
        assert!(path("file?.txt", "file1.txt"));
        assert!(!path("file?.txt", "file/.txt"));
        assert!(path("*", "anything"));
        assert!(!path("*", "a/b"));
        assert!(path("**", "a/b"));
        assert!(path(".env", ".env"));
        assert!(!path(".env", "x.env"));
        assert!(path(r"literal\*", "literal*"));
        assert!(!path(r"literal\*", "literalx"));
    }

    #[test]
    fn a_backslash_makes_the_next_character_literal_in_every_mode() {
        for mode in [Mode::Path, Mode::Text] {
            let m = |p: &str, t: &str| Glob::new(p).unwrap().matches(t, mode);
            assert!(m(r"/\*", "/*"));
            assert!(!m(r"/\*", "/tmp"));
            assert!(!m(r"/\*", "/tmp/build"));
            assert!(m(r"what\?", "what?"));
            assert!(!m(r"what\?", "whats"));
            assert!(m(r"a\\b", r"a\b"));
            assert!(m(r"$HOME/\*", "$HOME/*"));
            assert!(!m(r"$HOME/\*", "$HOME/src"));
            // A trailing backslash is itself.
            assert!(m("a\\", "a\\"));
        }
        for literal in ["/*", "a?b", r"c:\x\*", "**", "plain"] {
            let g = Glob::new(&escape(literal)).unwrap();
            assert!(g.matches(literal, Mode::Text), "{literal}");
            assert!(g.matches(literal, Mode::Path), "{literal}");
            assert!(!g.matches(&format!("{literal}x"), Mode::Text), "{literal}");
        }
        assert!(
            !Glob::new(&escape("*"))
                .unwrap()
                .matches("anything", Mode::Text)
        );
    }

    #[test]
    fn text_stars_match_anything() {
        assert!(text(
            "terraform destroy*",
            "terraform destroy -auto-approve"
        ));
        assert!(!text("terraform destroy*", "terraform plan"));
        assert!(text("*| sh*", "curl https://x/install | sh"));
        assert!(text("*| sh*", "curl x | sh -s"));
        assert!(!text("*| sh*", "ls |sh"));
        assert!(text("git push --force*", "git push --force origin main"));
        assert!(text("acme/*", "acme/infra/deep"));
        assert!(text("*", ""));
        assert!(!text("a", ""));
    }

    #[test]
    fn shell_globs_overlap_the_paths_they_can_name_literally() {
        let overlaps =
            |rule: &str, operand: &str| Glob::new(rule).unwrap().overlaps_shell_glob(operand);
        assert!(overlaps("**/.ssh/**", "~/.ss?/id*"));
        assert!(overlaps("**/.ssh/**", "~/.ssh/*"));
        assert!(overlaps("**/id_rsa*", "~/.ss?/id*"));
        assert!(overlaps("**/.aws/credentials", "/root/.aws/cred*"));
        assert!(overlaps(
            "**/.aws/credentials",
            "/root/.[a-z]ws/credentials"
        ));
        assert!(overlaps("**/.env", ".e*"));
        assert!(overlaps("**/*.pem", "certs/*.pem"));
        assert!(overlaps("**/.ssh/**", "/home/*/.ssh/*"));
        // Only through a wildcard: a file that may not exist.
        assert!(!overlaps("**/*.pem", "src/*"));
        assert!(!overlaps("**/*.key", "logs/*.*"));
        // A wildcard never takes a leading dot.
        assert!(!overlaps("**/.ssh/**", "~/*/id_rsa"));
        assert!(!overlaps("**/.env", "*"));
        assert!(!overlaps("**/.ssh/**", "src/*.rs"));
        assert!(!overlaps("**/.aws/credentials", "/root/.aws/config*"));
        assert!(!overlaps("**/.ssh/**", "~/.sh?/x"));
        assert!(!overlaps("**/id_rsa*", "[!i]d_rsa"));
    }

    #[test]
    fn long_and_pathological_patterns_terminate() {
        let p = "*a".repeat(100);
        let t = "a".repeat(5000) + "b";
        assert!(!text(&p, &t));
        assert!(text(&p, &"a".repeat(200)));
        let g = Glob::new(&"**/".repeat(70)).unwrap();
        assert!(g.matches("x/", Mode::Path));
    }
}
