//! The command line: global options, commands and their flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum};

/// The top-level help: first steps, the commands, and the global options,
/// said here once (every command takes them; each command's help points
/// here). `--help` adds the exit statuses and environment; `-h` is short.
const TOP_TEMPLATE: &str = "\
{about-with-newline}
{usage-heading} {usage}

First steps:
  keyward demo                      see it work, in a temporary home
  keyward secret set NAME           store a secret (from stdin or a prompt)
  keyward grant add NAME --secret vault:NAME --host HOST --header Authorization
                                    let runs send it to HOST, and nowhere else
  keyward run --grant NAME -- CMD   run CMD: it can use the secret, never hold it
  keyward audit tail                what was decided, and why

Commands:
{subcommands}

Global options (every command takes them):
      --home <DIR>           home: socket, PID file, log, vault, evidence
                             [env: KEYWARD_HOME] [default: $XDG_STATE_HOME/keyward,
                             else ~/.local/state/keyward]
      --config <FILE>        config file [env: KEYWARD_CONFIG]
                             [default: <home>/keyward.toml; built-in defaults when absent]
      --log-format <FORMAT>  log lines on stderr and in daemon.log: text (default) or json
      --remote <URL>         team mode: `eval` asks this keyward server's gRPC API
                             (https only), with --token-file <FILE>
                             [env: KEYWARD_TOKEN_FILE], --remote-ca <FILE> [env:
                             KEYWARD_REMOTE_CA] and --remote-identity <CERT,KEY> (mutual TLS)
  -h, --help                 help (`--help` adds exit statuses and environment)
  -V, --version              version{after-help}";

/// Every other command's help: clap's layout, then one line for the
/// global options instead of their full text in every command.
const COMMAND_TEMPLATE: &str = "\
{before-help}{about-with-newline}
{usage-heading} {usage}

{all-args}{after-help}

Global options: --home DIR, --config FILE, --log-format text|json (see `keyward --help`)";

const AFTER_HELP: &str = "\
Exit status:
  0   success
  1   failure (including: a daemon already runs for this home)
  2   command-line usage error
  3   the daemon is not running
  64  invalid configuration or usage (the message names file, key and expectation)
  `keyward eval` only: 0 allow, 2 block, 3 require_approval, and 1 for
  every error (usage, config, the daemon unreachable, a request that cannot
  be decided: unknown field, missing target), so 2 and 3 are always decisions
  `keyward run`: the program's own status (128+N when killed by signal N),
  126 when it cannot be executed, 127 when it is not found

Environment:
  KEYWARD_HOME    home directory (same as --home)
  KEYWARD_CONFIG  config file (same as --config)
  RUST_LOG        log filter, e.g. `debug` or `keyward_daemon=trace` (wins over daemon.log_level)";

/// keyward: a local credential broker and policy daemon for AI agents and CI
/// jobs. One binary is both the daemon and its client.
#[derive(Debug, Parser)]
#[command(
    name = "keyward",
    version = keyward_api::VERSION_LINE,
    help_template = TOP_TEMPLATE,
    after_long_help = AFTER_HELP
)]
pub struct Cli {
    /// Home directory for the socket, PID file, log and state
    /// [default: $XDG_STATE_HOME/keyward, else ~/.local/state/keyward].
    #[arg(
        long,
        global = true,
        hide = true,
        env = "KEYWARD_HOME",
        value_name = "DIR"
    )]
    pub home: Option<PathBuf>,

    /// Config file [default: <home>/keyward.toml; built-in defaults when absent].
    #[arg(
        long,
        global = true,
        hide = true,
        env = "KEYWARD_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    /// Format of log lines on stderr (and in daemon.log).
    #[arg(long, global = true, hide = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// A keyward server's gRPC API (team mode), e.g.
    /// https://keyward.example.com:50051: `eval` asks it instead of the
    /// local daemon.
    #[arg(long, global = true, hide = true, value_name = "URL")]
    pub remote: Option<String>,

    /// The API token for --remote (a file holding `kwt_...`).
    #[arg(
        long,
        global = true,
        hide = true,
        env = "KEYWARD_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub token_file: Option<PathBuf>,

    /// Trust only this CA (PEM) for --remote, instead of the system's roots.
    #[arg(
        long,
        global = true,
        hide = true,
        env = "KEYWARD_REMOTE_CA",
        value_name = "FILE"
    )]
    pub remote_ca: Option<PathBuf>,

    /// A client certificate and key (PEM, one file each, comma-separated)
    /// for a --remote server that requires mutual TLS.
    #[arg(
        long,
        global = true,
        hide = true,
        value_name = "CERT,KEY",
        value_parser = parse_identity
    )]
    pub remote_identity: Option<(PathBuf, PathBuf)>,

    #[command(subcommand)]
    pub command: Command,
}

/// The command line as clap sees it: [`Cli`] with each command's help in
/// [`COMMAND_TEMPLATE`] (the global options are hidden from the generated
/// lists and said once, in the top-level help).
pub fn command() -> clap::Command {
    fn with_template(cmd: clap::Command) -> clap::Command {
        cmd.help_template(COMMAND_TEMPLATE)
            .mut_subcommands(with_template)
    }
    Cli::command().mut_subcommands(with_template)
}

/// Parses the process's command line with [`command`].
pub fn try_parse() -> Result<Cli, clap::Error> {
    let mut matches = command().try_get_matches()?;
    Cli::from_arg_matches_mut(&mut matches)
}

/// Whether a command line (without the program name) runs `keyward eval`:
/// its first word that is not a global option or an option's value.
pub fn names_eval(args: impl IntoIterator<Item = std::ffi::OsString>) -> bool {
    subcommand(args).as_deref() == Some("eval")
}

/// The subcommand a command line names (its first word that is not a
/// global option or its value), before clap has accepted it.
pub fn subcommand(args: impl IntoIterator<Item = std::ffi::OsString>) -> Option<String> {
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg.to_str()?;
        match arg {
            "--home" | "--config" | "--log-format" | "--remote" | "--token-file"
            | "--remote-ca" | "--remote-identity" => {
                args.next();
            }
            _ if arg.starts_with('-') => {}
            _ => return Some(arg.to_owned()),
        }
    }
    None
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    pub fn as_arg(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a program that can use the grants' credentials without holding
    /// them.
    ///
    /// Its HTTP(S) traffic goes through keyward's proxy, which injects
    /// the secrets toward the hosts each grant names. The run exists before
    /// the program starts; its processes (forked, double-forked or
    /// `setsid`) stay inside it (in a cgroup of its own where the daemon
    /// can make one) and are refused the admin API, and what the program
    /// leaves running is ended when it exits, or by the daemon when this
    /// command itself dies. Its grants, hosts and policy are frozen for its
    /// life, across daemon restarts (a reload only narrows them). Every run
    /// is kept from writing cgroups, `clone3` and changing other processes'
    /// limits; `--sandbox` adds files, network and a syscall filter, for
    /// untrusted agents. Exits with the program's status (128+N when killed
    /// by signal N).
    #[command(
        display_order = 4,
        after_help = "Examples:\n  keyward run --grant github -- gh pr list\n  keyward run --grant openai --network strict --allow pypi.org -- python agent.py\n  keyward run --sandbox --grant anthropic -- claude"
    )]
    Run(RunArgs),
    /// See keyward at work, in a temporary home.
    ///
    /// On embedded defaults: a local HTTPS service, a demo secret, a real
    /// client run through `keyward run`; prints what the service received,
    /// what the child held, and the request event. Exit 0 only if every
    /// check held.
    #[command(display_order = 1, after_help = "Example:\n  keyward demo")]
    Demo,
    /// The local CA that signs the proxy's per-host certificates.
    #[command(subcommand)]
    #[command(
        display_order = 12,
        after_help = "Examples:\n  keyward ca path\n  keyward ca export --format der > keyward-ca.der"
    )]
    Ca(CaCommand),
    /// Print the version and git commit (needs no daemon, home or config).
    #[command(display_order = 14, after_help = "Example:\n  keyward version --json")]
    Version(JsonFlag),
    /// Start, stop, restart or reload the daemon.
    #[command(subcommand)]
    #[command(
        display_order = 8,
        after_help = "Examples:\n  keyward daemon start --detach\n  keyward daemon reload\n  keyward daemon stop"
    )]
    Daemon(DaemonCommand),
    /// Report whether the daemon runs, and what it left behind if not.
    ///
    /// Exit 3 when it does not run.
    #[command(display_order = 5, after_help = "Example:\n  keyward status --json")]
    Status(JsonFlag),
    /// Inspect the configuration.
    #[command(subcommand)]
    #[command(display_order = 10, after_help = "Example:\n  keyward config check")]
    Config(ConfigCommand),
    /// Manage the encrypted vault: init, seal, unseal, history, rollback.
    #[command(subcommand)]
    #[command(
        display_order = 9,
        after_help = "Examples:\n  keyward vault init --passphrase\n  keyward vault history\n  keyward vault rollback SNAPSHOT"
    )]
    Vault(VaultCommand),
    /// Which secret goes to which hosts, and how: list, add, rm.
    #[command(subcommand)]
    #[command(
        display_order = 3,
        after_help = "Examples:\n  keyward grant list\n  keyward grant add my-api --secret vault:my-api --host api.example.com --header X-Api-Key\n  keyward grant rm my-api"
    )]
    Grant(GrantCommand),
    /// Store, list and remove secrets (write-only: never printed back).
    #[command(subcommand)]
    #[command(
        display_order = 2,
        after_help = "Examples:\n  keyward secret set github        (reads the value from stdin or a prompt)\n  keyward secret list\n  keyward secret rm github"
    )]
    Secret(SecretCommand),
    /// Ask the policy engine whether an action is allowed.
    ///
    /// For CI steps and agent hooks. Exit status: 0 allow, 2 block, 3
    /// require_approval, 1
    /// for every error (usage, config, transport, a request with an unknown
    /// field or without the target its action needs). Works from inside
    /// `keyward run`. Every decision is written to the evidence log before
    /// it is answered.
    #[command(
        display_order = 7,
        after_help = "Examples:\n  keyward eval --action execute_command --target 'rm -rf /'\n  keyward eval --action read_file --target ~/.ssh/id_rsa --json"
    )]
    Eval(EvalArgs),
    /// Policy files: check, test against cases, import CAVRA, show the
    /// built-in pack.
    #[command(subcommand)]
    #[command(
        display_order = 11,
        after_help = "Examples:\n  keyward policy check team.toml\n  keyward policy test team.toml cases.json\n  keyward policy show"
    )]
    Policy(PolicyCommand),
    /// The evidence log: what was decided and why; keys, verification.
    #[command(subcommand)]
    #[command(
        display_order = 6,
        after_help = "Examples:\n  keyward audit verify\n  keyward audit tail -n 20 --follow"
    )]
    Audit(AuditCommand),
    /// The daemon as a systemd service.
    ///
    /// `--system` runs it as its own `keyward` user (home /var/lib/keyward, socket /run/keyward/keyward.sock
    /// opened to the users named in [admin]); `--user` installs a user unit.
    #[command(subcommand)]
    #[command(
        display_order = 13,
        after_help = "Examples:\n  sudo keyward service install --system\n  keyward service install --user"
    )]
    Service(ServiceCommand),
    /// API tokens for the team: issue, list, rotate, revoke.
    ///
    /// A token (`kwt_` and 32 hex digits) is printed once when issued or
    /// rotated and kept only as its SHA-256 in <home>/auth/tokens.toml. A
    /// request to the daemon with `Authorization: Bearer <token>` is decided
    /// by the token's role (its scopes and rate limit) instead of the
    /// caller's uid, and is attributed to the token's user in the evidence
    /// log. Administrators only.
    #[command(subcommand)]
    #[command(
        display_order = 15,
        after_help = "Examples:\n  keyward token issue --user ci --role runner --expires 90 > ci.token\n  keyward token list\n  keyward token rotate ci\n  keyward token revoke ci"
    )]
    Token(TokenCommand),
    /// Roles for API tokens: built-in admin, member, runner, and your own.
    ///
    /// A role is a set of scopes (evaluate, runs.create, runs.read,
    /// grants.use:NAME, grants.use:*, secrets.write, policy.read,
    /// audit.read, admin) and an optional per-user rate limit (N/WINDOW,
    /// a sliding window). Kept in <home>/auth/roles.toml. Administrators
    /// only.
    #[command(subcommand)]
    #[command(
        display_order = 16,
        after_help = "Examples:\n  keyward role create deployer --scope evaluate --scope grants.use:github --rate-limit 120/60s\n  keyward role update deployer --rate-limit 600/1h\n  keyward role list\n  keyward role delete deployer"
    )]
    Role(RoleCommand),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a token (one per user); it is printed once, on stdout.
    Issue {
        /// Who will hold it: 1-64 of a-z 0-9 _ . - (e.g. ci-runner).
        #[arg(long)]
        user: String,
        /// Its role (`keyward role list`).
        #[arg(long)]
        role: String,
        /// Days until it stops working [default: never].
        #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=36500))]
        expires: Option<u32>,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List tokens: user, role, created, expires, last used (never a value).
    List(JsonFlag),
    /// End a user's token at once.
    Revoke {
        /// The user.
        user: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Give a user a new token value (same role and expiry span); the old
    /// one stops working at once. The new one is printed once.
    Rotate {
        /// The user.
        user: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Rotate every token; prints `USER TOKEN` lines (or JSON), once.
    RotateAll(JsonFlag),
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// List roles: scopes, rate limit, and who holds each.
    List(JsonFlag),
    /// Create a role of your own.
    Create {
        /// Its name: 1-64 of a-z 0-9 _ . - (e.g. deployer).
        name: String,
        #[command(flatten)]
        spec: RoleSpecArgs,
    },
    /// Change a role of your own (what is not given stays).
    Update {
        /// The role.
        name: String,
        #[command(flatten)]
        spec: RoleSpecArgs,
    },
    /// Delete a role nobody holds (refused, naming its users, otherwise).
    Delete {
        /// The role.
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Debug, Args)]
pub struct RoleSpecArgs {
    /// A scope the role holds (repeat; replaces the role's scopes on
    /// update): evaluate, runs.create, runs.read, grants.use:NAME,
    /// grants.use:*, secrets.write, policy.read, audit.read, admin.
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// At most N requests per user in any window of this length, e.g.
    /// 120/60s; `none` removes a limit.
    #[arg(long, value_name = "N/WINDOW")]
    pub rate_limit: Option<String>,
    /// Free text.
    #[arg(long)]
    pub description: Option<String>,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Install the unit (and, with --system, the user, home and config).
    Install(ServiceInstallArgs),
    /// Remove what install made; the home (the vault) stays unless --purge.
    Uninstall(ServiceUninstallArgs),
}

#[derive(Debug, Args)]
pub struct ServiceScope {
    /// The system service (root): the daemon as its own user.
    #[arg(long, conflicts_with = "user", required_unless_present = "user")]
    pub system: bool,
    /// A user unit: the daemon as you, in your default home.
    #[arg(long)]
    pub user: bool,
    /// With --system: write the files under this directory instead of /
    /// (packaging, tests); the system user is still created on this machine.
    #[arg(long, value_name = "DIR", default_value = "/", requires = "system")]
    pub root: PathBuf,
}

#[derive(Debug, Args)]
pub struct ServiceInstallArgs {
    #[command(flatten)]
    pub scope: ServiceScope,
    /// A uid that may use the system daemon: runs, grants, decisions
    /// (repeatable; written to admin.allow_uids).
    #[arg(long, value_name = "UID")]
    pub allow_uid: Vec<u32>,
    /// A group whose members may use it likewise (repeatable).
    #[arg(long, value_name = "GROUP")]
    pub allow_group: Vec<String>,
    /// A uid that may also manage secrets, the vault and the daemon
    /// (repeatable).
    #[arg(long, value_name = "UID")]
    pub admin_uid: Vec<u32>,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct ServiceUninstallArgs {
    #[command(flatten)]
    pub scope: ServiceScope,
    /// Also remove the system daemon's home (its vault) and the user
    /// install created.
    #[arg(long)]
    pub purge: bool,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// An EvaluateRequest as JSON, from a file or `-` for stdin.
    #[arg(long, value_name = "FILE|-", conflicts_with_all = ["action", "target", "operation"])]
    pub input: Option<PathBuf>,
    /// The action type: read_file, write_file, execute_command,
    /// git_operation (or git), mcp_tool_call, http_request, ...
    #[arg(long, value_name = "A", required_unless_present = "input")]
    pub action: Option<String>,
    /// The target: a path, a command line, a branch, host/path.
    #[arg(long, value_name = "T")]
    pub target: Option<String>,
    /// The operation: push, GET, ...
    #[arg(long, value_name = "O")]
    pub operation: Option<String>,
    /// Print the DecisionResponse JSON instead of one line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub runner_auth: RunnerAuthArgs,
}

/// Proof of a CI runner's identity, sent with an evaluation or a run (it
/// replaces any `runner_auth` in `--input`). Policy matches `runner.*` only
/// on claims the daemon verified.
#[derive(Debug, Args)]
pub struct RunnerAuthArgs {
    /// A file holding the CI provider's OIDC ID token (a JWT), verified by
    /// the daemon against `[auth.oidc]`.
    #[arg(long, value_name = "FILE", conflicts_with = "runner_auth_file")]
    pub oidc_token_file: Option<PathBuf>,
    /// A file holding runner auth JSON: HMAC-signed claims
    /// `{"claims", "algorithm": "HMAC-SHA256", "key_id", "signature"}`
    /// (or `{"algorithm": "OIDC-JWT", "token"}`).
    #[arg(long, value_name = "FILE")]
    pub runner_auth_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Compile a policy file offline: exit 0 if valid, 64 with the file,
    /// rule id and field at fault otherwise.
    Check {
        /// The policy file (TOML).
        file: PathBuf,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Run test cases against a policy file, offline. CASES is a JSON array
    /// of {"name", "request": {EvaluateRequest}, "decision", "rule_id"?,
    /// "matched_command"?, "runner"?} ("runner": claims taken as verified,
    /// for rules on runner.*).
    /// Prints a table; exit 1 on any mismatch.
    Test {
        /// The policy file (TOML), or `agent-baseline` for the built-in pack.
        file: PathBuf,
        /// The cases (JSON).
        cases: PathBuf,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Convert a CAVRA compiled policy (JSON) into an equivalent keyward
    /// policy (TOML), printed or written with --output.
    Import {
        /// The compiled policy JSON.
        file: PathBuf,
        /// Write here (refusing to overwrite) instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Print the built-in agent-baseline pack.
    Show,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Write a new signing key: an Ed25519 pair (<out>.key, <out>.pub) or,
    /// with --hmac, an HMAC key. Prints the [audit] lines for the config.
    Keygen {
        /// File name stem [default: <home>/keys/audit-ed25519, or
        /// <home>/keys/audit-hmac.key with --hmac].
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
        /// An HMAC-SHA256 key instead of Ed25519.
        #[arg(long)]
        hmac: bool,
    },
    /// Check every segment: hashes, chain, sequence and signatures, and
    /// that no record up to the head was deleted from the tail: a head
    /// stored elsewhere (--expect-head, --head) or else the log's own
    /// head.json (an altered one fails; a missing one is said). Someone
    /// who can delete the tail and delete or roll back head.json too is
    /// caught only by a head kept elsewhere. Exit 0 valid, 1 invalid.
    Verify {
        /// The log directory [default: <home>/audit].
        #[arg(long, value_name = "D")]
        dir: Option<PathBuf>,
        /// Check HMAC-SHA256 signatures with this key (repeat for a log
        /// that spans a key rotation). With no key option at all, the key
        /// in KEYWARD_EVIDENCE_HMAC_KEY is used when that is set.
        #[arg(long, value_name = "F")]
        hmac_key_file: Vec<PathBuf>,
        /// Check Ed25519 signatures with this public key, PEM (repeat for
        /// a log that spans a key rotation).
        #[arg(long, value_name = "F")]
        public_key: Vec<PathBuf>,
        /// The key id records must carry [default: derived from the key,
        /// as the daemon does when audit.key_id is unset]. Once per key,
        /// in the order of --hmac-key-file then --public-key.
        #[arg(long)]
        key_id: Vec<String>,
        /// The log must contain this record (SEQ:HASH, as `keyward audit
        /// head` prints it): fails when records up to it are missing.
        #[arg(long, value_name = "SEQ:HASH", conflicts_with = "head",
              value_parser = |s: &str| s.parse::<keyward_evidence::Anchor>())]
        expect_head: Option<keyward_evidence::Anchor>,
        /// Like --expect-head, from a head file saved with `keyward audit
        /// head --json`; its signature is checked with the keys given.
        #[arg(long, value_name = "FILE")]
        head: Option<PathBuf>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Print the signed head checkpoint (the last synced record's seq and
    /// hash), to store where whoever can delete the log's tail cannot
    /// reach (a CI artifact); check it later with `audit verify
    /// --expect-head` or `--head`. Offline; reads <dir>/head.json.
    Head {
        /// The log directory [default: <home>/audit].
        #[arg(long, value_name = "D")]
        dir: Option<PathBuf>,
        /// Print the head file's JSON (save it for `audit verify --head FILE`).
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Print the last records (offline; reads the files).
    Tail {
        /// How many.
        #[arg(short = 'n', default_value_t = 10)]
        n: usize,
        /// Keep printing new records as they are written.
        #[arg(long, short)]
        follow: bool,
        /// Only this kind: decision, egress, run, secret, vault, admin.
        #[arg(long)]
        kind: Option<String>,
        /// Only this run.
        #[arg(long)]
        run: Option<String>,
        /// The log directory [default: <home>/audit].
        #[arg(long, value_name = "D")]
        dir: Option<PathBuf>,
        /// Print each record's JSON line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// Create the vault (starting the daemon if needed). Default: a key file
    /// in <home>/vault/identity.txt, unsealed at daemon start.
    Init {
        /// Protect the key with a passphrase instead: the daemon starts
        /// sealed and `keyward vault unseal` asks for it (read without echo
        /// from the terminal, else the first line of stdin).
        #[arg(long)]
        passphrase: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// State (uninitialized | sealed | unsealed), mode, snapshots, vault id.
    Status(JsonFlag),
    /// Load the key into the daemon's memory (asks for the passphrase of a
    /// passphrase vault; a wrong one exits 1 and changes nothing).
    Unseal(JsonFlag),
    /// Drop the key and every decrypted secret from the daemon's memory.
    Seal(JsonFlag),
    /// List the snapshots, oldest first; the last is current.
    History(JsonFlag),
    /// Make an older snapshot current by writing it again as the newest.
    Rollback {
        /// Snapshot file name, as `keyward vault history` shows it.
        snapshot: String,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum GrantCommand {
    /// Each grant's hosts, injection, and whether its secret resolves now
    /// (ok / missing / sealed / error: why); never the value.
    List(JsonFlag),
    /// Write a grant into the config file (keeping its comments and
    /// layout), then reload the daemon if it runs.
    Add(Box<GrantAddArgs>),
    /// Remove a grant from the config file (keeping the rest as it was),
    /// then reload the daemon if it runs. Runs that hold the grant keep it
    /// until they end (their authority is frozen); new runs cannot name it.
    ///
    /// Example: keyward grant rm staging-api
    Rm(GrantRmArgs),
}

/// `keyward grant rm`.
#[derive(Debug, Args)]
pub struct GrantRmArgs {
    /// The grant's name.
    pub name: String,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("injection").required(true).args(["header", "basic", "query"])))]
pub struct GrantAddArgs {
    /// Grant name (the same rule as secret names).
    pub name: String,
    /// Secret reference: vault:NAME, env:VAR, file:/path, cmd:PROGRAM ARGS,
    /// openbao:MOUNT/PATH#FIELD.
    #[arg(long, value_name = "REF")]
    pub secret: String,
    /// Host pattern the secret may go to (repeatable): api.example.com or
    /// *.example.com, optionally with :PORT (without one: 443).
    #[arg(long = "host", value_name = "HOST", required = true, value_parser = parse_grant_host)]
    pub hosts: Vec<String>,
    /// Inject as this header.
    #[arg(long, value_name = "NAME")]
    pub header: Option<String>,
    /// Header value template containing {secret} [default: {secret}].
    #[arg(long, value_name = "F", requires = "header")]
    pub format: Option<String>,
    /// Inject as HTTP basic auth with this user name.
    #[arg(long, value_name = "USER")]
    pub basic: Option<String>,
    /// Inject as this query parameter.
    #[arg(long, value_name = "PARAM")]
    pub query: Option<String>,
    /// Give the child this variable holding a placeholder.
    #[arg(long, value_name = "VAR")]
    pub placeholder_env: Option<String>,
    /// Let the secret go over plain HTTP too (default: TLS only).
    #[arg(long)]
    pub plaintext: bool,
    /// Let a host name a public suffix (`*.co.uk`, `*.github.io`): the
    /// secret then goes to every site registered under it. Refused
    /// without this flag.
    #[arg(long)]
    pub public_suffix: bool,
    /// Swap the placeholder in request bodies too (default: headers and
    /// URL only).
    #[arg(long, requires = "placeholder_env")]
    pub substitute_body: bool,
    /// The variable `keyward run --base-url` sets to this grant's
    /// plain-HTTP endpoint (e.g. MYAPI_BASE_URL).
    #[arg(long, value_name = "VAR")]
    pub base_url_env: Option<String>,
    /// A path the base URL ends with (e.g. /v1).
    #[arg(long, value_name = "PATH", requires = "base_url_env")]
    pub base_url_path: Option<String>,
    /// Overwrite a grant of the same name in the file.
    #[arg(long)]
    pub replace: bool,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store a secret. The value comes from --from-file, --from-env, or
    /// stdin (a no-echo prompt on a terminal); never from the command line.
    /// The first `set` on a new home creates a key-file vault.
    Set {
        /// Name: 1-64 of a-z 0-9 _ . - starting with a letter or digit.
        name: String,
        /// What the secret is for.
        #[arg(long)]
        description: Option<String>,
        /// Read the value from this file (one trailing newline is dropped).
        #[arg(long, value_name = "FILE", conflicts_with = "from_env")]
        from_file: Option<PathBuf>,
        /// Read the value from this environment variable.
        #[arg(long, value_name = "VAR")]
        from_env: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List secrets: name, description, dates and a fingerprint of the value
    /// (never the value).
    List(JsonFlag),
    /// Remove a secret.
    Rm {
        /// Its name.
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print where the CA certificate and the trust bundle (system roots
    /// plus the CA) are, starting the daemon (which creates the CA) if needed.
    Path(JsonFlag),
    /// Replace the CA with a new one and flush the leaf cache. The previous
    /// CA stays in the trust bundle, so running children keep working.
    Rotate(JsonFlag),
    /// Print the CA certificate, for tools that need it installed.
    Export {
        /// Output encoding.
        #[arg(long, value_enum, default_value_t = CaFormat::Pem)]
        format: CaFormat,
    },
}

/// `ca export --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CaFormat {
    /// PEM text.
    Pem,
    /// Binary DER.
    Der,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A grant the program may use (repeatable); see `keyward grant list`.
    #[arg(long = "grant", value_name = "G")]
    pub grants: Vec<String>,
    /// A host pattern allowed in strict mode (repeatable): host,
    /// *.example.com, optionally with :port.
    #[arg(long = "allow", value_name = "HOST", value_parser = parse_allow)]
    pub allow: Vec<String>,
    /// permissive: any host not denied; strict: only --allow hosts and the
    /// grants' hosts.
    #[arg(long, value_enum, default_value_t = NetworkArg::Permissive)]
    pub network: NetworkArg,
    /// A label shown in `GET /v1/runs`.
    #[arg(long)]
    pub label: Option<String>,
    /// A policy file deciding this run's requests instead of the
    /// configured policy (read by the daemon; it must stay readable).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Confine the program with Landlock: it reads the system directories,
    /// writes the working directory, temporary files and the user's caches,
    /// never reaches the keyward home or config, connects over TCP only to
    /// the proxy (and --allow-port), binds no TCP port (but --allow-bind),
    /// and cannot signal processes outside its run; it runs in a private
    /// network namespace (user+net, or net as root) with only loopback,
    /// where 127.0.0.1:<proxy port> is bridged to the proxy and is the only
    /// way out (no UDP, no DNS but the proxy's, no other host port; opt out
    /// with --sandbox=no-netns); in a private mount view /tmp and /dev/shm
    /// are its own, the keyward home shows only the public CA and the admin
    /// socket (read-only), /run and /var/tmp are hidden and other programs'
    /// sockets in your home are covered; System V IPC is its own; it keeps
    /// no capability (even as root) and no descriptor but 0-2; it gets a
    /// terminal of its own (--pty) when 0, 1 or 2 is one; a seccomp filter refuses
    /// other socket protocols (MPTCP, SCTP, raw, packet, netlink but route),
    /// io_uring, ptrace, namespaces, mounts, terminal injection (TIOCSTI),
    /// chown, and changing other processes' limits, priorities or CPUs. Not
    /// stopped: a same-uid service's socket elsewhere, and what the proxy
    /// allows. `--sandbox` (strict) fails when the kernel cannot enforce
    /// all of that; `--sandbox=best-effort` runs with what it can and says
    /// what is missing.
    #[arg(long, value_enum, num_args = 0..=1, require_equals = true,
          default_missing_value = "strict", value_name = "MODE")]
    pub sandbox: Option<SandboxArg>,
    /// Run the program on a pseudo-terminal of its own, relayed by keyward
    /// (the default for --sandbox when standard input is a terminal): what
    /// it does to its terminal (settings, keystroke injection) stays there,
    /// and your terminal is restored as it was when the run ends.
    #[arg(long, conflicts_with = "no_pty")]
    pub pty: bool,
    /// Give the program your terminal itself, even with --sandbox.
    #[arg(long)]
    pub no_pty: bool,
    /// Do not say at the end which requests were refused, failed upstream
    /// or went out without their secret (said by default, on stderr, once
    /// the program is done).
    #[arg(long, short)]
    pub quiet: bool,
    /// Also say each request that was refused, failed upstream or went out
    /// without its secret as it happens (on stderr, one `keyward run:`
    /// line each, between the program's own lines).
    #[arg(long, short, conflicts_with = "quiet")]
    pub verbose: bool,
    /// A `[sandbox.profiles.NAME]` of the config whose paths are added.
    #[arg(long, value_name = "NAME", requires = "sandbox")]
    pub sandbox_profile: Option<String>,
    /// A path the sandboxed program may also read (repeatable).
    #[arg(long, value_name = "PATH", requires = "sandbox")]
    pub sandbox_allow_read: Vec<PathBuf>,
    /// A path the sandboxed program may also write (repeatable).
    #[arg(long, value_name = "PATH", requires = "sandbox")]
    pub sandbox_allow_write: Vec<PathBuf>,
    /// A host loopback TCP port the sandboxed program may connect to
    /// besides the proxy's (repeatable): forwarded into its network
    /// namespace as 127.0.0.1:PORT (with --sandbox=no-netns, any address:
    /// Landlock matches ports, not hosts).
    #[arg(long, value_name = "PORT", requires = "sandbox")]
    pub allow_port: Vec<u16>,
    /// A TCP port the sandboxed program may listen on (repeatable).
    #[arg(long, value_name = "PORT", requires = "sandbox")]
    pub allow_bind: Vec<u16>,
    /// `fd`: the program reaches its grants' hosts through an fd broker
    /// (its fd 3, `KEYWARD_BROKER_FD`) instead of the proxy: its
    /// environment gets no proxy URL, no token and no CA. Each dial returns
    /// a stream on which it speaks plain HTTP/1.1 with `Host` naming the
    /// grant's host; keyward forwards over TLS with the same policy,
    /// injection, scrubbing and evidence.
    #[arg(long, value_enum, value_name = "KIND", conflicts_with = "base_url")]
    pub broker: Option<BrokerArg>,
    /// Export each grant's base-URL variable (ANTHROPIC_BASE_URL,
    /// OPENAI_BASE_URL, GITHUB_API_URL, NPM_CONFIG_REGISTRY, or the grant's
    /// base_url_env) set to a plain-HTTP endpoint on loopback that forwards
    /// over TLS to the grant's host: for tools that ignore HTTPS_PROXY or
    /// pin certificates. No CA trust is needed.
    #[arg(long)]
    pub base_url: bool,
    #[command(flatten)]
    pub runner_auth: RunnerAuthArgs,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}

/// `--broker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BrokerArg {
    /// A descriptor (fd 3) that mints streams on request.
    Fd,
}

/// `--sandbox`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SandboxArg {
    /// Fail unless the kernel enforces files, TCP, signals and the
    /// syscall filter.
    Strict,
    /// Enforce what the kernel can and say what it cannot.
    BestEffort,
    /// Like strict, but without the private network namespace: the
    /// program shares the host's network, confined by Landlock's TCP
    /// ports only.
    NoNetns,
}

/// `--network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkArg {
    /// Any host not denied.
    Permissive,
    /// Only allowed hosts.
    Strict,
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON with stable field names instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Run the daemon (in the foreground unless --detach). Sends READY=1 to
    /// $NOTIFY_SOCKET once listening, for systemd Type=notify.
    Start(StartArgs),
    /// Stop the daemon: SIGTERM, then wait for it to exit.
    Stop(StopArgs),
    /// Stop the daemon if it runs, then start it detached.
    Restart(RestartArgs),
    /// Read the config again (like SIGHUP), saying whether it worked and
    /// which changed settings apply only after a restart (`proxy.listen`,
    /// the proxy's limits and timeouts, ...). A config with an error is
    /// refused (exit 64, naming the file and key) and the previous one
    /// stays in effect; `keyward status` shows the failure until a reload
    /// succeeds.
    ///
    /// Example: keyward daemon reload
    Reload(JsonFlag),
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Start in the background (output to <home>/daemon.log); print the pid
    /// once it answers, or fail after 10 s.
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub idle: IdleExitArg,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct IdleExitArg {
    /// Exit after this long with no runs and no admin requests, e.g. `15m`;
    /// `0` turns it off [default: daemon.idle_exit, else off].
    #[arg(long, value_name = "DURATION", value_parser = parse_idle_exit)]
    pub idle_exit: Option<IdleExit>,
    /// Every evaluation needs verified runner auth (HMAC-signed claims or
    /// an OIDC token): without it the decision is a block with rule
    /// `runner_auth.invalid`, whatever `auth.require_runner_auth` says.
    #[arg(long)]
    pub require_runner_auth: bool,
}

/// A parsed `--idle-exit`: `None` inside means "off".
#[derive(Debug, Clone, Copy)]
pub struct IdleExit(pub Option<Duration>);

fn parse_idle_exit(text: &str) -> Result<IdleExit, String> {
    keyward_config::parse_duration_or_off(text).map(IdleExit)
}

/// `--allow`: a host pattern, optionally with a port (not a URL).
fn parse_allow(text: &str) -> Result<String, String> {
    keyward_proxy::AllowRule::parse(text).map(|_| text.to_owned())
}

/// `grant add --host`: a host pattern, optionally with a port (not a URL).
fn parse_grant_host(text: &str) -> Result<String, String> {
    keyward_proxy::GrantHost::parse(text).map(|_| text.to_owned())
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("expected a duration such as \"10s\" or \"1m\": {e}"))
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// How long to wait for the daemon to exit after SIGTERM.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// SIGKILL the daemon if it has not exited within the timeout.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct RestartArgs {
    #[command(flatten)]
    pub stop: StopArgs,
    #[command(flatten)]
    pub idle: IdleExitArg,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the config and print the effective config (secrets as
    /// [REDACTED]); exit 64 when invalid.
    Check(JsonFlag),
}

/// `--remote-identity CERT,KEY`: two files.
fn parse_identity(text: &str) -> Result<(PathBuf, PathBuf), String> {
    match text.split_once(',') {
        Some((cert, key)) if !cert.is_empty() && !key.is_empty() && !key.contains(',') => {
            Ok((PathBuf::from(cert), PathBuf::from(key)))
        }
        _ => Err(format!(
            "{text:?} is not CERT,KEY: the client certificate and its key, two PEM files \
             (e.g. runner.pem,runner.key)"
        )),
    }
}
