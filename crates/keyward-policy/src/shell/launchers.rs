//! Programs that run another command or a script given as text: the
//! command inside is what a policy must see.
//!
//! - transparent launchers (`env`, `command`, `exec`, `nohup`, `nice`,
//!   `time`, `timeout`, `builtin`, `busybox`, `stdbuf`, `setsid`,
//!   `watch -x`, `ionice`, `chrt`, `taskset`, `unbuffer`, `flock`,
//!   `systemd-run`, `firejail`, `proot`, `sshpass`) give way to the command
//!   they run;
//!   `flock FILE -c TEXT` and `script -c TEXT` run text as a script;
//! - `sudo`, `doas` and `xargs` are kept as parts of their own too (they
//!   change who runs the command, or add arguments nobody can see), besides
//!   the command they run;
//! - shells with `-c` (or a here-string), `eval`, `watch`, `alias` and
//!   `trap` run text as a script, which is read like the line itself;
//! - `ssh host CMD...` gives CMD to the remote shell as a script, read the
//!   same way, and is kept as a part of its own (its options and host);
//! - `env -S STRING` splits STRING into words first, as GNU env does.
//!
//! An option a launcher does not know makes the part unparseable: it might
//! take a value, and then the command would be another word.

use super::{Command, Context, Part, Reader, Why, Word, assignment_prefix, parse_script};

/// The options of a launcher.
struct Options {
    /// Short options that take a value (attached or in the next word).
    short_value: &'static str,
    /// Short options without a value.
    short_flags: &'static str,
    /// Short options whose value, if any, is attached (`-i{}`).
    short_optional: &'static str,
    long_value: &'static [&'static str],
    long_flags: &'static [&'static str],
    /// `NAME=value` words before the command are assignments.
    assignments: bool,
    /// Operands before the command (timeout's duration).
    leading_operands: usize,
    /// Any `--name` or `--name=value` is an option without a separate
    /// value (firejail).
    long_any: bool,
}

const NONE: Options = Options {
    short_value: "",
    short_flags: "",
    short_optional: "",
    long_value: &[],
    long_flags: &[],
    assignments: false,
    leading_operands: 0,
    long_any: false,
};

const ENV: Options = Options {
    short_value: "uCP",
    short_flags: "i0v",
    long_value: &["--unset", "--chdir"],
    long_flags: &[
        "--ignore-environment",
        "--null",
        "--debug",
        "--default-signal",
        "--ignore-signal",
        "--block-signal",
        "--list-signal-handling",
    ],
    assignments: true,
    ..NONE
};

const SUDO: Options = Options {
    short_value: "ughprtCDRTU",
    short_flags: "ABbEHiKklNnPSsVv",
    long_value: &[
        "--user",
        "--group",
        "--host",
        "--prompt",
        "--role",
        "--type",
        "--close-from",
        "--chdir",
        "--chroot",
        "--command-timeout",
        "--other-user",
    ],
    long_flags: &[
        "--askpass",
        "--bell",
        "--background",
        "--preserve-env",
        "--set-home",
        "--login",
        "--remove-timestamp",
        "--reset-timestamp",
        "--non-interactive",
        "--preserve-groups",
        "--stdin",
        "--shell",
        "--validate",
    ],
    assignments: true,
    ..NONE
};

const DOAS: Options = Options {
    short_value: "uC",
    short_flags: "nsL",
    ..NONE
};

const COMMAND: Options = Options {
    short_flags: "pvV",
    ..NONE
};

const EXEC: Options = Options {
    short_value: "a",
    short_flags: "cl",
    ..NONE
};

const NICE: Options = Options {
    short_value: "n",
    short_flags: "0123456789",
    long_value: &["--adjustment"],
    ..NONE
};

const TIME: Options = Options {
    short_value: "of",
    short_flags: "pavq",
    long_value: &["--output", "--format"],
    long_flags: &["--portability", "--append", "--verbose", "--quiet"],
    ..NONE
};

const TIMEOUT: Options = Options {
    short_value: "sk",
    short_flags: "v",
    long_value: &["--signal", "--kill-after"],
    long_flags: &["--preserve-status", "--foreground", "--verbose"],
    leading_operands: 1,
    ..NONE
};

const XARGS: Options = Options {
    short_value: "adEILnPs",
    short_flags: "0prtxo",
    short_optional: "eil",
    long_value: &[
        "--arg-file",
        "--delimiter",
        "--max-lines",
        "--max-args",
        "--max-procs",
        "--max-chars",
        "--process-slot-var",
    ],
    long_flags: &[
        "--null",
        "--eof",
        "--replace",
        "--interactive",
        "--no-run-if-empty",
        "--verbose",
        "--exit",
        "--open-tty",
        "--show-limits",
    ],
    ..NONE
};

const WATCH: Options = Options {
    short_value: "nq",
    short_flags: "dtbegcxpwr",
    long_value: &["--interval", "--equexit"],
    long_flags: &[
        "--differences",
        "--no-title",
        "--beep",
        "--errexit",
        "--chgexit",
        "--color",
        "--no-color",
        "--exec",
        "--precise",
        "--no-wrap",
        "--no-rerun",
    ],
    ..NONE
};

const STDBUF: Options = Options {
    short_value: "ioe",
    long_value: &["--input", "--output", "--error"],
    ..NONE
};

const SETSID: Options = Options {
    short_flags: "cfw",
    long_flags: &["--ctty", "--fork", "--wait"],
    ..NONE
};

const IONICE: Options = Options {
    short_value: "cnpPu",
    short_flags: "t",
    long_value: &["--class", "--classdata", "--pid", "--pgid", "--uid"],
    long_flags: &["--ignore"],
    ..NONE
};

const CHRT: Options = Options {
    short_value: "TPD",
    short_flags: "bdfiorRamv",
    long_value: &["--sched-runtime", "--sched-period", "--sched-deadline"],
    long_flags: &[
        "--batch",
        "--deadline",
        "--fifo",
        "--idle",
        "--other",
        "--rr",
        "--reset-on-fork",
        "--all-tasks",
        "--max",
        "--verbose",
    ],
    leading_operands: 1,
    ..NONE
};

const TASKSET: Options = Options {
    short_flags: "acp",
    long_flags: &["--all-tasks", "--cpu-list", "--pid"],
    leading_operands: 1,
    ..NONE
};

const UNBUFFER: Options = Options {
    short_flags: "p",
    ..NONE
};

const FLOCK: Options = Options {
    short_value: "wEc",
    short_flags: "sxunoFv",
    long_value: &["--timeout", "--wait", "--conflict-exit-code", "--command"],
    long_flags: &[
        "--shared",
        "--exclusive",
        "--unlock",
        "--nonblock",
        "--nb",
        "--close",
        "--no-fork",
        "--verbose",
    ],
    leading_operands: 1,
    ..NONE
};

const SYSTEMD_RUN: Options = Options {
    short_value: "upEMH",
    short_flags: "tPqGrdS",
    long_value: &[
        "--unit",
        "--property",
        "--description",
        "--slice",
        "--setenv",
        "--uid",
        "--gid",
        "--nice",
        "--working-directory",
        "--machine",
        "--host",
        "--service-type",
        "--on-active",
        "--on-boot",
        "--on-startup",
        "--on-unit-active",
        "--on-unit-inactive",
        "--on-calendar",
        "--on-clock-change",
        "--on-timezone-change",
        "--path-property",
        "--socket-property",
        "--timer-property",
    ],
    long_flags: &[
        "--user",
        "--system",
        "--scope",
        "--pty",
        "--pipe",
        "--quiet",
        "--wait",
        "--collect",
        "--same-dir",
        "--no-block",
        "--no-ask-password",
        "--remain-after-exit",
        "--send-sighup",
        "--shell",
    ],
    ..NONE
};

const PROOT: Options = Options {
    short_value: "rbmwqkv",
    short_flags: "0",
    long_value: &[
        "--rootfs",
        "--bind",
        "--mount",
        "--cwd",
        "--qemu",
        "--kernel-release",
        "--verbose",
    ],
    long_flags: &["--root-id", "--link2symlink", "--kill-on-exit"],
    ..NONE
};

/// sshpass feeds a password to the command it runs (ssh, scp, rsync).
const SSHPASS: Options = Options {
    short_value: "pfdP",
    short_flags: "ehV",
    ..NONE
};

pub(super) const SHELLS: &[&str] = &["sh", "bash", "zsh", "dash", "ksh", "mksh", "ash", "posh"];

/// firejail's options are all `--name` or `--name=value`.
const FIREJAIL: Options = Options {
    long_any: true,
    ..NONE
};

/// The text of `-c TEXT` (also at the end of a cluster, `-qc TEXT`) or
/// `--command TEXT`, as `flock` and `script` take it. flock's command
/// starts after its lock file: a `-c` there belongs to the command.
fn inline_option(argv: &[Word]) -> Option<Word> {
    let flock = argv[0].text.ends_with("flock");
    let mut operands = 0;
    let mut words = argv[1..].iter();
    while let Some(word) = words.next() {
        let text = word.text.as_str();
        if text == "--" {
            return None;
        }
        if let Some(value) = text.strip_prefix("--command=") {
            return Some(Word {
                text: value.to_owned(),
                ..word.clone()
            });
        }
        if text == "--command"
            || (text.starts_with('-') && !text.starts_with("--") && text.ends_with('c'))
        {
            return words.next().cloned();
        }
        if flock
            && matches!(
                text,
                "-w" | "-E" | "--timeout" | "--wait" | "--conflict-exit-code"
            )
        {
            words.next();
        } else if !text.starts_with('-') {
            operands += 1;
            if flock && operands > 1 {
                return None;
            }
        }
    }
    None
}

/// Where a launcher's command starts, and the variables it sets; an
/// unknown option is an error.
fn split(argv: &[Word], options: &Options) -> Result<(usize, Vec<String>), Why> {
    let mut env = Vec::new();
    let mut operands = options.leading_operands;
    let mut i = 1;
    while let Some(word) = argv.get(i) {
        if word.dynamic {
            return Err(Why::LauncherOption);
        }
        let text = word.text.as_str();
        if text == "--" {
            return Ok((i + 1 + operands, env));
        }
        if let Some(long) = text.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((name, _)) => (name, true),
                None => (long, false),
            };
            let name = &text[..name.len() + 2];
            if options.long_any {
                i += 1;
            } else if options.long_value.contains(&name) {
                i += if inline { 1 } else { 2 };
            } else if options.long_flags.contains(&name) {
                i += 1;
            } else {
                return Err(Why::LauncherOption);
            }
            continue;
        }
        if text == "-" && options.assignments {
            // `env -` is `env -i`.
            i += 1;
            continue;
        }
        if let Some(cluster) = text.strip_prefix('-').filter(|c| !c.is_empty()) {
            let mut takes_next = false;
            for (at, c) in cluster.char_indices() {
                if options.short_value.contains(c) {
                    takes_next = at + c.len_utf8() == cluster.len();
                    break;
                }
                if options.short_optional.contains(c) {
                    break;
                }
                if !options.short_flags.contains(c) {
                    return Err(Why::LauncherOption);
                }
            }
            i += if takes_next { 2 } else { 1 };
            continue;
        }
        if options.assignments
            && let Some((name_len, _)) = assignment_prefix(text)
        {
            env.push(text[..name_len].to_owned());
            i += 1;
            continue;
        }
        if operands > 0 {
            operands -= 1;
            i += 1;
            continue;
        }
        break;
    }
    Ok((i, env))
}

/// `env -S STRING` (`-SSTRING`, `--split-string[=]STRING`): GNU env
/// splits the string into words where the option stood and goes on reading
/// options, so `env -S 'A=1 terraform apply'` runs `terraform apply`. The
/// words replace the option in `argv`, as env itself does. A string that
/// cannot be split exactly (an escape or `${VAR}` keyward does not follow,
/// a string computed at run time) is an error.
fn split_string(argv: &mut Vec<Word>) -> Result<(), Why> {
    let mut i = 1;
    // Each -S adds words that may hold another: bounded all the same.
    let mut rounds = 0;
    while let Some(word) = argv.get(i) {
        let text = word.text.as_str();
        let (value, used) = if text == "-S" || text == "--split-string" {
            (argv.get(i + 1).cloned(), 2)
        } else if let Some(v) = text.strip_prefix("--split-string=") {
            (
                Some(Word {
                    text: v.to_owned(),
                    ..word.clone()
                }),
                1,
            )
        } else if let Some(cluster) = text.strip_prefix('-').filter(|c| !c.starts_with('-'))
            && let Some(at) = cluster.find('S')
            && cluster[..at].chars().all(|c| ENV.short_flags.contains(c))
        {
            let attached = &cluster[at + 1..];
            if attached.is_empty() {
                (argv.get(i + 1).cloned(), 2)
            } else {
                (
                    Some(Word {
                        text: attached.to_owned(),
                        ..word.clone()
                    }),
                    1,
                )
            }
        } else {
            // Past the options and assignments: the command starts.
            let option = text.starts_with('-') && text.len() > 1;
            if text == "--" || !(option || assignment_prefix(text).is_some() || text == "-") {
                return Ok(());
            }
            // -u, -C, -P and their long forms take the next word.
            let takes_next = matches!(text, "-u" | "-C" | "-P" | "--unset" | "--chdir");
            i += if takes_next { 2 } else { 1 };
            continue;
        };
        let Some(value) = value else { return Ok(()) };
        if value.dynamic || rounds >= 8 {
            return Err(Why::LauncherOption);
        }
        rounds += 1;
        let words = env_split(&value.text)?;
        // `-iS string`, `-iSstring`: the flags before S stay.
        let mut replacement = Vec::with_capacity(words.len() + 1);
        if !text.starts_with("--")
            && let Some(at) = text.find('S')
            && at > 1
        {
            replacement.push(Word {
                text: text[..at].to_owned(),
                ..value.clone()
            });
        }
        replacement.extend(words.into_iter().map(|text| Word {
            text,
            dynamic: false,
            pattern: false,
        }));
        argv.splice(i..(i + used).min(argv.len()), replacement);
    }
    Ok(())
}

/// The words of an `env -S` string: blanks separate them, `'...'` is
/// literal but for `\\` and `\'`, `"..."` and bare text take the escapes `\\`, `\'`, `\"`,
/// `\$`, `\#`, `\_` (a space: inside double quotes a literal one, outside
/// a separator), `\t`, `\n`, `\r`, `\f`, `\v` and `\c` (the end); `#` at the
/// start of a word begins a comment. `${VAR}` takes a value keyward does not
/// know: an error.
fn env_split(text: &str) -> Result<Vec<String>, Why> {
    let mut words = Vec::new();
    let mut current: Option<String> = None;
    let mut chars = text.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some('\''), '\'') | (Some('"'), '"') => quote = None,
            // Inside single quotes only `\\` and `\'` are escapes.
            (Some('\''), '\\') => {
                let escaped = match chars.peek() {
                    Some(&e @ ('\\' | '\'')) => {
                        chars.next();
                        e
                    }
                    _ => '\\',
                };
                current.get_or_insert_default().push(escaped);
            }
            (Some('\''), c) => current.get_or_insert_default().push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                current.get_or_insert_default();
            }
            (None, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c') => words.extend(current.take()),
            (None, '#') if current.is_none() => break,
            (_, '$') => return Err(Why::LauncherOption),
            (_, '\\') => {
                let escaped = match chars.next() {
                    Some(e @ ('\\' | '\'' | '"' | '$' | '#')) => e,
                    Some('_') if quote.is_none() => {
                        words.extend(current.take());
                        continue;
                    }
                    Some('_') => ' ',
                    Some('t') => '\t',
                    Some('n') => '\n',
                    Some('r') => '\r',
                    Some('f') => '\x0c',
                    Some('v') => '\x0b',
                    Some('c') if quote.is_none() => break,
                    _ => return Err(Why::LauncherOption),
                };
                current.get_or_insert_default().push(escaped);
            }
            (_, c) => current.get_or_insert_default().push(c),
        }
    }
    if quote.is_some() {
        return Err(Why::UnbalancedQuote);
    }
    words.extend(current);
    Ok(words)
}

impl Reader<'_, '_> {
    /// Records `command`, or what it runs when it is a launcher or runs a
    /// script. `stdin_text` is a here-string given to it.
    pub(super) fn unwrap(
        &mut self,
        mut command: Command,
        stdin_text: Option<Word>,
    ) -> Result<(), Why> {
        loop {
            let Some(first) = command.argv.first() else {
                return Ok(());
            };
            if first.dynamic || first.pattern {
                self.out.push(Part::Unparseable {
                    why: Why::DynamicCommand,
                    text: command.shown(),
                });
                return Ok(());
            }
            let (options, visible) = match command.name() {
                "env" => {
                    if let Err(why) = split_string(&mut command.argv) {
                        let text = command.shown();
                        self.out.push(Part::Unparseable { why, text });
                        return Ok(());
                    }
                    (&ENV, false)
                }
                "command" => (&COMMAND, false),
                "exec" => (&EXEC, false),
                "nohup" | "builtin" | "busybox" => (&NONE, false),
                "stdbuf" => (&STDBUF, false),
                "setsid" => (&SETSID, false),
                "nice" => (&NICE, false),
                "ionice" => (&IONICE, false),
                "chrt" => (&CHRT, false),
                "taskset" => (&TASKSET, false),
                "unbuffer" => (&UNBUFFER, false),
                "systemd-run" => (&SYSTEMD_RUN, true),
                "proot" => (&PROOT, true),
                "firejail" => (&FIREJAIL, true),
                "sshpass" => (&SSHPASS, true),
                "flock" | "script" => {
                    if let Some(text) = inline_option(&command.argv) {
                        return self.script(command, &text);
                    }
                    if command.name() == "script" {
                        // An interactive shell, recorded as itself.
                        self.out.push(Part::Command(command));
                        return Ok(());
                    }
                    (&FLOCK, false)
                }
                "time" => (&TIME, false),
                "timeout" => (&TIMEOUT, false),
                "sudo" => (&SUDO, true),
                "doas" => (&DOAS, true),
                "xargs" => (&XARGS, true),
                "watch" => return self.watch(command),
                "ssh" => return self.ssh(command),
                "eval" => {
                    let script = Word {
                        text: join(&command.argv[1..]),
                        dynamic: command.argv[1..].iter().any(|w| w.dynamic),
                        pattern: false,
                    };
                    return self.script(command, &script);
                }
                "alias" => return self.alias(command),
                "trap" => return self.trap(command),
                name if SHELLS.contains(&name) => return self.shell(command, stdin_text),
                _ => {
                    self.out.push(Part::Command(command));
                    return Ok(());
                }
            };
            let (at, env) = match split(&command.argv, options) {
                Ok(split) => split,
                Err(why) => {
                    let text = command.shown();
                    self.out.push(Part::Unparseable { why, text });
                    return Ok(());
                }
            };
            if at >= command.argv.len() {
                // The launcher alone (`sudo -v`, `env`): it is the command.
                self.out.push(Part::Command(command));
                return Ok(());
            }
            let inner = command.argv.split_off(at);
            if visible {
                self.out.push(Part::Command(command.clone()));
            }
            command.argv = inner;
            command.env.extend(env);
        }
    }

    /// A script given as text to `command`: read like a line of its own,
    /// with the command's inputs and variables. One computed at run time
    /// cannot be read; the command itself is then recorded too, so rules on
    /// what feeds it still apply.
    fn script(&mut self, command: Command, script: &Word) -> Result<(), Why> {
        if script.dynamic {
            self.out.push(Part::Unparseable {
                why: Why::DynamicScript,
                text: command.shown(),
            });
            self.out.push(Part::Command(command));
            return Ok(());
        }
        let ctx = Context {
            inputs: command.inputs,
            env: command.env,
        };
        let depth = self.nested()?;
        parse_script(&script.text, &ctx, depth, self.out);
        Ok(())
    }

    /// `sh -c SCRIPT`, `bash -lc SCRIPT`, `bash <<< SCRIPT`; with a script
    /// file or a script on stdin, the shell is the command.
    fn shell(&mut self, command: Command, stdin_text: Option<Word>) -> Result<(), Why> {
        let argv = &command.argv;
        let mut inline = false;
        let mut i = 1;
        while let Some(word) = argv.get(i) {
            let text = word.text.as_str();
            if word.dynamic || text == "--" || text == "-" {
                i += usize::from(!word.dynamic);
                break;
            }
            if text.starts_with("--") {
                i += if matches!(text, "--rcfile" | "--init-file") {
                    2
                } else {
                    1
                };
                continue;
            }
            let Some(cluster) = text.strip_prefix(['-', '+']).filter(|c| !c.is_empty()) else {
                break;
            };
            inline |= cluster.contains('c');
            i += if cluster.contains(['o', 'O']) { 2 } else { 1 };
        }
        let script = if inline {
            argv.get(i).cloned()
        } else if i >= argv.len() {
            stdin_text
        } else {
            None
        };
        // `sh -c SCRIPT NAME ARGS...`: `$0` is NAME, `$@` the ARGS.
        let positional = if inline && i + 1 < argv.len() {
            Some(argv[i + 1..].to_vec())
        } else {
            None
        };
        match script {
            Some(script) => {
                let start = self.out.len();
                self.script(command, &script)?;
                if let Some((zero, params)) = positional.as_deref().and_then(<[Word]>::split_first)
                {
                    for part in &mut self.out[start..] {
                        if let Part::Command(c) = part {
                            super::lines::substitute(c, Some(zero), params);
                        }
                    }
                }
                Ok(())
            }
            None => {
                self.out.push(Part::Command(command));
                Ok(())
            }
        }
    }

    /// `ssh [options] host [command...]`: the command's words, joined by
    /// spaces, are a script for the remote shell, read like a line of its
    /// own; ssh itself is kept as a part (its options and the host, not the
    /// command), so rules on hosts and options apply. OpenSSH reads options
    /// again after the host (`ssh h -p 22 ls`), up to the first other word.
    /// `-o` options are written `-o name=value` with the name in lower case
    /// (ssh reads them in any case, with `=` or a blank): rules match one
    /// form. The commands `ProxyCommand`, `LocalCommand` and
    /// `KnownHostsCommand` name are local scripts, `RemoteCommand` a remote
    /// one: all are read too.
    fn ssh(&mut self, command: Command) -> Result<(), Why> {
        // OpenSSH's getopt string: options with a value, then flags.
        const VALUE: &str = "bcDEeFIiJLlmOoPpQRSWwB";
        const FLAGS: &str = "1246afgknqstvxACGKMNTVXYy";
        let argv = &command.argv;
        let mut visible = vec![argv[0].clone()];
        let mut scripts: Vec<Word> = Vec::new();
        let mut host = false;
        let mut options_end = false;
        let mut i = 1;
        let unparseable = |reader: &mut Self, command: Command| {
            let text = command.shown();
            reader.out.push(Part::Unparseable {
                why: Why::LauncherOption,
                text,
            });
            Ok(())
        };
        while let Some(word) = argv.get(i) {
            let text = word.text.as_str();
            if !options_end && text == "--" {
                options_end = true;
                i += 1;
                continue;
            }
            let cluster = text.strip_prefix('-').filter(|c| !c.is_empty());
            match cluster {
                Some(cluster) if !options_end => {
                    if word.dynamic {
                        return unparseable(self, command);
                    }
                    let mut next = i + 1;
                    for (at, c) in cluster.char_indices() {
                        if VALUE.contains(c) {
                            let attached = &cluster[at + 1..];
                            let value = if attached.is_empty() {
                                next += 1;
                                match argv.get(i + 1) {
                                    Some(v) => v.clone(),
                                    None => return unparseable(self, command),
                                }
                            } else {
                                Word {
                                    text: attached.to_owned(),
                                    ..word.clone()
                                }
                            };
                            if c == 'o' {
                                if value.dynamic {
                                    return unparseable(self, command);
                                }
                                let (name, setting) = ssh_option(&value.text);
                                if matches!(
                                    name.as_str(),
                                    "proxycommand"
                                        | "localcommand"
                                        | "knownhostscommand"
                                        | "remotecommand"
                                ) && setting != "none"
                                {
                                    scripts.push(Word {
                                        text: setting.clone(),
                                        ..value.clone()
                                    });
                                }
                                visible.push(Word {
                                    text: "-o".into(),
                                    dynamic: false,
                                    pattern: false,
                                });
                                visible.push(Word {
                                    text: format!("{name}={setting}"),
                                    ..value
                                });
                            } else {
                                visible.push(Word {
                                    text: format!("-{c}"),
                                    dynamic: false,
                                    pattern: false,
                                });
                                visible.push(value);
                            }
                            break;
                        }
                        if !FLAGS.contains(c) {
                            return unparseable(self, command);
                        }
                        visible.push(Word {
                            text: format!("-{c}"),
                            dynamic: false,
                            pattern: false,
                        });
                    }
                    i = next;
                }
                _ if !host => {
                    // A host computed at run time is still a host: rules on
                    // it see it as written.
                    visible.push(word.clone());
                    host = true;
                    options_end = false;
                    i += 1;
                }
                _ => break,
            }
        }
        let remote = &argv[i.min(argv.len())..];
        let mut ssh = Command {
            argv: visible,
            ..command.clone()
        };
        ssh.runs_download.clear();
        self.out.push(Part::Command(ssh));
        if !remote.is_empty() {
            scripts.push(Word {
                text: join(remote),
                dynamic: remote.iter().any(|w| w.dynamic),
                pattern: false,
            });
        }
        for script in &scripts {
            self.script(command.clone(), script)?;
        }
        Ok(())
    }

    /// `watch CMD...` runs `sh -c "CMD..."`; `watch -x CMD...` runs CMD.
    fn watch(&mut self, mut command: Command) -> Result<(), Why> {
        let (at, _) = match split(&command.argv, &WATCH) {
            Ok(split) => split,
            Err(why) => {
                let text = command.shown();
                self.out.push(Part::Unparseable { why, text });
                return Ok(());
            }
        };
        if at >= command.argv.len() {
            self.out.push(Part::Command(command));
            return Ok(());
        }
        let exec = command.argv[1..at]
            .iter()
            .any(|w| w.text == "--exec" || (!w.text.starts_with("--") && w.text.contains('x')));
        let inner = command.argv.split_off(at);
        if exec {
            command.argv = inner;
            return self.unwrap(command, None);
        }
        let script = Word {
            text: join(&inner),
            dynamic: inner.iter().any(|w| w.dynamic),
            pattern: false,
        };
        command.argv.extend(inner);
        self.script(command, &script)
    }

    /// `alias name='text'`: the text is what `name` will run.
    fn alias(&mut self, command: Command) -> Result<(), Why> {
        let definitions: Vec<Word> = command.argv[1..]
            .iter()
            .filter_map(|w| {
                let (_, value) = w.text.split_once('=')?;
                Some(Word {
                    text: value.to_owned(),
                    dynamic: w.dynamic,
                    pattern: false,
                })
            })
            .collect();
        if definitions.is_empty() {
            self.out.push(Part::Command(command));
            return Ok(());
        }
        for definition in &definitions {
            self.script(command.clone(), definition)?;
        }
        Ok(())
    }

    /// `trap 'text' SIGNAL...`: the text runs when the signal comes.
    fn trap(&mut self, command: Command) -> Result<(), Why> {
        match command.argv.get(1) {
            Some(action)
                if command.argv.len() > 2 && !matches!(action.text.as_str(), "-" | "" | "--") =>
            {
                let action = action.clone();
                self.script(command, &action)
            }
            _ => {
                self.out.push(Part::Command(command));
                Ok(())
            }
        }
    }
}

/// An ssh `-o` option (`Name=value`, `Name value`, `Name = value`) as
/// its lower-case name and its value.
fn ssh_option(text: &str) -> (String, String) {
    let text = text.trim();
    let end = text
        .find(|c: char| c == '=' || c.is_ascii_whitespace())
        .unwrap_or(text.len());
    let name = text[..end].to_ascii_lowercase();
    let rest = text[end..].trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
    (name, rest.to_owned())
}

/// Words joined by spaces, as `eval`, `watch` and `ssh` join them.
fn join(words: &[Word]) -> String {
    let mut out = String::new();
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&w.text);
    }
    out
}
