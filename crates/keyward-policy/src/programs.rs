//! Programs given to a tool as text (a sed script, an awk program): what a
//! read-only tool can still be made to do. `sed 's/a/b/e'` runs the line as
//! a command and `w file` writes one; awk's `system()`, pipes and
//! redirections do the same. A program that comes from a file (`-f`)
//! cannot be read, so it counts as unsafe too.

use crate::shell::{Command, Word};

/// Whether `command`'s inline program can run commands, write files, read
/// other files or load code, or cannot be read. Only sed and awk have
/// programs here; any other command has none.
pub(crate) fn unsafe_program(command: &Command) -> bool {
    match command.name() {
        "sed" | "gsed" => sed(&command.argv),
        "awk" | "gawk" | "mawk" | "nawk" | "busybox-awk" => awk(&command.argv),
        _ => false,
    }
}

/// The scripts of a tool: the values of `script_options` (attached or in
/// the next word), else its first operand. `None` when a script comes from
/// a file or computed at run time.
fn scripts<'a>(
    argv: &'a [Word],
    value_short: &str,
    short: char,
    long: &[&str],
    file_short: char,
    file_long: &[&str],
) -> Option<Vec<&'a str>> {
    let mut out = Vec::new();
    let mut first_operand = None;
    let mut words = argv[1..].iter();
    while let Some(word) = words.next() {
        let text = word.text.as_str();
        if text == "--" {
            first_operand = first_operand.or(words.next());
            break;
        }
        if let Some(rest) = text.strip_prefix("--") {
            let (name, value) = match rest.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (rest, None),
            };
            let abbreviates = |full: &&str| full.starts_with(name) && !name.is_empty();
            if file_long.iter().any(abbreviates) {
                return None;
            }
            if long.iter().any(abbreviates) {
                let script = match value {
                    Some(v) => v,
                    None => &words.next()?.text,
                };
                out.push(script);
            }
            continue;
        }
        if let Some(cluster) = text.strip_prefix('-').filter(|c| !c.is_empty()) {
            for (at, c) in cluster.char_indices() {
                if c == file_short {
                    return None;
                }
                if c == short {
                    let attached = &cluster[at + 1..];
                    let script = if attached.is_empty() {
                        let next = words.next()?;
                        if next.dynamic {
                            return None;
                        }
                        next.text.as_str()
                    } else {
                        attached
                    };
                    out.push(script);
                    break;
                }
                if value_short.contains(c) {
                    if at + c.len_utf8() == cluster.len() {
                        words.next();
                    }
                    break;
                }
                if !c.is_ascii_alphanumeric() {
                    break;
                }
            }
            continue;
        }
        if first_operand.is_none() {
            first_operand = Some(word);
        }
    }
    if out.is_empty() {
        let word = first_operand?;
        if word.dynamic {
            return None;
        }
        out.push(&word.text);
    }
    Some(out)
}

fn sed(argv: &[Word]) -> bool {
    let Some(scripts) = scripts(argv, "l", 'e', &["expression"], 'f', &["file"]) else {
        return true;
    };
    scripts.iter().any(|s| !sed_script_is_safe(s))
}

/// Reads a sed script command by command; `e`, `w`, `W`, `r`, `R` and the
/// `e` and `w` flags of `s` make it unsafe, and so does anything not
/// understood.
fn sed_script_is_safe(script: &str) -> bool {
    let b = script.as_bytes();
    let mut i = 0;
    // Skips a delimited part (`/re/`, the halves of `s` and `y`) whose
    // opening delimiter is at `i`; returns the index after the closing one.
    let delimited = |mut i: usize, delim: u8| -> Option<usize> {
        i += 1;
        while i < b.len() {
            match b[i] {
                b'\\' => i += 2,
                c if c == delim => return Some(i + 1),
                b'\n' if delim != b'\n' => return None,
                _ => i += 1,
            }
        }
        None
    };
    let address = |mut i: usize| -> Option<usize> {
        match b.get(i) {
            Some(b'/') => delimited(i, b'/'),
            Some(b'\\') => {
                let d = *b.get(i + 1)?;
                delimited(i + 1, d)
            }
            Some(b'$') => Some(i + 1),
            Some(c) if c.is_ascii_digit() => {
                while b.get(i).is_some_and(|c| c.is_ascii_digit() || *c == b'~') {
                    i += 1;
                }
                Some(i)
            }
            _ => Some(i),
        }
    };
    let to_end_of_command = |mut i: usize| {
        while i < b.len() && !matches!(b[i], b';' | b'\n' | b'}') {
            i += 1;
        }
        i
    };
    while i < b.len() {
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b';') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let Some(next) = address(i) else { return false };
        i = next;
        if b.get(i) == Some(&b',') {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'~')) {
                i += 1;
            }
            let Some(next) = address(i) else { return false };
            i = next;
        }
        while matches!(b.get(i), Some(b' ' | b'\t' | b'!')) {
            i += 1;
        }
        let Some(&command) = b.get(i) else { break };
        i += 1;
        match command {
            b'{' | b'}' | b'=' | b'd' | b'D' | b'g' | b'G' | b'h' | b'H' | b'n' | b'N' | b'p'
            | b'P' | b'x' | b'z' | b'F' => {}
            b'l' | b'L' | b'q' | b'Q' => {
                while b.get(i).is_some_and(|c| c.is_ascii_digit() || *c == b' ') {
                    i += 1;
                }
            }
            b'a' | b'i' | b'c' => {
                // The text runs to the end of the line.
                while i < b.len() && b[i] != b'\n' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b':' | b'b' | b't' | b'T' => i = to_end_of_command(i),
            b's' | b'y' => {
                let Some(&delim) = b.get(i) else {
                    return false;
                };
                if delim == b'\\' || delim == b'\n' {
                    return false;
                }
                let Some(mid) = delimited(i, delim) else {
                    return false;
                };
                let Some(end) = delimited(mid - 1, delim) else {
                    return false;
                };
                i = end;
                if command == b's' {
                    while let Some(&flag) = b.get(i) {
                        match flag {
                            b'g' | b'p' | b'i' | b'I' | b'm' | b'M' | b'0'..=b'9' => i += 1,
                            b'e' | b'w' | b'W' => return false,
                            b';' | b'\n' | b'}' | b' ' | b'\t' => break,
                            _ => return false,
                        }
                    }
                }
            }
            // e, w, W, r, R, v and anything else.
            _ => return false,
        }
    }
    true
}

fn awk(argv: &[Word]) -> bool {
    // gawk's -i/--include, -l/--load and -E/--exec load code or take the
    // program from a file.
    let loads = argv[1..].iter().take_while(|w| w.text != "--").any(|w| {
        let t = w.text.as_str();
        matches!(t, "-i" | "-l" | "-E")
            || ["--include", "--load", "--exec"].iter().any(|o| {
                t.split('=')
                    .next()
                    .is_some_and(|n| n.len() > 3 && o.starts_with(n))
            })
            || (t.starts_with("-i") || t.starts_with("-l")) && !t.starts_with("--")
    });
    if loads {
        return true;
    }
    let Some(programs) = scripts(argv, "vF", '\u{0}', &["source"], 'f', &["file"]) else {
        return true;
    };
    programs.iter().any(|p| !awk_program_is_safe(p))
}

/// An awk program without `system`, pipes (`|`, not `||`), `getline`,
/// `@load`/`@include`, and without `>` inside a `print` or `printf`
/// statement (a redirection; elsewhere `>` compares).
fn awk_program_is_safe(program: &str) -> bool {
    if ["system", "getline", "@load", "@include", "@namespace"]
        .iter()
        .any(|w| program.contains(w))
    {
        return false;
    }
    let b = program.as_bytes();
    let mut in_print = false;
    let mut in_string = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match c {
            b'"' => in_string = true,
            b'|' if b.get(i + 1) == Some(&b'|') => i += 1,
            b'|' => return false,
            b'>' if in_print => return false,
            b';' | b'\n' | b'}' | b'{' => in_print = false,
            b'p' if program[i..].starts_with("print")
                && (i == 0 || !b[i - 1].is_ascii_alphanumeric() && b[i - 1] != b'_') =>
            {
                in_print = true;
            }
            _ => {}
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(line: &[&str]) -> Command {
        Command {
            argv: line
                .iter()
                .map(|w| Word {
                    text: (*w).to_owned(),
                    dynamic: *w == "$S",
                    pattern: false,
                })
                .collect(),
            ..Command::default()
        }
    }

    #[test]
    fn sed_scripts_that_run_or_write_are_found() {
        for safe in [
            &["sed", "-n", "1,5p", "f"][..],
            &["sed", "s/a/b/g", "f"],
            &["sed", "-e", "s/x/y/", "-e", "/^#/d", "f"],
            &["sed", "-E", "s|a|b|2;10q", "f"],
            &["sed", "/error/p", "log"],
            &["sed", "-n", "$p", "f"],
            &["sed", "y/abc/xyz/"],
            &["sed", "--expression=s/w/e/", "f"],
            &["sed", "/start/,/end/{s/a/b/;p}", "f"],
            &["sed", "1i header", "f"],
        ] {
            assert!(!unsafe_program(&cmd(safe)), "{safe:?}");
        }
        for bad in [
            &["sed", "s/a/b/e", "f"][..],
            &["sed", "1e id", "f"],
            &["sed", "w out", "f"],
            &["sed", "s/a/b/w /etc/passwd", "f"],
            &["sed", "-n", "1r /etc/shadow", "f"],
            &["sed", "-e", "p", "-e", "e date"],
            &["sed", "-f", "script.sed", "f"],
            &["sed", "--file=s.sed", "f"],
            &["sed", "$S", "f"],
            &["sed", "-es/a/b/e", "f"],
            &["sed", "/x/W out", "f"],
        ] {
            assert!(unsafe_program(&cmd(bad)), "{bad:?}");
        }
    }

    #[test]
    fn awk_programs_that_run_or_write_are_found() {
        for safe in [
            &["awk", "{print $1}", "f"][..],
            &["awk", "-F:", "$3 > 1000 {print $1}", "/etc/passwd"],
            &["awk", "NR==1 || /x/", "f"],
            &["awk", "{ if ($2 > 5) print \"big >\" }", "f"],
            &["awk", "-v", "x=1", "{s+=$1} END {print s}"],
        ] {
            assert!(!unsafe_program(&cmd(safe)), "{safe:?}");
        }
        for bad in [
            &["awk", "BEGIN{system(\"id\")}"][..],
            &["awk", "{print | \"sh\"}", "f"],
            &["awk", "{print > \"/etc/x\"}", "f"],
            &["awk", "{printf \"%s\", $0 >> \"out\"}", "f"],
            &["awk", "BEGIN{\"id\" | getline x}"],
            &["awk", "-f", "prog.awk", "f"],
            &["gawk", "-l", "ext", "1"],
            &["awk", "@load \"x\"; 1"],
        ] {
            assert!(unsafe_program(&cmd(bad)), "{bad:?}");
        }
    }
}
