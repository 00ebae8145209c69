//! The files a command reads, writes or removes through its operands, so
//! that a shell line is decided by the same `read_file`, `write_file` and
//! `delete_file` rules as the requests it amounts to: `cat ~/.ssh/id_rsa`
//! is a read of the key, `cp x ~/.bash_profile` and `tee -a /etc/sudoers`
//! are writes, `dd of=/dev/sda` writes a disk.

use crate::shell::{Command, Word};

/// How a command uses a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
    Delete,
}

impl Access {
    /// The action type a request for this use would have.
    pub fn action(self) -> &'static str {
        match self {
            Access::Read => "read_file",
            Access::Write => "write_file",
            Access::Delete => "delete_file",
        }
    }

    /// How the use is shown (`cat < f`, `> f`).
    pub fn sign(self) -> &'static str {
        match self {
            Access::Read => "<",
            Access::Write => ">",
            Access::Delete => "rm",
        }
    }
}

/// One file operand: its use, and its text (`None` when it is computed at
/// run time, so no rule can see which file it is).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FileUse {
    pub access: Access,
    pub path: Option<String>,
    /// The operand is a glob the shell expands (`~/.ss?/id*`).
    pub pattern: bool,
    /// The command reads everything below the operand when it is a
    /// directory (`grep -r`, `rg`, `cp -r`, `tar c`).
    pub recursive: bool,
}

/// A tool whose operands are files.
struct Tool {
    /// Short options that take the next word (or an attached value).
    value: &'static str,
    /// Long options that take the next word.
    long_value: &'static [&'static str],
    /// The first operand is a pattern or program unless one of these short
    /// options gave it (grep's `-e`, sed's `-e`).
    program_first: Option<&'static str>,
    /// Short options whose value is a file the tool reads (grep `-f`).
    reads_value: &'static str,
    /// Short options whose value is a file the tool writes (sort `-o`).
    writes_value: &'static str,
}

const PLAIN: Tool = Tool {
    value: "",
    long_value: &[],
    program_first: None,
    reads_value: "",
    writes_value: "",
};

/// Readers whose operands are files they print or search (not `ls`,
/// `stat` or `find`, which show names and metadata).
fn reader(name: &str) -> Option<Tool> {
    Some(match name {
        "cat" | "tac" | "nl" | "less" | "more" | "most" | "wc" | "paste" | "join" | "comm"
        | "diff" | "diff3" | "sdiff" | "cmp" | "file" | "od" | "xxd" | "hexdump" | "hd"
        | "strings" | "base64" | "base32" | "basenc" | "md5sum" | "sha1sum" | "sha224sum"
        | "sha256sum" | "sha384sum" | "sha512sum" | "b2sum" | "cksum" | "sum" | "fold" | "fmt"
        | "expand" | "unexpand" | "column" | "rev" | "bat" | "batcat" | "zcat" | "zless"
        | "bzcat" | "xzcat" | "zstdcat" | "lz4cat" | "pr" | "look" | "iconv" | "csplit" => PLAIN,
        "head" | "tail" => Tool {
            value: "ncs",
            long_value: &["--lines", "--bytes", "--sleep-interval", "--pid"],
            ..PLAIN
        },
        "cut" => Tool {
            value: "bcdf",
            ..PLAIN
        },
        "sort" => Tool {
            value: "tkoSTz",
            long_value: &[
                "--key",
                "--field-separator",
                "--buffer-size",
                "--temporary-directory",
            ],
            writes_value: "o",
            ..PLAIN
        },
        "uniq" => Tool {
            value: "fsw",
            ..PLAIN
        },
        "grep" | "egrep" | "fgrep" | "zgrep" => Tool {
            value: "efmABCdD",
            long_value: &["--regexp", "--file", "--max-count", "--context", "--label"],
            program_first: Some("ef"),
            reads_value: "f",
            ..PLAIN
        },
        "rg" => Tool {
            value: "efgtTmABCjMrE",
            long_value: &[
                "--regexp",
                "--file",
                "--glob",
                "--iglob",
                "--type",
                "--type-not",
                "--max-count",
                "--context",
                "--replace",
                "--threads",
                "--max-depth",
                "--encoding",
                "--sort",
                "--sortr",
                "--type-add",
                "--color",
                "--colors",
                "--pre",
                "--pre-glob",
            ],
            program_first: Some("ef"),
            reads_value: "f",
            ..PLAIN
        },
        "ag" | "ack" => Tool {
            value: "GgmABC",
            program_first: Some(""),
            ..PLAIN
        },
        "sed" | "gsed" => Tool {
            value: "efl",
            long_value: &["--expression", "--file", "--line-length"],
            program_first: Some("ef"),
            reads_value: "f",
            ..PLAIN
        },
        "awk" | "gawk" | "mawk" | "nawk" => Tool {
            value: "vFf",
            long_value: &["--assign", "--field-separator", "--file"],
            program_first: Some("f"),
            reads_value: "f",
            ..PLAIN
        },
        "jq" | "yq" | "gojq" => Tool {
            value: "f",
            long_value: &["--indent", "--from-file"],
            program_first: Some("f"),
            reads_value: "f",
            ..PLAIN
        },
        _ => return None,
    })
}

/// The file operands of `command`, with their use; empty for a command
/// this module does not know.
pub(crate) fn files(command: &Command) -> Vec<FileUse> {
    let name = command.name();
    let argv = &command.argv;
    if argv.len() < 2 {
        return Vec::new();
    }
    if let Some(tool) = reader(name) {
        let in_place = matches!(name, "sed" | "gsed")
            && (crate::argv::has_flag(argv, "-i") || crate::argv::has_flag(argv, "--in-place"));
        let mut out = read_operands(argv, &tool);
        if in_place {
            for file in &mut out {
                file.access = Access::Write;
            }
        }
        if name == "uniq" && out.len() >= 2 {
            // `uniq IN OUT` writes OUT.
            out[1].access = Access::Write;
        }
        let recursive = matches!(name, "rg" | "ag" | "ack")
            || (matches!(name, "grep" | "egrep" | "fgrep" | "zgrep")
                && (["-r", "-R", "--recursive", "--dereference-recursive"]
                    .iter()
                    .any(|f| crate::argv::has_flag(argv, f))
                    || argv.iter().any(|w| {
                        matches!(w.text.as_str(), "--directories=recurse" | "-drecurse")
                    })
                    || argv.windows(2).any(|p| {
                        matches!(p[0].text.as_str(), "-d" | "--directories")
                            && p[1].text == "recurse"
                    })))
            || (matches!(name, "diff" | "diff3")
                && ["-r", "--recursive"]
                    .iter()
                    .any(|f| crate::argv::has_flag(argv, f)));
        for file in &mut out {
            file.recursive = recursive && file.access == Access::Read;
        }
        return out;
    }
    let ops = |values: &str, long: &[&str]| plain_operands(argv, values, long);
    let write = |word: &Word| use_of(Access::Write, word);
    match name {
        "tee" => ops("", &[]).into_iter().map(write).collect(),
        "touch" => ops("dr", &["--date", "--reference"])
            .into_iter()
            .map(write)
            .collect(),
        "truncate" => ops("sr", &["--size", "--reference"])
            .into_iter()
            .map(write)
            .collect(),
        "rm" | "unlink" | "rmdir" | "shred" => ops("n", &["--iterations"])
            .into_iter()
            .map(|w| use_of(Access::Delete, w))
            .collect(),
        "cp" | "mv" | "install" | "ln" | "rsync" | "scp" => copy(command),
        "tar" | "bsdtar" | "gtar" => tar(argv),
        "zip" => {
            let recursive = ["-r", "-R", "--recurse-paths"]
                .iter()
                .any(|f| crate::argv::has_flag(argv, f));
            let mut out: Vec<FileUse> = ops("bnxitZ", &[])
                .into_iter()
                .map(|w| FileUse {
                    recursive,
                    ..use_of(Access::Read, w)
                })
                .collect();
            if let Some(archive) = out.first_mut() {
                archive.access = Access::Write;
                archive.recursive = false;
            }
            out
        }
        "dd" => argv[1..]
            .iter()
            .filter_map(|w| {
                let (access, path) = if let Some(p) = w.text.strip_prefix("of=") {
                    (Access::Write, p)
                } else {
                    (Access::Read, w.text.strip_prefix("if=")?)
                };
                Some(FileUse {
                    access,
                    path: (!w.dynamic).then(|| path.to_owned()),
                    pattern: false,
                    recursive: false,
                })
            })
            .collect(),
        "curl" | "wget" => output_files(argv).iter().map(write).collect(),
        _ => Vec::new(),
    }
}

/// `tar` creating an archive (`tar czf - DIR`, `tar -c -f x.tar DIR`,
/// `tar --create ...`) reads its operands recursively, relative to the last
/// `-C DIR` before them; the archive written with `-f` is a write. Other
/// modes (list, extract) are not followed here.
fn tar(argv: &[Word]) -> Vec<FileUse> {
    // The options whose value is the next word (or attached).
    const VALUE: &str = "fCTXbgKLNVIH";
    const LONG_VALUE: &[&str] = &[
        "--file",
        "--directory",
        "--files-from",
        "--exclude-from",
        "--exclude",
        "--transform",
        "--owner",
        "--group",
        "--mode",
        "--mtime",
        "--newer",
        "--label",
        "--use-compress-program",
        "--to-command",
        "--index-file",
        "--format",
        "--blocking-factor",
    ];
    let mut create = false;
    let mut out = Vec::new();
    let mut directory: Option<String> = None;
    let mut operands: Vec<(Option<String>, &Word)> = Vec::new();
    let mut words = argv[1..].iter().enumerate();
    while let Some((at, word)) = words.next() {
        let text = word.text.as_str();
        if let Some(long) = text.strip_prefix("--") {
            let (name, attached) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (long, None),
            };
            let full = format!("--{name}");
            create |= name == "create";
            if LONG_VALUE.contains(&full.as_str()) {
                let value = attached.or_else(|| words.next().map(|(_, w)| w.text.clone()));
                match name {
                    "file" => out.extend(value.map(|v| FileUse {
                        access: Access::Write,
                        path: Some(v),
                        pattern: false,
                        recursive: false,
                    })),
                    "directory" => directory = value,
                    _ => {}
                }
            }
            continue;
        }
        // The first word may be a cluster without its dash (`tar czf`).
        let cluster = match text.strip_prefix('-') {
            Some(c) if !c.is_empty() => Some(c),
            _ if at == 0 && !text.is_empty() => Some(text),
            _ => None,
        };
        let Some(cluster) = cluster else {
            operands.push((directory.clone(), word));
            continue;
        };
        let old_style = !text.starts_with('-');
        for (i, c) in cluster.char_indices() {
            create |= c == 'c';
            if !VALUE.contains(c) {
                continue;
            }
            // `-fx.tar` takes the rest; old style takes the next words in
            // order.
            let attached = &cluster[i + 1..];
            let value = if !old_style && !attached.is_empty() {
                Some(attached.to_owned())
            } else {
                words.next().map(|(_, w)| w.text.clone())
            };
            match c {
                'f' => out.extend(value.filter(|v| v != "-").map(|v| FileUse {
                    access: Access::Write,
                    path: Some(v),
                    pattern: false,
                    recursive: false,
                })),
                'C' => directory = value,
                _ => {}
            }
            if !old_style {
                break;
            }
        }
    }
    if !create {
        return Vec::new();
    }
    for (dir, word) in operands {
        let mut file = use_of(Access::Read, word);
        file.recursive = true;
        if let (Some(dir), Some(path)) = (dir, &file.path)
            && !path.starts_with(['/', '~', '$'])
        {
            file.path = Some(format!("{}/{path}", dir.trim_end_matches('/')));
        }
        out.push(file);
    }
    out
}

/// The credential files a home holds by convention, relative to it: what a
/// recursive read of a directory above them is decided as reading (the
/// built-in pack's `filesystem.read.block` names them all).
const HOME_CREDENTIALS: &[&str] = &[
    ".ssh/id_rsa",
    ".ssh/id_ecdsa",
    ".ssh/id_ed25519",
    ".ssh/id_dsa",
    ".aws/credentials",
    ".netrc",
    ".git-credentials",
    ".docker/config.json",
    ".kube/config",
    ".npmrc",
    ".pypirc",
    ".config/gh/hosts.yml",
    ".gnupg/private-keys-v1.d/key",
];

/// Where homes are: `~` (and `$HOME`), `/root`, `/home/*`, `/Users/*`.
const HOMES: &[&[&str]] = &[&["root"], &["home", "*"], &["Users", "*"]];

/// The conventional credential files inside `dir` (a directory a recursive
/// reader is given): all of them for `/`, `/home`, `~` and the like, those
/// below it for `~/.ssh` or `/root/.aws`. A relative directory names none
/// (the working directory is not known here), nor does one that no home
/// contains. `dir` may be a glob (`~/.s*`).
pub(crate) fn credentials_inside(dir: &str) -> Vec<String> {
    let dir = crate::argv::normalize_operand(dir);
    let mut out = Vec::new();
    let segments: Vec<&str> = dir.split('/').filter(|s| !s.is_empty()).collect();
    let under = |sub: &[&str], prefix: &str, out: &mut Vec<String>| {
        for rel in HOME_CREDENTIALS {
            let parts: Vec<&str> = rel.split('/').collect();
            if sub.len() <= parts.len()
                && sub.iter().zip(&parts).all(|(p, l)| segment_matches(p, l))
            {
                out.push(format!("{prefix}/{rel}"));
            }
        }
    };
    match segments.first() {
        Some(&"~" | &"$HOME") if !dir.starts_with('/') => {
            under(&segments[1..], segments[0], &mut out);
        }
        _ if dir.starts_with('/') => {
            for home in HOMES {
                let n = home.len().min(segments.len());
                let fits = segments[..n]
                    .iter()
                    .zip(&home[..n])
                    .all(|(d, h)| *h == "*" || segment_matches(d, h));
                if !fits {
                    continue;
                }
                // The home as the directory names it, `*` where it does not.
                let named: Vec<&str> = home
                    .iter()
                    .enumerate()
                    .map(|(i, h)| segments.get(i).copied().filter(|_| *h == "*").unwrap_or(h))
                    .collect();
                let prefix = format!("/{}", named.join("/"));
                under(&segments[n..], &prefix, &mut out);
            }
        }
        _ => {}
    }
    out
}

/// Whether the shell glob segment `pattern` matches the name `literal`
/// (`*`, `?`, `[...]`; a wildcard never takes a leading `.`).
fn segment_matches(pattern: &str, literal: &str) -> bool {
    use crate::glob::{ShellToken, shell_tokens};
    if !pattern.contains(['*', '?', '[']) {
        return pattern == literal;
    }
    let text = literal.as_bytes();
    // matched[j]: the tokens so far can match text[..j].
    let mut matched = vec![false; text.len() + 1];
    matched[0] = true;
    for token in shell_tokens(pattern) {
        let mut next = vec![false; text.len() + 1];
        for j in 0..=text.len() {
            let take = j > 0 && token.takes(text[j - 1], j == 1);
            next[j] = match token {
                ShellToken::Star => matched[j] || (take && next[j - 1]),
                _ => take && matched[j - 1],
            };
        }
        matched = next;
    }
    matched[text.len()]
}

/// The files a downloader (`curl -o F`, `curl -sSLoF`, `--output F`,
/// `wget -O F`, `--output-document=F`) writes to; `-` (stdout) is none.
pub(crate) fn output_files(argv: &[Word]) -> Vec<Word> {
    let letter = if argv[0].text.ends_with("wget") {
        'O'
    } else {
        'o'
    };
    let mut out = Vec::new();
    let mut words = argv[1..].iter();
    while let Some(word) = words.next() {
        let text = word.text.as_str();
        let value = if let Some(long) = text.strip_prefix("--") {
            match long.split_once('=') {
                Some(("output" | "output-document", v)) => Some(Word {
                    text: v.to_owned(),
                    ..word.clone()
                }),
                None if matches!(long, "output" | "output-document") => words.next().cloned(),
                _ => None,
            }
        } else if let Some(cluster) = text.strip_prefix('-') {
            match cluster.find(letter) {
                Some(at) if cluster[..at].bytes().all(|b| b.is_ascii_alphanumeric()) => {
                    let attached = &cluster[at + 1..];
                    if attached.is_empty() {
                        words.next().cloned()
                    } else {
                        Some(Word {
                            text: attached.to_owned(),
                            ..word.clone()
                        })
                    }
                }
                _ => None,
            }
        } else {
            None
        };
        out.extend(value.filter(|v| v.text != "-"));
    }
    out
}

fn use_of(access: Access, word: &Word) -> FileUse {
    FileUse {
        access,
        path: (!word.dynamic || stable_prefix(&word.text)).then(|| word.text.clone()),
        pattern: word.pattern,
        recursive: false,
    }
}

/// A run-time word whose directory is known all the same: `$HOME/x`,
/// `$PWD/x`, `~/x` (the variables name the home or the current directory).
fn stable_prefix(text: &str) -> bool {
    matches!(text, "$HOME" | "$PWD")
        || ["$HOME/", "$PWD/", "~/"]
            .iter()
            .any(|p| text.starts_with(p) && !text[p.len()..].contains(['$', '`']))
}

/// The operands of a reader, the program skipped.
fn read_operands(argv: &[Word], tool: &Tool) -> Vec<FileUse> {
    let mut out = Vec::new();
    let mut program_given = false;
    let mut operands = Vec::new();
    let mut words = argv[1..].iter();
    while let Some(word) = words.next() {
        let text = word.text.as_str();
        if text == "--" {
            operands.extend(words.by_ref());
            break;
        }
        if let Some(long) = text.strip_prefix("--") {
            let (name, attached) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            let full = format!("--{name}");
            if tool.long_value.contains(&full.as_str()) {
                let value = match attached {
                    Some(_) => None,
                    None => words.next(),
                };
                if matches!(name, "regexp" | "expression" | "file" | "from-file") {
                    program_given = true;
                }
                if matches!(name, "file" | "from-file")
                    && let Some(v) = value
                {
                    out.push(use_of(Access::Read, v));
                }
            }
            continue;
        }
        if text.len() > 1 && text.starts_with('-') {
            let cluster = &text[1..];
            for (at, c) in cluster.char_indices() {
                if !tool.value.contains(c) {
                    continue;
                }
                let attached = &cluster[at + c.len_utf8()..];
                let value = if attached.is_empty() {
                    words.next().cloned()
                } else {
                    Some(Word {
                        text: attached.to_owned(),
                        ..word.clone()
                    })
                };
                if tool.program_first.is_some_and(|p| p.contains(c)) {
                    program_given = true;
                }
                if let Some(v) = &value {
                    if tool.reads_value.contains(c) {
                        out.push(use_of(Access::Read, v));
                    } else if tool.writes_value.contains(c) {
                        out.push(use_of(Access::Write, v));
                    }
                }
                break;
            }
            continue;
        }
        operands.push(word);
    }
    let skip = usize::from(tool.program_first.is_some() && !program_given);
    out.extend(
        operands
            .into_iter()
            .skip(skip)
            .filter(|w| w.text != "-")
            .map(|w| use_of(Access::Read, w)),
    );
    out
}

/// Operands, skipping options and the values of `values` / `long`.
fn plain_operands<'a>(argv: &'a [Word], values: &str, long: &[&str]) -> Vec<&'a Word> {
    let mut out = Vec::new();
    let mut words = argv[1..].iter();
    while let Some(word) = words.next() {
        let text = word.text.as_str();
        if text == "--" {
            out.extend(words.by_ref());
            break;
        }
        if text.starts_with("--") {
            if long.contains(&text) {
                words.next();
            }
            continue;
        }
        if text.len() > 1 && text.starts_with('-') {
            let last = text.chars().last().unwrap_or('-');
            if values.contains(last) {
                words.next();
            }
            continue;
        }
        out.push(word);
    }
    out
}

/// `cp`, `mv`, `install`, `ln`, `rsync`, `scp`: the destination is written
/// (and, when it is a directory, the file of each source's name in it);
/// `mv` removes its sources, the others read them (`ln` only names them).
fn copy(command: &Command) -> Vec<FileUse> {
    let name = command.name();
    let (values, long): (&str, &[&str]) = match name {
        "install" => (
            "mogSt",
            &[
                "--mode",
                "--owner",
                "--group",
                "--suffix",
                "--target-directory",
            ],
        ),
        "cp" | "mv" | "ln" => ("St", &["--suffix", "--target-directory"]),
        "rsync" => (
            "efT",
            &["--rsh", "--filter", "--exclude", "--include", "--temp-dir"],
        ),
        _ => ("cFiloPJS", &[]),
    };
    let argv = &command.argv;
    // `-t DIR` / `--target-directory=DIR`: every operand is a source.
    let mut target: Option<&Word> = None;
    let mut words = argv[1..].iter();
    while let Some(w) = words.next() {
        if w.text == "--" {
            break;
        }
        if w.text == "-t" || w.text == "--target-directory" {
            target = words.next();
        }
    }
    let target_inline = argv[1..]
        .iter()
        .find_map(|w| w.text.strip_prefix("--target-directory="));
    // plain_operands skips `-t` and its value.
    let mut operands = plain_operands(argv, values, long);
    let inline_word;
    let dest: Option<&Word> = match (target, target_inline) {
        (Some(t), _) => Some(t),
        (None, Some(t)) => {
            inline_word = Word {
                text: t.to_owned(),
                dynamic: false,
                pattern: false,
            };
            Some(&inline_word)
        }
        (None, None) if operands.len() >= 2 || name == "ln" => operands.pop(),
        (None, None) => None,
    };
    let remote = |w: &Word| matches!(name, "rsync" | "scp") && w.text.contains(':');
    // Sources first: reading a key is the first thing a copy of it does.
    // A link to a file is a way to read it under another name.
    let access = if name == "mv" {
        Access::Delete
    } else {
        Access::Read
    };
    // `cp -r`, `cp -a`, `rsync -a`, `scp -r`: a directory source is read
    // with everything below it.
    let recursive = matches!(name, "cp" | "rsync" | "scp")
        && ["-r", "-R", "-a", "--recursive", "--archive"]
            .iter()
            .any(|f| crate::argv::has_flag(argv, f));
    let mut out: Vec<FileUse> = operands
        .iter()
        .filter(|w| !remote(w))
        .map(|w| FileUse {
            recursive: recursive && access == Access::Read,
            ..use_of(access, w)
        })
        .collect();
    if let Some(dest) = dest.filter(|d| !remote(d)) {
        if name == "ln" && operands.is_empty() {
            // `ln -s TARGET`: a link of TARGET's name in the current
            // directory, and a way to read TARGET.
            let base = dest.text.rsplit('/').next().unwrap_or_default();
            out.push(use_of(Access::Read, dest));
            out.push(FileUse {
                access: Access::Write,
                path: (!dest.dynamic).then(|| base.to_owned()),
                pattern: false,
                recursive: false,
            });
            return out;
        }
        out.push(use_of(Access::Write, dest));
        for source in &operands {
            let base = source.text.trim_end_matches('/').rsplit('/').next();
            if let Some(base) = base.filter(|b| !b.is_empty() && !dest.dynamic) {
                out.push(FileUse {
                    access: Access::Write,
                    path: Some(format!("{}/{base}", dest.text.trim_end_matches('/'))),
                    pattern: source.pattern || dest.pattern,
                    recursive: false,
                });
            }
        }
    }
    out
}
