//! docs/CLI.md is generated from the command line itself: every command's
//! full `--help`, in command order. This test fails when the file is stale
//! (a flag added, a help text changed) and says how to regenerate it:
//!
//!     KEYWARD_UPDATE_DOCS=1 cargo test -p keyward --test cli_reference
//!
//! It includes the binary's own `cli.rs`, so the reference is the parser
//! the binary uses, not a copy of it.

#[allow(dead_code)]
#[path = "../src/cli.rs"]
mod cli;

use std::fmt::Write as _;
use std::path::Path;

const HEADER: &str = "\
# keyward command-line reference

Generated from the command line itself (`crates/keyward/tests/cli_reference.rs`);
do not edit by hand. Each section is the command's `--help`. The global
options (`--home`, `--config`, `--log-format`) are described once, under
`keyward`.
";

/// Appends `cmd`'s long help under a heading named by its full path, then
/// each of its subcommands (clap's own `help` excepted) in help order.
fn document(out: &mut String, cmd: &mut clap::Command, path: &str) {
    let help = cmd.render_long_help().to_string();
    let help: Vec<&str> = help.lines().map(str::trim_end).collect();
    write!(
        out,
        "\n## `{path}`\n\n```text\n{}\n```\n",
        help.join("\n").trim_end()
    )
    .unwrap();
    let mut subcommands: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|s| s.get_name() != "help")
        .cloned()
        .collect();
    subcommands.sort_by_key(|s| s.get_display_order());
    for mut sub in subcommands {
        let sub_path = format!("{path} {}", sub.get_name());
        document(out, &mut sub, &sub_path);
    }
}

fn reference() -> String {
    let mut cmd = cli::command().term_width(100);
    // Subcommands' templates and global options are only set up by a build.
    cmd.build();
    let mut out = HEADER.to_owned();
    document(&mut out, &mut cmd, "keyward");
    out
}

#[test]
fn docs_cli_reference_is_the_command_line() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/CLI.md");
    let generated = reference();
    if std::env::var_os("KEYWARD_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "docs/CLI.md is stale: regenerate it with \
         `KEYWARD_UPDATE_DOCS=1 cargo test -p keyward --test cli_reference` and read the diff"
    );
}

#[test]
fn every_command_is_in_the_reference_with_an_example_or_its_parent_has_one() {
    // A command a user reaches from the top level shows at least one
    // example: its own, or (for subcommands) its parent's.
    let mut cmd = cli::command();
    cmd.build();
    for top in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let after = top
            .get_after_help()
            .map(|h| h.to_string())
            .unwrap_or_default();
        assert!(
            after.contains("Example"),
            "`keyward {}` has no example in its help",
            top.get_name()
        );
    }
    let generated = reference();
    for top in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        assert!(
            generated.contains(&format!("## `keyward {}`", top.get_name())),
            "{} missing from the reference",
            top.get_name()
        );
    }
}
