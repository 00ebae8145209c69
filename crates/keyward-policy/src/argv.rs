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
}

impl CommandMatch {
    /// Whether only `env` is set, so that a line of bare assignments can
    /// match.
    pub fn only_env(&self) -> bool {
        self.env.is_some()
            && self.names.is_none()
            && self.subcommands.is_none()
            && self.flags.is_none()
            && self.args.is_none()
            && self.inputs.is_none()
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
        if let Some(names) = &self.names
            && !any(names, command.name())
        {
            return false;
        }
        if let Some(inputs) = &self.inputs
            && !command.inputs.iter().any(|name| any(inputs, name))
        {
            return false;
        }
        if let Some(flags) = &self.flags
            && !flags.iter().any(|f| has_flag(&command.argv, f))
        {
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
            Some(globs) => rest.iter().any(|w| any(globs, &normalize_operand(&w.text))),
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
/// a one-letter option also inside a cluster (`-rf` holds `-r` and `-f`).
/// Options end at `--`.
fn has_flag(argv: &[Word], flag: &str) -> bool {
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
                    !name.starts_with("--")
                        && name[1..].bytes().all(|b| b.is_ascii_alphanumeric())
                        && name[1..].contains(l)
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
fn operands(command: &Command) -> Vec<&Word> {
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

/// Paths compared the way the filesystem resolves them: repeated `/`, `.`
/// segments and a trailing `/` removed (`//` is `/`, `~/` is `~`).
fn normalize_operand(text: &str) -> Cow<'_, str> {
    if !text.contains('/') {
        return Cow::Borrowed(text);
    }
    let absolute = text.starts_with('/');
    let segments: Vec<&str> = text
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
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
    }
}
