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
                })
            })
            .collect(),
        "curl" | "wget" => output_files(argv).iter().map(write).collect(),
        _ => Vec::new(),
    }
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
    }
}

/// A run-time word whose directory is known all the same: `$HOME/x`,
/// `$PWD/x`, `~/x` (the variables name the home or the current directory).
fn stable_prefix(text: &str) -> bool {
    ["$HOME/", "$PWD/", "~/"]
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
    let mut out: Vec<FileUse> = operands
        .iter()
        .filter(|w| !remote(w))
        .map(|w| use_of(access, w))
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
                });
            }
        }
    }
    out
}
