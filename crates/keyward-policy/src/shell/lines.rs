//! What one command of a line leaves to the next: positional parameters
//! (`set -- apply; terraform "$@"`) and downloaded files (`curl -o f URL &&
//! sh f`). Followed in the order the shell reaches the parts.

use super::launchers::SHELLS;
use super::{Command, Part, Word};

/// Programs that download a URL to a file.
const DOWNLOADERS: &[&str] = &[
    "curl",
    "wget",
    "aria2c",
    "fetch",
    "http",
    "https",
    "xh",
    "xhs",
    "lwp-download",
];

/// Whether `name` runs a file given as its first operand as code: shells,
/// `source` and the interpreters (any `python3.N`, `pypy3`, `php8.2`, ...).
pub(crate) fn runs_scripts(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "python",
        "pypy",
        "php",
        "perl",
        "ruby",
        "lua",
        "luajit",
        "node",
        "nodejs",
        "deno",
        "bun",
        "tclsh",
        "wish",
        "Rscript",
        "osascript",
        "jruby",
        "jython",
        "irb",
        "racket",
        "guile",
        "awk",
        "gawk",
        "expect",
    ];
    SHELLS.contains(&name)
        || matches!(name, "source" | "." | "fish" | "tcsh" | "csh" | "exec")
        || PREFIXES.iter().any(|p| {
            name.strip_prefix(p)
                .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
        })
}

/// Replaces the positional parameters in `command`'s words (`"$@"`, `$1`,
/// `$0`) by the words they hold; a word that only contains one is left.
pub(super) fn substitute(command: &mut Command, zero: Option<&Word>, params: &[Word]) {
    if !command.argv.iter().any(|w| w.dynamic) {
        return;
    }
    let mut argv = Vec::with_capacity(command.argv.len() + params.len());
    for word in command.argv.drain(..) {
        let text = word.text.as_str();
        match text {
            "$@" | "$*" if word.dynamic => argv.extend(params.iter().cloned()),
            "$0" if word.dynamic && zero.is_some() => argv.extend(zero.cloned()),
            _ if word.dynamic
                && text.len() == 2
                && text.starts_with('$')
                && text.as_bytes()[1].is_ascii_digit()
                && text.as_bytes()[1] != b'0' =>
            {
                let n = usize::from(text.as_bytes()[1] - b'1');
                // An unset parameter is the empty word, which the shell drops.
                argv.extend(params.get(n).cloned());
            }
            _ => argv.push(word),
        }
    }
    command.argv = argv;
}

/// Follows positional parameters and downloaded files through `parts`.
pub(super) fn follow(parts: &mut [Part]) {
    let mut params: Option<Vec<Word>> = None;
    let mut downloads: Vec<(String, String)> = Vec::new();
    let mut downloader: Option<String> = None;
    for part in parts.iter_mut() {
        match part {
            Part::Command(command) => {
                if let Some(params) = &params {
                    substitute(command, None, params);
                }
                if command.name() == "set"
                    && let Some(new) = set_parameters(&command.argv)
                {
                    params = Some(new);
                }
                if !downloads.is_empty() {
                    mark_runs(command, &downloads);
                }
                downloader = None;
                let name = command.name();
                if DOWNLOADERS.contains(&name) {
                    for file in downloaded_files(&command.argv) {
                        downloads.push((file, name.to_owned()));
                    }
                    downloader = Some(name.to_owned());
                } else if name == "tee"
                    && let Some(from) = command
                        .inputs
                        .iter()
                        .find(|i| DOWNLOADERS.contains(&i.as_str()))
                {
                    for word in command.argv[1..]
                        .iter()
                        .filter(|w| !w.text.starts_with('-'))
                    {
                        downloads.push((clean(&word.text).to_owned(), from.clone()));
                    }
                }
            }
            Part::File { write: true, path } => {
                if let Some(from) = &downloader {
                    downloads.push((clean(path).to_owned(), from.clone()));
                }
            }
            _ => {}
        }
    }
}

/// `set -- a b` or `set a b`: the new positional parameters.
fn set_parameters(argv: &[Word]) -> Option<Vec<Word>> {
    let mut words = argv[1..].iter().peekable();
    while let Some(word) = words.peek() {
        match word.text.as_str() {
            "--" => {
                words.next();
                return Some(words.cloned().collect());
            }
            "-o" | "+o" => {
                words.next();
                words.next();
            }
            t if t.starts_with(['-', '+']) => {
                words.next();
            }
            _ => return Some(words.cloned().collect()),
        }
    }
    None
}

fn clean(path: &str) -> &str {
    let mut path = path;
    while let Some(rest) = path.strip_prefix("./") {
        path = rest;
    }
    path
}

/// The files a downloader writes: its `-o`/`-O`/`--output...` values, and
/// the last path segment of each URL (curl -O, wget's default).
fn downloaded_files(argv: &[Word]) -> Vec<String> {
    let mut out: Vec<String> = crate::effects::output_files(argv)
        .iter()
        .map(|w| clean(&w.text).to_owned())
        .collect();
    for word in &argv[1..] {
        let text = word.text.as_str();
        if let Some((_, rest)) = text.split_once("://") {
            let path = rest.split(['?', '#']).next().unwrap_or_default();
            if let Some((_, last)) = path.rsplit_once('/')
                && !last.is_empty()
            {
                out.push(last.to_owned());
            }
        }
    }
    out
}

/// Marks `command` when it runs one of the downloaded files.
fn mark_runs(command: &mut Command, downloads: &[(String, String)]) {
    let Some(first) = command.argv.first() else {
        return;
    };
    let is_download = |text: &str| {
        let text = clean(text);
        downloads
            .iter()
            .filter(|(file, _)| file == text)
            .map(|(_, from)| from.clone())
            .collect::<Vec<_>>()
    };
    let mut from = is_download(&first.text);
    if runs_scripts(command.name()) {
        for word in &command.argv[1..] {
            from.extend(is_download(&word.text));
        }
    }
    for name in from {
        if !command.runs_download.contains(&name) {
            command.runs_download.push(name);
        }
    }
}
