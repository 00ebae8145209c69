//! Rules that understand a command's arguments: its name, its subcommand
//! after the tool's own global options, its options however they are
//! written, its operands, the variables it is given, and the commands that
//! feed it.

use std::borrow::Cow;

use crate::glob::{Glob, Mode};
use crate::shell::{Command, Word};

/// The argument-aware fields of a rule; every field given must match.
#[derive(Debug, Clone, Default)]
pub(crate) struct CommandMatch {
    /// Globs on the base name of `argv[0]`.
    pub names: Option<Box<[Glob]>>,
    /// The bytes a name matched by `names` can start with (all of them
    /// when a glob starts with a wildcard): most rules are passed over on
    /// one bit test.
    pub first_bytes: [u64; 4],
    /// Each entry: globs on consecutive operands after the global options.
    pub subcommands: Option<Box<[Box<[Glob]>]>>,
    /// Any of these options, alone, combined (`-rf`) or with a value.
    pub flags: Option<Box<[String]>>,
    /// Globs on the operands (after the subcommand, when one is named).
    pub args: Option<Box<[Glob]>>,
    /// Globs on the names of the variables the command is given.
    pub env: Option<Box<[Glob]>>,
    /// Globs on the names of commands whose output it reads.
    pub inputs: Option<Box<[Glob]>>,
    /// Globs on the names of downloaders whose file it runs (the file a
    /// `curl -o f` earlier in the line wrote, run as `sh f` or `./f`).
    pub runs_download: Option<Box<[Glob]>>,
    /// Matches only when the tool's inline program (a sed script, an awk
    /// program) can run commands, write or read other files, or cannot be
    /// read (`-f script`): see [`crate::programs`].
    pub unsafe_program: bool,
}

impl CommandMatch {
    /// The first-byte filter of `names` (see [`CommandMatch::first_bytes`]).
    pub fn first_bytes_of(names: Option<&[Glob]>) -> [u64; 4] {
        let mut bits = [0u64; 4];
        for glob in names.into_iter().flatten() {
            match glob.as_str().as_bytes() {
                [b'*' | b'?' | b'\\', ..] | [] => return [u64::MAX; 4],
                [b, ..] => bits[usize::from(b >> 6)] |= 1 << (b & 63),
            }
        }
        bits
    }

    /// Whether only `env` is set, so that a line of bare assignments can
    /// match.
    pub fn only_env(&self) -> bool {
        self.env.is_some()
            && self.names.is_none()
            && self.subcommands.is_none()
            && self.flags.is_none()
            && self.args.is_none()
            && self.inputs.is_none()
            && self.runs_download.is_none()
            && !self.unsafe_program
    }

    pub fn matches(&self, command: &Command) -> bool {
        let any = |globs: &[Glob], text: &str| globs.iter().any(|g| g.matches(text, Mode::Text));
        if let Some(env) = &self.env
            && !command.env.iter().any(|name| any(env, name))
        {
            return false;
        }
        if command.argv.is_empty() {
            return self.only_env();
        }
        if let Some(names) = &self.names {
            let name = command.name();
            let first = name.bytes().next().unwrap_or(0);
            if self.first_bytes[usize::from(first >> 6)] & (1 << (first & 63)) == 0
                || !any(names, name)
            {
                return false;
            }
        }
        if let Some(inputs) = &self.inputs
            && !command.inputs.iter().any(|name| any(inputs, name))
        {
            return false;
        }
        if let Some(downloaders) = &self.runs_download
            && !command
                .runs_download
                .iter()
                .any(|name| any(downloaders, name))
        {
            return false;
        }
        if let Some(flags) = &self.flags
            && !flags.iter().any(|f| has_flag(&command.argv, f))
        {
            return false;
        }
        if self.unsafe_program && !crate::programs::unsafe_program(command) {
            return false;
        }
        if self.subcommands.is_none() && self.args.is_none() {
            return true;
        }
        let operands = operands(command);
        let rest: &[&Word] = match &self.subcommands {
            None => &operands,
            Some(patterns) => match patterns
                .iter()
                .find_map(|p| subcommand_len(p, &operands).map(|n| &operands[n..]))
            {
                Some(rest) => rest,
                None => return false,
            },
        };
        match &self.args {
            None => true,
            Some(globs) => rest
                .iter()
                .any(|w| operand_forms(w).iter().any(|form| any(globs, form))),
        }
    }
}

/// How many operands `pattern` covers, when they match it.
fn subcommand_len(pattern: &[Glob], operands: &[&Word]) -> Option<usize> {
    (operands.len() >= pattern.len()
        && pattern
            .iter()
            .zip(operands)
            .all(|(g, w)| !w.dynamic && g.matches(&w.text, Mode::Text)))
    .then_some(pattern.len())
}

/// Whether `argv` carries option `flag`: `--name` alone, as `--name=v` or
/// abbreviated (`--force-w`, which git and GNU tools take for
/// `--force-with-lease`); a single-dash option as written (`-auto-approve`);
/// a one-letter option also inside a cluster (`-rf` holds `-r` and `-f`),
/// up to the first character that cannot be an option letter, since what
/// follows may be the value of the last one (`-i.bak` holds `-i`).
/// Options end at `--`.
pub(crate) fn has_flag(argv: &[Word], flag: &str) -> bool {
    let letter = flag
        .strip_prefix('-')
        .filter(|l| l.len() == 1 && !l.starts_with('-'));
    argv[1..]
        .iter()
        .take_while(|w| w.text != "--")
        .filter(|w| w.text.len() > 1 && w.text.starts_with('-'))
        .any(|w| {
            let name = w.text.split_once('=').map_or(w.text.as_str(), |(n, _)| n);
            name == flag
                || (name.len() > 2 && name.starts_with("--") && flag.starts_with(name))
                || letter.is_some_and(|l| {
                    let cluster = &w.text[1..];
                    let end = cluster
                        .bytes()
                        .position(|b| !b.is_ascii_alphanumeric())
                        .unwrap_or(cluster.len());
                    !name.starts_with("--") && cluster[..end].contains(l)
                })
        })
}

/// The options of a tool that take their value in the next word before
/// its subcommand, so that the value is not taken for the subcommand.
fn value_options(tool: &str) -> &'static [&'static str] {
    match tool {
        "git" => &[
            "-C",
            "-c",
            "--git-dir",
            "--work-tree",
            "--namespace",
            "--config-env",
            "--super-prefix",
            "--exec-path",
            "--list-cmds",
            "--attr-source",
        ],
        "terraform" | "tofu" => &["-chdir"],
        "kubectl" | "oc" => &[
            "--context",
            "-n",
            "--namespace",
            "--kubeconfig",
            "--cluster",
            "--user",
            "-s",
            "--server",
            "--token",
            "--as",
            "--as-group",
            "--as-uid",
            "--certificate-authority",
            "--client-certificate",
            "--client-key",
            "--cache-dir",
            "--request-timeout",
            "--tls-server-name",
            "--username",
            "--password",
            "--profile",
            "--profile-output",
            "--log-dir",
            "--log-file",
            "--log-file-max-size",
            "--log-flush-frequency",
            "--log-backtrace-at",
            "--stderrthreshold",
            "--vmodule",
            "--v",
            "-l",
            "--selector",
            "-o",
            "--output",
            "-f",
            "--filename",
            "-v",
        ],
        "helm" => &[
            "--kube-context",
            "-n",
            "--namespace",
            "--kubeconfig",
            "--kube-apiserver",
            "--kube-as-user",
            "--kube-as-group",
            "--kube-token",
            "--kube-ca-file",
            "--registry-config",
            "--repository-config",
            "--repository-cache",
            "--kube-tls-server-name",
            "--burst-limit",
            "--qps",
            "--content-cache",
        ],
        "docker" | "podman" => &[
            "-H",
            "--host",
            "-c",
            "--context",
            "--config",
            "-l",
            "--log-level",
            "--tlscacert",
            "--tlscert",
            "--tlskey",
        ],
        "aws" => &[
            "--profile",
            "--region",
            "--output",
            "--endpoint-url",
            "--query",
            "--color",
            "--ca-bundle",
            "--cli-read-timeout",
            "--cli-connect-timeout",
            "--cli-binary-format",
        ],
        "gcloud" => &[
            "--project",
            "--account",
            "--configuration",
            "--format",
            "--verbosity",
            "--impersonate-service-account",
            "--billing-project",
            "--flags-file",
            "--flatten",
        ],
        "cargo" => &["--config", "-Z", "-C", "--color"],
        "npm" | "pnpm" | "yarn" => &["--prefix", "-C", "--dir", "-w", "--workspace", "--filter"],
        "make" | "gmake" => &["-C", "-f", "--file", "--directory", "-I", "-o", "-W"],
        _ => &[],
    }
}

/// The operands: words that are not options (and every word after `--`),
/// without the values of the tool's global options (a cargo `+toolchain`
/// is skipped too).
pub(crate) fn operands(command: &Command) -> Vec<&Word> {
    let tool = command.name();
    let takes_value = value_options(tool);
    let mut out = Vec::new();
    let mut words = command.argv[1..].iter();
    while let Some(word) = words.next() {
        let text = word.text.as_str();
        if text == "--" {
            out.extend(words);
            break;
        }
        if text.len() > 1 && text.starts_with('-') {
            if takes_value.contains(&text) {
                words.next();
            }
            continue;
        }
        if tool == "cargo" && out.is_empty() && text.starts_with('+') {
            continue;
        }
        out.push(word);
    }
    out
}

/// The forms an operand can take once the shell expands it, each compared
/// as a path: brace alternatives (`{/,}` is `/` and the empty word),
/// parameter expansions by the variable and their default (`${HOME:?}` is
/// `$HOME`, `${X:-/}` is `$X` or `/`), `..` resolved (`~/..` covers the
/// home, so it is decided as `~`), and a glob that can match every entry of
/// `/` or of the home (`/?*`, `/[!.]*`, `~/*/*`) as `/*` or `~/*`.
pub(crate) fn operand_forms(word: &Word) -> Vec<Cow<'_, str>> {
    let text = word.text.as_str();
    if !text
        .bytes()
        .any(|b| matches!(b, b'/' | b'{' | b'$' | b'*' | b'?' | b'['))
    {
        return vec![Cow::Borrowed(text)];
    }
    if !text.contains('{') {
        return vec![normalize_operand(text)];
    }
    let mut out = Vec::new();
    for expanded in braces(text, 0) {
        for form in parameters(&expanded) {
            out.push(Cow::Owned(normalize_operand(&form).into_owned()));
        }
    }
    out
}

/// Brace expansion of the first group with a top-level comma, then of the
/// rest; at most a few dozen forms.
pub(crate) fn braces(text: &str, depth: usize) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut search = 0;
    while let Some(open) = text[search..].find('{').map(|i| i + search) {
        if open > 0 && bytes[open - 1] == b'$' {
            search = open + 1;
            continue;
        }
        let mut level = 0;
        let mut commas = Vec::new();
        let mut close = None;
        for (i, &b) in bytes.iter().enumerate().skip(open) {
            match b {
                b'{' => level += 1,
                b'}' => {
                    level -= 1;
                    if level == 0 {
                        close = Some(i);
                        break;
                    }
                }
                b',' if level == 1 => commas.push(i),
                _ => {}
            }
        }
        let Some(close) = close else { break };
        if commas.is_empty() || depth > 4 {
            search = open + 1;
            continue;
        }
        let mut bounds = vec![open];
        bounds.extend(commas);
        bounds.push(close);
        let (prefix, suffix) = (&text[..open], &text[close + 1..]);
        let mut out = Vec::new();
        for pair in bounds.windows(2) {
            let alternative = format!("{prefix}{}{suffix}", &text[pair[0] + 1..pair[1]]);
            out.extend(braces(&alternative, depth + 1));
            if out.len() > 32 {
                break;
            }
        }
        return out;
    }
    vec![text.to_owned()]
}

/// `${NAME<op>word}` replaced by what it can give: the variable, and the
/// word for the operators that may give it.
fn parameters(text: &str) -> Vec<String> {
    let Some(open) = text.find("${") else {
        return vec![text.to_owned()];
    };
    let Some(close) = text[open..].find('}').map(|i| i + open) else {
        return vec![text.to_owned()];
    };
    let body = &text[open + 2..close];
    let name_len = body
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    let (name, op) = body.split_at(name_len);
    let op = op.strip_prefix(':').unwrap_or(op);
    let variable = format!("${name}");
    let values: Vec<String> = match op.as_bytes().first() {
        None | Some(b'?') => vec![variable],
        Some(b'-' | b'=') => vec![variable, op[1..].to_owned()],
        Some(b'+') => vec![op[1..].to_owned()],
        // `${HOME%/*}`: a suffix removed, the variable's parent at most.
        Some(b'%') => vec![variable.clone(), format!("{variable}/..")],
        Some(_) => vec![variable],
    };
    let (prefix, suffix) = (&text[..open], &text[close + 1..]);
    values
        .iter()
        .flat_map(|v| parameters(&format!("{prefix}{v}{suffix}")))
        .take(32)
        .collect()
}

fn is_home(segment: &str) -> bool {
    segment == "~" || segment == "$HOME"
}

/// A path segment made of wildcards only (`*`, `?*`, `[!.]*`).
fn is_wild(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut wild = false;
    while let Some(&b) = rest.first() {
        match b {
            b'*' | b'?' => {
                wild = true;
                rest = &rest[1..];
            }
            b'[' => match rest.iter().skip(2).position(|&c| c == b']') {
                Some(end) => {
                    wild = true;
                    rest = &rest[end + 3..];
                }
                None => return false,
            },
            _ => return false,
        }
    }
    wild
}

/// Paths compared the way the filesystem resolves them: repeated `/`, `.`
/// segments and a trailing `/` removed (`//` is `/`, `~/` is `~`), `..`
/// resolved, and globs covering a whole directory of `/` or the home
/// written `/*` or `~/*`.
pub(crate) fn normalize_operand(text: &str) -> Cow<'_, str> {
    if !text.contains('/') {
        return Cow::Borrowed(text);
    }
    let absolute = text.starts_with('/');
    let mut segments: Vec<&str> = Vec::new();
    let mut above_home = 0;
    for segment in text.split('/') {
        match segment {
            "" | "." => {}
            ".." => match segments.last() {
                Some(&home) if segments.len() == 1 && is_home(home) && !absolute => {
                    above_home += 1;
                }
                Some(&last) if last != ".." => {
                    segments.pop();
                }
                None if absolute => {}
                _ => segments.push(".."),
            },
            other => {
                if above_home > 0 {
                    // Another user's home: as written.
                    return Cow::Borrowed(text);
                }
                segments.push(other);
            }
        }
    }
    if above_home >= 2 {
        return Cow::Borrowed("/");
    }
    if above_home == 1 {
        segments.truncate(1);
    }
    let base = match segments.first() {
        _ if absolute => 0,
        Some(&home) if is_home(home) => 1,
        _ => usize::MAX,
    };
    if base != usize::MAX && segments.len() > base && segments[base..].iter().all(|s| is_wild(s)) {
        segments.truncate(base);
        segments.push("*");
    }
    let joined = segments.join("/");
    Cow::Owned(match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(words: &[&str]) -> Command {
        Command {
            argv: words
                .iter()
                .map(|w| Word {
                    text: (*w).to_owned(),
                    dynamic: w.starts_with('$'),
                    pattern: false,
                })
                .collect(),
            ..Command::default()
        }
    }

    #[test]
    fn flags_are_found_however_they_are_written() {
        for argv in [
            &["rm", "-rf", "/"][..],
            &["rm", "-fr", "/"],
            &["rm", "-r", "-f", "/"],
            &["rm", "/", "-R"],
            &["rm", "--recursive", "/"],
        ] {
            let c = cmd(argv);
            assert!(
                ["-r", "-R", "--recursive"]
                    .iter()
                    .any(|f| has_flag(&c.argv, f)),
                "{argv:?}"
            );
        }
        assert!(!has_flag(&cmd(&["rm", "--", "-r"]).argv, "-r"));
        assert!(has_flag(
            &cmd(&["git", "push", "--force=x"]).argv,
            "--force"
        ));
        assert!(!has_flag(
            &cmd(&["git", "push", "--forced"]).argv,
            "--force"
        ));
        assert!(has_flag(
            &cmd(&["git", "push", "--force-w"]).argv,
            "--force-with-lease"
        ));
        assert!(has_flag(
            &cmd(&["terraform", "apply", "-auto-approve"]).argv,
            "-auto-approve"
        ));
    }

    #[test]
    fn global_options_do_not_hide_the_subcommand() {
        let names = |argv: &[&str]| -> Vec<String> {
            operands(&cmd(argv))
                .iter()
                .map(|w| w.text.clone())
                .collect()
        };
        assert_eq!(names(&["git", "-C", "x", "-c", "a=b", "push"]), ["push"]);
        assert_eq!(names(&["terraform", "-chdir=infra", "apply"]), ["apply"]);
        assert_eq!(names(&["terraform", "-chdir", "infra", "apply"]), ["apply"]);
        assert_eq!(
            names(&[
                "kubectl",
                "--context",
                "prod",
                "-n",
                "x",
                "delete",
                "ns",
                "x"
            ]),
            ["delete", "ns", "x"]
        );
        assert_eq!(names(&["cargo", "+nightly", "test"]), ["test"]);
        assert_eq!(names(&["rm", "-rf", "--", "-x", "/"]), ["-x", "/"]);
    }

    #[test]
    fn operands_are_compared_as_paths() {
        assert_eq!(normalize_operand("//"), "/");
        assert_eq!(normalize_operand("/./"), "/");
        assert_eq!(normalize_operand("~/"), "~");
        assert_eq!(normalize_operand("$HOME//"), "$HOME");
        assert_eq!(normalize_operand("/*"), "/*");
        assert_eq!(normalize_operand("a/./b/"), "a/b");
        assert_eq!(normalize_operand("/?*"), "/*");
        assert_eq!(normalize_operand("/[!.]*"), "/*");
        assert_eq!(normalize_operand("~/.."), "~");
        assert_eq!(normalize_operand("~/../.."), "/");
        assert_eq!(normalize_operand("/usr/.."), "/");
        assert_eq!(normalize_operand("$HOME/*/*"), "$HOME/*");
        assert_eq!(normalize_operand("/tmp/*"), "/tmp/*");
        assert_eq!(normalize_operand("~/../bob"), "~/../bob");
        let forms = |text: &str| -> Vec<String> {
            let word = Word {
                text: text.to_owned(),
                dynamic: false,
                pattern: true,
            };
            operand_forms(&word).iter().map(|f| f.to_string()).collect()
        };
        assert_eq!(forms("{/,}"), ["/", ""]);
        assert_eq!(forms("${HOME:?}"), ["$HOME"]);
        assert_eq!(forms("${X:-/}"), ["$X", "/"]);
        assert_eq!(forms("/{usr,}"), ["/usr", "/"]);
    }
}
