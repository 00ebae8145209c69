//! A reader of POSIX shell command lines for policy: it finds every simple
//! command a line would run, so that rules decide on what the shell
//! executes rather than on the raw string.
//!
//! Our own small reader, not a shell-syntax crate: the maintained parser
//! (brush-parser) brings some thirty crates (two parser generators, proc
//! macros, a C build step) and its words still need a second parse and
//! quote removal; conch-parser is unmaintained, yash-syntax is GPL and
//! async, shell-words/shlex only split words. What policy needs is narrower
//! and stricter than an interpreter's parser: quote removal, the command
//! lists, substitutions and launchers, and a refusal (`Part::Unparseable`)
//! for anything it does not follow, since what cannot be read cannot be
//! allowed. Pure, no I/O, bounded nesting.

use std::fmt;

mod launchers;
mod lines;
mod vars;

/// How deep substitutions, subshells and inline scripts may nest.
const MAX_DEPTH: usize = 24;

/// How many commands one line may hold: each command carries the names of
/// those feeding it, so an endless pipeline must not cost quadratic time.
const MAX_COMMANDS: usize = 256;

/// One word after quote removal.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Word {
    /// The word's value; expansions keep their source form (`$HOME`,
    /// `$(cmd)`), `${NAME}` is written `$NAME`, except the variables the
    /// script itself assigned a known value (see `vars`), which are
    /// replaced by it.
    pub text: String,
    /// Part of the value is only known at run time (a variable, a
    /// substitution).
    pub dynamic: bool,
    /// It holds an unquoted glob or brace pattern the shell would expand.
    pub pattern: bool,
}

/// Something a line does that a policy decides.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Part {
    /// A simple command, after its launchers were unwrapped.
    Command(Command),
    /// A file a redirection reads (`<`) or writes (`>`, `>>`, `>|`, `<>`).
    File { write: bool, path: String },
    /// Something the reader cannot follow; never allowed.
    Unparseable { why: Why, text: String },
}

/// A simple command as the shell would run it.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Command {
    /// Empty for a line of bare assignments (`X=1`).
    pub argv: Vec<Word>,
    /// Variables set for it: prefix assignments, `env NAME=...`, and those
    /// of the launchers and inline shells around it.
    pub env: Vec<String>,
    /// Base names of the commands whose output it reads: earlier stages of
    /// its pipeline and the substitutions inside its words.
    pub inputs: Vec<String>,
    /// Base names of the downloaders (`curl -o f`, `wget URL`) whose file
    /// it runs, as its program (`./f`) or as a script (`sh f`).
    pub runs_download: Vec<String>,
}

impl Command {
    /// The base name of `argv[0]`.
    pub fn name(&self) -> &str {
        self.argv.first().map_or("", |w| {
            // A byte loop: names are short, and this runs once per rule.
            let start = w.text.bytes().rposition(|b| b == b'/').map_or(0, |i| i + 1);
            &w.text[start..]
        })
    }

    /// Whether `argv[0]` is a path (`./x`, `/usr/bin/x`) rather than a
    /// name looked up on `PATH`.
    pub fn named_by_path(&self) -> bool {
        self.argv.first().is_some_and(|w| w.text.contains('/'))
    }

    /// The command as rules match it: `argv[0]` reduced to its base name,
    /// words quoted where the shell would need it.
    pub fn text(&self) -> String {
        self.render(true)
    }

    /// The command as written (after quote removal), for people.
    pub fn shown(&self) -> String {
        self.render(false)
    }

    fn render(&self, base_name: bool) -> String {
        if self.argv.is_empty() {
            // Bare assignments: the variables they set.
            return self
                .env
                .iter()
                .map(|n| format!("{n}="))
                .collect::<Vec<_>>()
                .join(" ");
        }
        let mut out = String::new();
        for (i, word) in self.argv.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            let text = if i == 0 && base_name {
                self.name()
            } else {
                &word.text
            };
            push_quoted(&mut out, text, word.dynamic);
        }
        out
    }
}

/// Why a part cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    UnbalancedQuote,
    Syntax,
    Heredoc,
    Arithmetic,
    Unsupported,
    DynamicCommand,
    DynamicScript,
    DynamicRedirect,
    DynamicFile,
    LauncherOption,
    TooDeep,
}

impl Why {
    pub const ALL: [Why; 11] = [
        Why::UnbalancedQuote,
        Why::Syntax,
        Why::Heredoc,
        Why::Arithmetic,
        Why::Unsupported,
        Why::DynamicCommand,
        Why::DynamicScript,
        Why::DynamicRedirect,
        Why::DynamicFile,
        Why::LauncherOption,
        Why::TooDeep,
    ];

    pub fn index(self) -> usize {
        Why::ALL.iter().position(|w| *w == self).unwrap_or(0)
    }

    /// For people: what could not be read.
    pub fn describe(self) -> &'static str {
        match self {
            Why::UnbalancedQuote => "an unterminated quote, substitution or parenthesis",
            Why::Syntax => "shell syntax keyward does not follow (a stray parenthesis)",
            Why::Heredoc => "a here-document, whose text keyward does not read",
            Why::Arithmetic => {
                "arithmetic or an expansion that evaluates it ($((...)), $[...], ((...)), [[...]], \
                 ${a[i]}, ${x:offset}, ${!x}) or ${x@P}, which can run commands hidden in variables"
            }
            Why::Unsupported => {
                "a case, select or coproc statement, an array assignment, or syntax shells read \
                 differently (zsh's >!, \\' inside $'...')"
            }
            Why::DynamicCommand => {
                "a command name computed at run time (a variable, substitution, glob or brace expansion)"
            }
            Why::DynamicScript => {
                "an inline script (sh -c, eval, watch, trap, alias) computed at run time"
            }
            Why::DynamicRedirect => "a redirection to a file name computed at run time",
            Why::DynamicFile => {
                "a file that a reader or writer (cat, grep, cp, tee, ...) is given as a name computed at run time"
            }
            Why::LauncherOption => {
                "an option of a launcher (sudo, env, xargs, ...) keyward does not know"
            }
            Why::TooDeep => {
                "more than 256 commands, or substitutions and inline scripts nested too deeply"
            }
        }
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Every part of `line`, in the order the shell reaches them (a
/// substitution before the command that uses it). A line that cannot be
/// read to its end ends with a [`Part::Unparseable`] naming the whole line.
pub(crate) fn parse(line: &str) -> Vec<Part> {
    let mut parts = Vec::new();
    parse_script(line, &Context::default(), 0, &mut parts);
    lines::follow(&mut parts);
    parts
}

/// What an enclosing command passes to the commands inside it.
#[derive(Debug, Clone, Default)]
struct Context {
    inputs: Vec<String>,
    env: Vec<String>,
}

/// Parses `script` into `out`; a failure becomes an unparseable part for
/// the script, after the parts read before it.
fn parse_script(script: &str, ctx: &Context, depth: usize, out: &mut Vec<Part>) {
    let mut reader = Reader {
        src: script,
        pos: 0,
        depth,
        out,
        ctx: ctx.clone(),
        vars: vars::Vars::default(),
        base_depth: depth,
        and_or: false,
        fields: Vec::new(),
        expanded: false,
        last_fields: Vec::new(),
        last_vanishes: false,
    };
    if let Err(why) = reader.list(ctx, Term::End) {
        out.push(Part::Unparseable {
            why,
            text: script.trim().to_owned(),
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Term {
    End,
    Paren,
}

struct Reader<'s, 'o> {
    src: &'s str,
    pos: usize,
    depth: usize,
    out: &'o mut Vec<Part>,
    /// What the command being read passes to the substitutions in its
    /// words: they share its stdin and variables.
    ctx: Context,
    /// The variables this script assigned, as far as known.
    vars: vars::Vars,
    /// The depth of this script's own top level.
    base_depth: usize,
    /// The last list operator was `&&`, `||` or `|`: what follows may not
    /// run, or runs in a subshell.
    and_or: bool,
    /// Where, in the text of the word being read, an unquoted expansion of
    /// a known value has a blank the shell splits fields at.
    fields: Vec<usize>,
    /// The word being read has an unquoted expansion of a known value.
    expanded: bool,
    /// The split points of the last word read.
    last_fields: Vec<usize>,
    /// The last word read was only unquoted expansions of empty values:
    /// the shell drops it.
    last_vanishes: bool,
}

fn is_meta(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t' | b'\n' | b'\r' | b';' | b'&' | b'|' | b'<' | b'>' | b'(' | b')'
    )
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_name(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The length of a leading `NAME=` or `NAME+=` (up to and including `=`).
fn assignment_prefix(src: &str) -> Option<(usize, usize)> {
    let b = src.as_bytes();
    if !b.first().copied().is_some_and(is_name_start) {
        return None;
    }
    let name_len = b.iter().take_while(|c| is_name(**c)).count();
    match b.get(name_len..name_len + 2) {
        Some([b'=', ..]) => Some((name_len, name_len + 1)),
        Some([b'+', b'=']) => Some((name_len, name_len + 2)),
        _ => match b.get(name_len) {
            Some(b'=') => Some((name_len, name_len + 1)),
            _ => None,
        },
    }
}

impl Reader<'_, '_> {
    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn peek_at(&self, n: usize) -> Option<u8> {
        self.src.as_bytes().get(self.pos + n).copied()
    }

    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn nested(&self) -> Result<usize, Why> {
        if self.depth >= MAX_DEPTH {
            Err(Why::TooDeep)
        } else {
            Ok(self.depth + 1)
        }
    }

    /// Spaces, tabs, line continuations and comments (not newlines).
    fn skip_blanks(&mut self) {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\r') => self.pos += 1,
                Some(b'\\') if self.peek_at(1) == Some(b'\n') => self.pos += 2,
                Some(b'#') => {
                    while self.peek().is_some_and(|b| b != b'\n') {
                        self.pos += 1;
                    }
                }
                _ => return,
            }
        }
    }

    /// A command list up to `term`: pipelines joined by `;`, `&`, `&&`,
    /// `||` and newlines.
    fn list(&mut self, ctx: &Context, term: Term) -> Result<(), Why> {
        let mut piped = ctx.clone();
        let mut stage_start = self.out.len();
        loop {
            self.skip_blanks();
            let Some(b) = self.peek() else {
                return match term {
                    Term::End => Ok(()),
                    Term::Paren => Err(Why::UnbalancedQuote),
                };
            };
            match b {
                b')' => {
                    return match term {
                        Term::Paren => {
                            self.pos += 1;
                            Ok(())
                        }
                        Term::End => Err(Why::Syntax),
                    };
                }
                b';' if self.peek_at(1) == Some(b';') => return Err(Why::Unsupported),
                b'|' if self.peek_at(1) != Some(b'|') => {
                    // `|` and `|&`: the next stage reads this one's output.
                    self.pos += if self.peek_at(1) == Some(b'&') { 2 } else { 1 };
                    self.and_or = true;
                    add_names(&mut piped.inputs, &self.out[stage_start..]);
                    stage_start = self.out.len();
                }
                b'\n' | b';' | b'&' | b'|' => {
                    let double = self.peek_at(1) == Some(b) && b != b'\n';
                    self.pos += if double { 2 } else { 1 };
                    self.and_or = double && b != b';';
                    piped = ctx.clone();
                    stage_start = self.out.len();
                }
                b'(' if self.peek_at(1) == Some(b'(') => return Err(Why::Arithmetic),
                b'(' => {
                    self.pos += 1;
                    let depth = self.nested()?;
                    let saved = std::mem::replace(&mut self.depth, depth);
                    let result = self.list(&piped, Term::Paren);
                    self.depth = saved;
                    result?;
                }
                _ => self.simple_command(&piped)?,
            }
        }
    }

    /// One simple command (with the reserved words before it skipped), up
    /// to the next operator.
    fn simple_command(&mut self, ctx: &Context) -> Result<(), Why> {
        let outer = std::mem::replace(&mut self.ctx, ctx.clone());
        let result = self.read_simple_command(ctx);
        self.ctx = outer;
        result
    }

    fn read_simple_command(&mut self, ctx: &Context) -> Result<(), Why> {
        if self.out.len() >= MAX_COMMANDS {
            return Err(Why::TooDeep);
        }
        let nested_start = self.out.len();
        // Whether a bare assignment here surely runs, in this shell.
        let sequential = !self.and_or && self.depth == self.base_depth;
        let mut assignments: Vec<(String, String, bool, bool)> = Vec::new();
        let mut words: Vec<Word> = Vec::new();
        let mut env: Vec<String> = Vec::new();
        let mut redirects: Vec<(bool, Word)> = Vec::new();
        let mut here_string = None;
        let mut header = false;
        let mut function_name = false;
        loop {
            self.skip_blanks();
            let Some(b) = self.peek() else { break };
            let process_substitution = matches!(b, b'<' | b'>') && self.peek_at(1) == Some(b'(');
            if !process_substitution && self.redirect(&mut redirects, &mut here_string)? {
                continue;
            }
            if b == b'(' {
                if self.peek_at(1) == Some(b')') && words.len() == 1 && !header {
                    // `name() body`: the body is read as commands. It runs
                    // when called, with the values of then.
                    self.pos += 2;
                    words.clear();
                    self.vars.stop();
                }
                break;
            }
            if !process_substitution && is_meta(b) {
                break;
            }
            let start = self.pos;
            let word = self.word(false)?;
            let fields = std::mem::take(&mut self.last_fields);
            let source = &self.src[start..self.pos];
            if words.is_empty() && !header {
                if function_name {
                    function_name = false;
                    continue;
                }
                if let Some((name_len, value_start)) = assignment_prefix(source) {
                    if self.peek() == Some(b'(') && value_start == source.len() {
                        return Err(Why::Unsupported);
                    }
                    let name = source[..name_len].to_owned();
                    // The name and `=` are never quoted: the value starts at
                    // the same place in the word's text.
                    let value = word.text.get(value_start..).unwrap_or_default();
                    let append = value_start > name_len + 1;
                    assignments.push((name.clone(), value.to_owned(), word.dynamic, append));
                    env.push(name);
                    continue;
                }
                if !word.dynamic && source == word.text {
                    match source {
                        // Conditions: what they assign may not happen.
                        "if" | "then" | "elif" | "else" | "fi" | "!" | "{" | "}" => {
                            self.vars.pause();
                            continue;
                        }
                        // Loops: a body's later rounds see its own
                        // assignments.
                        "do" | "done" | "while" | "until" => {
                            self.vars.stop();
                            continue;
                        }
                        "for" => {
                            self.vars.stop();
                            header = true;
                            continue;
                        }
                        "function" => {
                            self.vars.stop();
                            function_name = true;
                            continue;
                        }
                        // `select` is a command name in dash.
                        "case" | "coproc" | "select" => return Err(Why::Unsupported),
                        "[[" => return Err(Why::Arithmetic),
                        _ => {}
                    }
                }
            }
            if self.last_vanishes {
                // `$empty` unquoted: no word at all (`$e terraform apply`
                // runs terraform).
                continue;
            }
            if fields.is_empty() {
                words.push(word);
            } else {
                split_fields(&word, &fields, &mut words);
            }
        }
        if header {
            return Ok(());
        }
        // Who may run or be run here decides whether values stay known.
        let certain = sequential && words.is_empty() && {
            // Not in the background, not a pipeline stage (a subshell).
            let next = self.peek();
            let after = self.peek_at(1);
            !matches!((next, after), (Some(b'|'), b) if b != Some(b'|'))
                && !matches!((next, after), (Some(b'&'), b) if b != Some(b'&'))
        };
        for (name, value, dynamic, append) in &assignments {
            self.vars.assign(name, value, *dynamic, *append, certain);
        }
        let mut inputs = ctx.inputs.clone();
        add_names(&mut inputs, &self.out[nested_start..]);
        let mut all_env = ctx.env.clone();
        all_env.extend(env);
        let command = Command {
            argv: words,
            env: all_env,
            inputs,
            runs_download: Vec::new(),
        };
        // bash's `time c=x` (a reserved word, not a launcher) assigns in
        // this shell: a word that looks like an assignment anywhere makes
        // its name unknown.
        // Likewise bash's `{name}>file`, which stores a descriptor number
        // in `name`.
        for word in &command.argv {
            if let Some((name_len, _)) = assignment_prefix(&word.text) {
                self.vars.forget(&word.text[..name_len]);
            } else if let Some(name) = word
                .text
                .strip_prefix('{')
                .and_then(|w| w.strip_suffix('}'))
            {
                self.vars.forget(name);
            }
        }
        // Any word, not only the first: `command eval`, `builtin read`,
        // `exec read` run the builtin too.
        // (`.` only as the command: as an operand it is the directory.)
        let runs_builtin = command.argv.iter().enumerate().any(|(i, w)| {
            !w.dynamic && vars::assigns_variables(&w.text) && (i == 0 || w.text != ".")
        });
        if command.argv.is_empty() {
            if command.env.len() > ctx.env.len() {
                self.out.push(Part::Command(command));
            }
        } else {
            self.unwrap(command, here_string)?;
        }
        // A builtin behind a launcher (`command read x`, `builtin eval`)
        // or `printf -v NAME`: values may change.
        let assigns = runs_builtin
            || self.out[nested_start..].iter().any(|p| match p {
                Part::Command(c) => {
                    vars::assigns_variables(c.name())
                        || (c.name() == "printf"
                            && c.argv[1..].iter().any(|w| w.text.starts_with("-v")))
                }
                _ => false,
            });
        if assigns {
            self.vars.stop();
        }
        for (write, target) in redirects {
            self.out.push(if target.dynamic {
                Part::Unparseable {
                    why: Why::DynamicRedirect,
                    text: target.text,
                }
            } else {
                Part::File {
                    write,
                    path: target.text,
                }
            });
        }
        Ok(())
    }

    /// A redirection at the cursor, if there is one: its file (not a file
    /// descriptor) is recorded, or the text of a here-string (`<<<`).
    fn redirect(
        &mut self,
        redirects: &mut Vec<(bool, Word)>,
        stdin_text: &mut Option<Word>,
    ) -> Result<bool, Why> {
        let rest = self.rest().as_bytes();
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let op = &rest[digits..];
        let (len, write) = match op {
            [b'<', b'<', b'<', ..] => (3, false),
            [b'<', b'<', ..] => return Err(Why::Heredoc),
            // zsh's `>!` clobbers the next word, bash writes to `!...`.
            [b'>', b'!', ..] | [b'>', b'>', b'!', ..] => return Err(Why::Unsupported),
            [b'>', b'>', ..] | [b'>', b'|', ..] | [b'>', b'&', ..] | [b'<', b'>', ..] => (2, true),
            [b'<', b'&', ..] => (2, false),
            [b'>', ..] => (1, true),
            [b'<', ..] => (1, false),
            _ => return Ok(false),
        };
        let here_string = op.starts_with(b"<<<");
        let duplicates = op.starts_with(b">&") || op.starts_with(b"<&");
        self.pos += digits + len;
        self.skip_blanks();
        if duplicates && self.peek() == Some(b'-') {
            // `>&-` closes; bash reads what follows the `-` as a new word
            // (`>&-cmd` runs `cmd`).
            self.pos += 1;
            return Ok(true);
        }
        if self
            .peek()
            .is_none_or(|b| is_meta(b) && b != b'<' && b != b'>')
        {
            return Err(Why::Syntax);
        }
        let mut target = self.word(false)?;
        let split = !std::mem::take(&mut self.last_fields).is_empty();
        if !here_string && (split || self.last_vanishes) {
            // bash refuses an "ambiguous redirect"; dash writes to the
            // whole text. Neither is a file a rule could name.
            target.dynamic = true;
        }
        // `>&2` duplicates and `>&3-` moves a descriptor: no file.
        let fd = duplicates && !target.dynamic && {
            let digits = target.text.strip_suffix('-').unwrap_or(&target.text);
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
        };
        if here_string {
            *stdin_text = Some(target);
        } else if !fd {
            redirects.push((write, target));
        }
        Ok(true)
    }

    /// One word at the cursor, quotes removed. With `in_braces`, the body
    /// of `${...}`: blanks belong to it and only `}` ends it.
    fn word(&mut self, in_braces: bool) -> Result<Word, Why> {
        let outer_fields = std::mem::take(&mut self.fields);
        let outer_expanded = std::mem::replace(&mut self.expanded, false);
        let mut quoted = false;
        let word = self.read_word(in_braces, &mut quoted)?;
        self.last_fields = std::mem::replace(&mut self.fields, outer_fields);
        self.last_vanishes = self.expanded && !quoted && word.text.is_empty() && !word.dynamic;
        self.expanded = outer_expanded;
        Ok(word)
    }

    fn read_word(&mut self, in_braces: bool, quoted: &mut bool) -> Result<Word, Why> {
        let mut word = Word {
            text: String::new(),
            dynamic: false,
            pattern: false,
        };
        let mut braces = (false, false);
        let first = self.pos;
        while let Some(b) = self.peek() {
            if in_braces {
                if b == b'}' {
                    break;
                }
            } else if matches!(b, b'<' | b'>') && self.peek_at(1) == Some(b'(') && self.pos == first
            {
                let start = self.pos;
                self.pos += 2;
                self.nested_list()?;
                word.text.push_str(&self.src[start..self.pos]);
                word.dynamic = true;
                continue;
            } else if is_meta(b) {
                break;
            }
            match b {
                b'\\' => {
                    self.pos += 1;
                    match self.src[self.pos..].chars().next() {
                        None => word.text.push('\\'),
                        Some('\n') => self.pos += 1,
                        Some(c) => {
                            word.text.push(c);
                            self.pos += c.len_utf8();
                        }
                    }
                }
                b'\'' => {
                    *quoted = true;
                    let body = &self.src[self.pos + 1..];
                    let end = body.find('\'').ok_or(Why::UnbalancedQuote)?;
                    word.text.push_str(&body[..end]);
                    self.pos += end + 2;
                }
                b'"' => {
                    *quoted = true;
                    self.double_quoted(&mut word)?;
                }
                b'`' => self.backticks(&mut word)?,
                b'$' => {
                    *quoted |= matches!(self.peek_at(1), Some(b'\'' | b'"'));
                    self.dollar(&mut word, false)?;
                }
                b'*' | b'?' | b'[' => {
                    word.pattern = true;
                    word.text.push(b as char);
                    self.pos += 1;
                }
                b'{' | b'}' => {
                    if b == b'{' {
                        braces.0 = true;
                    } else {
                        braces.1 = braces.0;
                    }
                    word.text.push(b as char);
                    self.pos += 1;
                }
                _ => {
                    let run = self.rest().as_bytes()[1..]
                        .iter()
                        .position(|&c| {
                            is_meta(c)
                                || matches!(c, b'\\' | b'\'' | b'"' | b'`' | b'$' | b'*')
                                || matches!(c, b'?' | b'[' | b'{' | b'}')
                        })
                        .map_or(self.src.len() - self.pos, |p| p + 1);
                    word.text.push_str(&self.src[self.pos..self.pos + run]);
                    self.pos += run;
                }
            }
        }
        word.pattern |= braces.0 && braces.1;
        Ok(word)
    }

    /// `"..."`: `$`, backticks and `\` keep their meaning inside.
    fn double_quoted(&mut self, word: &mut Word) -> Result<(), Why> {
        self.pos += 1;
        loop {
            match self.peek() {
                None => return Err(Why::UnbalancedQuote),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'\\') => match self.peek_at(1) {
                    Some(c @ (b'$' | b'`' | b'"' | b'\\')) => {
                        word.text.push(c as char);
                        self.pos += 2;
                    }
                    Some(b'\n') => self.pos += 2,
                    _ => {
                        word.text.push('\\');
                        self.pos += 1;
                    }
                },
                Some(b'$') => self.dollar(word, true)?,
                Some(b'`') => self.backticks(word)?,
                Some(_) => {
                    let run = self
                        .rest()
                        .bytes()
                        .position(|c| matches!(c, b'"' | b'\\' | b'$' | b'`'))
                        .unwrap_or(self.src.len() - self.pos);
                    word.text.push_str(&self.src[self.pos..self.pos + run]);
                    self.pos += run;
                }
            }
        }
    }

    /// `` `...` ``: the old form of command substitution.
    fn backticks(&mut self, word: &mut Word) -> Result<(), Why> {
        let start = self.pos;
        self.pos += 1;
        let mut inner = String::new();
        loop {
            match self.peek() {
                None => return Err(Why::UnbalancedQuote),
                Some(b'`') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') if matches!(self.peek_at(1), Some(b'$' | b'`' | b'\\')) => {
                    inner.push(self.peek_at(1).unwrap_or(b'\\') as char);
                    self.pos += 2;
                }
                Some(_) => {
                    let c = self.rest().chars().next().unwrap_or('\0');
                    inner.push(c);
                    self.pos += c.len_utf8();
                }
            }
        }
        let depth = self.nested()?;
        let mut nested = Vec::new();
        parse_script(&inner, &self.ctx.clone(), depth, &mut nested);
        self.out.extend(nested);
        word.text.push_str(&self.src[start..self.pos]);
        word.dynamic = true;
        Ok(())
    }

    /// A `( ... )` body whose `(` was consumed, one level deeper.
    fn nested_list(&mut self) -> Result<(), Why> {
        let depth = self.nested()?;
        let saved = std::mem::replace(&mut self.depth, depth);
        let ctx = self.ctx.clone();
        let result = self.list(&ctx, Term::Paren);
        self.depth = saved;
        result
    }

    /// `$...` at the cursor.
    fn dollar(&mut self, word: &mut Word, in_double_quotes: bool) -> Result<(), Why> {
        let start = self.pos;
        match self.peek_at(1) {
            Some(b'\'') if !in_double_quotes => {
                self.pos += 2;
                self.ansi_c(word)
            }
            Some(b'"') if !in_double_quotes => {
                // `$"..."` (translated): a double-quoted string.
                self.pos += 1;
                Ok(())
            }
            Some(b'(') if self.peek_at(2) == Some(b'(') => Err(Why::Arithmetic),
            Some(b'(') => {
                self.pos += 2;
                self.nested_list()?;
                word.text.push_str(&self.src[start..self.pos]);
                word.dynamic = true;
                Ok(())
            }
            Some(b'[') => Err(Why::Arithmetic),
            Some(b'{') => {
                self.pos += 2;
                let was_dynamic = word.dynamic;
                word.dynamic = true;
                let name_len = self.parameter_name()?;
                let body = self.rest().as_bytes();
                match (body.get(name_len), body.get(name_len + 1)) {
                    (Some(b'}'), _) => {
                        let name = &self.src[self.pos..self.pos + name_len];
                        self.pos += name_len + 1;
                        word.dynamic = was_dynamic;
                        if !self.expand_known(word, name, in_double_quotes) {
                            word.dynamic = true;
                            word.text.push('$');
                            word.text.push_str(name);
                        }
                        return Ok(());
                    }
                    (Some(b':'), Some(b'-' | b'=' | b'?' | b'+'))
                    | (Some(b'-' | b'=' | b'?' | b'+' | b'#' | b'%' | b'/' | b'^' | b','), _) => {}
                    // `${a[i]}`, `${x:offset}` evaluate arithmetic; `${x@P}`
                    // runs the substitutions inside the value.
                    _ => return Err(Why::Arithmetic),
                }
                // `${x:=word}` assigns x.
                let assigns = match (body.get(name_len), body.get(name_len + 1)) {
                    (Some(b'='), _) | (Some(b':'), Some(b'=')) => {
                        Some(self.src[self.pos..self.pos + name_len].to_owned())
                    }
                    _ => None,
                };
                if let Some(name) = assigns {
                    self.vars.forget(&name);
                }
                // `${x:-word}` and friends: the word may hold substitutions.
                let depth = self.nested()?;
                let saved = std::mem::replace(&mut self.depth, depth);
                let rest = self.word(true);
                self.depth = saved;
                rest?;
                if self.peek() != Some(b'}') {
                    return Err(Why::UnbalancedQuote);
                }
                self.pos += 1;
                word.text.push_str(&self.src[start..self.pos]);
                Ok(())
            }
            Some(c) if is_name_start(c) => {
                let len = self.rest()[1..].bytes().take_while(|b| is_name(*b)).count();
                self.pos += 1 + len;
                let name = &self.src[start + 1..start + 1 + len];
                if !self.expand_known(word, name, in_double_quotes) {
                    word.text.push_str(&self.src[start..start + 1 + len]);
                    word.dynamic = true;
                }
                Ok(())
            }
            Some(c) if c.is_ascii_digit() || b"@*#?-$!".contains(&c) => {
                word.text.push_str(&self.src[start..start + 2]);
                self.pos += 2;
                word.dynamic = true;
                Ok(())
            }
            _ => {
                word.text.push('$');
                self.pos += 1;
                Ok(())
            }
        }
    }

    /// `$name` whose value this script set: its value, split into fields
    /// where unquoted (see [`vars`]). False when the value is not known.
    fn expand_known(&mut self, word: &mut Word, name: &str, in_double_quotes: bool) -> bool {
        let Some(value) = self.vars.get(name) else {
            return false;
        };
        if value.dynamic {
            // `$HOME/...`: known directory, run-time word.
            word.text.push_str(&value.text);
            word.dynamic = true;
            return true;
        }
        if in_double_quotes {
            word.text.push_str(&value.text);
            return true;
        }
        self.expanded = true;
        for c in value.text.chars() {
            if vars::is_ifs(c) {
                self.fields.push(word.text.len());
            } else if matches!(c, '*' | '?' | '[') {
                word.pattern = true;
            }
            word.text.push(c);
        }
        true
    }

    /// The length of the parameter after `${`: a name, digits, a special
    /// parameter or `#name` (its length). `${!x}` (indirection, which can
    /// reach an array element and so arithmetic) is refused.
    fn parameter_name(&self) -> Result<usize, Why> {
        let body = self.rest().as_bytes();
        let run =
            |from: usize, f: fn(u8) -> bool| body[from..].iter().take_while(|b| f(**b)).count();
        Ok(match body.first() {
            Some(c) if is_name_start(*c) => run(0, is_name),
            Some(c) if c.is_ascii_digit() => run(0, |b| b.is_ascii_digit()),
            Some(b'#') if body.get(1).copied().is_some_and(is_name_start) => 1 + run(1, is_name),
            Some(b'@' | b'*' | b'?' | b'-' | b'$' | b'#') => 1,
            _ => return Err(Why::Arithmetic),
        })
    }

    /// The body of `$'...'` with its escapes decoded.
    fn ansi_c(&mut self, word: &mut Word) -> Result<(), Why> {
        let mut bytes = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                return Err(Why::UnbalancedQuote);
            };
            self.pos += 1;
            match b {
                b'\'' => break,
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return Err(Why::UnbalancedQuote);
                    };
                    self.pos += 1;
                    let simple = match e {
                        b'n' => Some(b'\n'),
                        b't' => Some(b'\t'),
                        b'r' => Some(b'\r'),
                        b'a' => Some(7),
                        b'b' => Some(8),
                        b'e' | b'E' => Some(27),
                        b'f' => Some(12),
                        b'v' => Some(11),
                        // Where `$'it\'s'` ends, bash and dash disagree.
                        b'\'' => return Err(Why::Unsupported),
                        b'\\' | b'"' | b'?' => Some(e),
                        _ => None,
                    };
                    if let Some(s) = simple {
                        bytes.push(s);
                        continue;
                    }
                    match e {
                        b'x' => match self.radix(16, 2) {
                            Some(value) => bytes.push(value as u8),
                            None => bytes.extend_from_slice(b"\\x"),
                        },
                        b'0'..=b'7' => {
                            self.pos -= 1;
                            bytes.push(self.radix(8, 3).unwrap_or(0) as u8);
                        }
                        b'u' | b'U' => {
                            let max = if e == b'u' { 4 } else { 8 };
                            let c = self.radix(16, max).and_then(char::from_u32);
                            let mut buf = [0; 4];
                            bytes.extend_from_slice(
                                c.unwrap_or('\u{fffd}').encode_utf8(&mut buf).as_bytes(),
                            );
                        }
                        b'c' => {
                            let c = self.rest().chars().next().unwrap_or('@');
                            self.pos += c.len_utf8();
                            bytes.push(c as u8 & 0x1f);
                        }
                        other => {
                            bytes.push(b'\\');
                            bytes.push(other);
                        }
                    }
                }
                other => bytes.push(other),
            }
        }
        word.text.push_str(&String::from_utf8_lossy(&bytes));
        Ok(())
    }

    /// Up to `max` digits in `radix` at the cursor.
    fn radix(&mut self, radix: u32, max: usize) -> Option<u32> {
        let digits = self
            .rest()
            .chars()
            .take(max)
            .take_while(|c| c.is_digit(radix))
            .count();
        if digits == 0 {
            return None;
        }
        let value = u32::from_str_radix(&self.src[self.pos..self.pos + digits], radix).ok();
        self.pos += digits;
        value
    }
}

/// `word` cut at the blanks at `fields` (which the shell removes), empty
/// fields dropped, into `out`.
fn split_fields(word: &Word, fields: &[usize], out: &mut Vec<Word>) {
    let mut start = 0;
    for &at in fields.iter().chain(std::iter::once(&word.text.len())) {
        if at > start {
            out.push(Word {
                text: word.text[start..at].to_owned(),
                ..word.clone()
            });
        }
        start = at + 1;
    }
}

/// Adds the names of the commands among `parts` to `names`, once each.
fn add_names(names: &mut Vec<String>, parts: &[Part]) {
    for part in parts {
        if let Part::Command(c) = part
            && !c.argv.is_empty()
            && !names.iter().any(|n| n == c.name())
        {
            names.push(c.name().to_owned());
        }
    }
}

/// Appends `text` quoted for a shell where needed.
fn push_quoted(out: &mut String, text: &str, dynamic: bool) {
    let plain = !text.is_empty()
        && (dynamic
            || !text
                .bytes()
                .any(|b| is_meta(b) || matches!(b, b'\'' | b'"' | b'\\' | b'`' | b'$' | b'#')));
    if plain {
        out.push_str(text);
    } else {
        out.push('\'');
        out.push_str(&text.replace('\'', r"'\''"));
        out.push('\'');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each part as text: `name argv...` for a command (with its variables
    /// and inputs), `> path`, `< path` or `?why` for what was not read.
    fn parts(line: &str) -> Vec<String> {
        parse(line)
            .into_iter()
            .map(|p| match p {
                Part::Command(c) => {
                    let mut out = c.shown();
                    if !c.env.is_empty() {
                        out += &format!(" env={}", c.env.join(","));
                    }
                    if !c.inputs.is_empty() {
                        out += &format!(" from={}", c.inputs.join(","));
                    }
                    out
                }
                Part::File { write, path } => format!("{} {path}", if write { ">" } else { "<" }),
                Part::Unparseable { why, .. } => format!("?{why:?}"),
            })
            .collect()
    }

    #[test]
    fn commands_carry_their_variables_and_inputs() {
        assert_eq!(
            parts("A=1 sudo -E B=2 env -u X C=3 /bin/cmd 'a b' | tee out >> log"),
            [
                "sudo -E B=2 env=A",
                "/bin/cmd 'a b' env=A,B,C",
                "tee out from=sudo,cmd",
                "> log"
            ]
        );
        assert_eq!(
            parts("X=$(curl u) sh -c 'ls $(wget v)' | bash -c \"$(cat)\""),
            [
                "curl u",
                "wget v env=X from=curl",
                "ls $(wget v) env=X from=curl,wget",
                "cat from=curl,wget,ls",
                "?DynamicScript",
                "bash -c $(cat) from=curl,wget,ls,cat"
            ]
        );
        assert_eq!(parts("a 2>&1 >&- <in 3<>rw"), ["a", "< in", "> rw"]);
        assert_eq!(parts("X=1 Y=2"), ["X= Y= env=X,Y"]);
        assert!(parts("# nothing").is_empty());
    }

    #[test]
    fn quotes_are_removed_as_the_shell_removes_them() {
        assert_eq!(
            parts(r#"e"c"'h'\o "a;b" 'c|d' $'\x41\n' "\$x""#),
            ["echo 'a;b' 'c|d' 'A\n' '$x'"]
        );
        assert_eq!(
            parts("echo \"a\\\"b\" 'it'\\''s'"),
            ["echo 'a\"b' 'it'\\''s'"]
        );
        assert_eq!(parts("echo ${HOME} \"$HOME\"/x"), ["echo $HOME $HOME/x"]);
    }

    #[test]
    fn what_cannot_be_read_is_named() {
        for (line, why) in [
            ("echo 'open", Why::UnbalancedQuote),
            ("echo $(ls", Why::UnbalancedQuote),
            ("cat <<EOF", Why::Heredoc),
            ("echo $((1))", Why::Arithmetic),
            ("case a in a) ;; esac", Why::Unsupported),
            ("$cmd x", Why::DynamicCommand),
            ("eval \"$x\"", Why::DynamicScript),
            ("ls > $f", Why::DynamicRedirect),
            ("env --what x", Why::LauncherOption),
            (")", Why::Syntax),
        ] {
            assert!(
                parse(line)
                    .iter()
                    .any(|p| matches!(p, Part::Unparseable { why: w, .. } if *w == why)),
                "{line:?}: {:?}",
                parse(line)
            );
        }
    }
}
