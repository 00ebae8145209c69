//! Shell variables the line itself sets: `X=/etc/sudoers; echo y >> $X`
//! writes the sudoers file, `c=rm; $c -rf /` runs rm. A variable assigned
//! earlier in the same script by a plain assignment statement is
//! substituted where it is expanded later; every other variable keeps its
//! run-time form (a command name or a redirection computed at run time,
//! which no rule allows).
//!
//! A value is only known where the shell is sure to have it: the
//! assignment is a statement of its own at the script's top level, run
//! unconditionally (not after `&&`, `||` or `|`, not in the background, a
//! subshell, a loop, a condition or a function), with a value free of
//! substitutions. Anything that may change a variable behind the reader's
//! back makes it forget: any other assignment of the name (a prefix
//! assignment, one in a subshell, `${x:=v}`), and the builtins that assign
//! or run text (`read`, `declare`, `eval`, `source`, `trap`, `printf -v`,
//! ...), loops and function definitions (whose bodies run later, with later
//! values) forget everything and end learning for the rest of the script.

/// Names the shell itself sets or gives meaning to: never taken as known.
fn special(name: &str) -> bool {
    matches!(
        name,
        "_" | "IFS"
            | "PWD"
            | "OLDPWD"
            | "RANDOM"
            | "SRANDOM"
            | "SECONDS"
            | "LINENO"
            | "EPOCHSECONDS"
            | "EPOCHREALTIME"
            | "HISTCMD"
            | "OPTIND"
            | "OPTARG"
            | "REPLY"
            | "DIRSTACK"
            | "GROUPS"
            | "FUNCNAME"
            | "PIPESTATUS"
            | "MAPFILE"
            | "COLUMNS"
            | "LINES"
            | "PPID"
            | "UID"
            | "EUID"
            | "SHELLOPTS"
            | "SHLVL"
    ) || ["BASH", "COMP_", "READLINE_"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Builtins that assign variables, give them attributes, or run text in
/// the current shell (which may assign anything).
pub(super) fn assigns_variables(name: &str) -> bool {
    matches!(
        name,
        "read"
            | "mapfile"
            | "readarray"
            | "declare"
            | "typeset"
            | "local"
            | "export"
            | "readonly"
            | "unset"
            | "getopts"
            | "let"
            | "eval"
            | "source"
            | "."
            | "alias"
            | "trap"
            | "enable"
            | "wait"
            | "select"
            | "coproc"
    )
}

/// A value known at parse time.
#[derive(Debug, Clone)]
pub(super) struct Value {
    pub text: String,
    /// `$HOME/...`: a run-time word whose directory is known all the same.
    pub dynamic: bool,
}

/// What the reader knows of the script's variables.
#[derive(Debug, Clone)]
pub(super) struct Vars {
    known: Vec<(String, Value)>,
    /// False once something made values uncertain for the rest of the
    /// script (a loop, a condition, a function, a builtin that assigns).
    learning: bool,
}

impl Default for Vars {
    fn default() -> Self {
        Self {
            known: Vec::new(),
            learning: true,
        }
    }
}

impl Vars {
    pub fn get(&self, name: &str) -> Option<&Value> {
        // The last assignment wins; lines hold few variables.
        self.known
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    pub fn forget(&mut self, name: &str) {
        self.known.retain(|(n, _)| n != name);
        if name == "IFS" {
            // Every unquoted expansion splits differently from here on.
            self.stop();
        }
    }

    /// Forgets everything and learns nothing more.
    pub fn stop(&mut self) {
        self.known.clear();
        self.learning = false;
    }

    /// Stops learning, keeping what is known (a condition: what it assigns
    /// is forgotten as it is read).
    pub fn pause(&mut self) {
        self.learning = false;
    }

    /// An assignment `name=value` (or `name+=value` with `append`) that
    /// the shell is sure to perform when `certain`.
    pub fn assign(&mut self, name: &str, value: &str, dynamic: bool, append: bool, certain: bool) {
        self.forget(name);
        let stable = !dynamic || stable_prefix(value);
        if !certain || !self.learning || append || !stable || special(name) {
            return;
        }
        self.known.push((
            name.to_owned(),
            Value {
                text: value.to_owned(),
                dynamic,
            },
        ));
    }
}

/// `$HOME`, `$HOME/x`, `$PWD/x`, `~/x`: a run-time value whose directory
/// is known.
fn stable_prefix(text: &str) -> bool {
    matches!(text, "$HOME" | "$PWD")
        || ["$HOME/", "$PWD/", "~/"]
            .iter()
            .any(|p| text.starts_with(p) && !text[p.len()..].contains(['$', '`']))
}

/// The bytes an unquoted expansion splits on: the default `IFS` (bash and
/// dash both reset `IFS` at start-up, whatever the environment says).
pub(super) fn is_ifs(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n')
}
