//! The daemon-free command line as data: each `tests/cmd/<group>/<case>.toml`
//! runs the real binary once with its arguments (and stdin, environment,
//! files from `<case>.in/`) and states its whole stdout, stderr and exit
//! status (trycmd, as rage tests its CLI). Nothing here starts a daemon.
//!
//! Every case sets `env.inherit = false`: the output must not depend on the
//! machine (`KEYWARD_HOME` in the environment shows in `--help`, and
//! `COLUMNS` or `CLICOLOR_FORCE` change its layout). A case that needs a
//! home sets `KEYWARD_HOME` to a relative path inside its sandbox
//! (`fs.sandbox = true`), and `[CWD]` stands for that sandbox in the
//! expected output; the policy cases read the files in `policy/files/`.
//!
//! The `--help` cases are snapshots of the whole help text, on purpose:
//! adding, renaming or rewording a flag changes them, so a reviewer sees
//! every change to the command line in the diff. `help/run.toml` changes
//! most often (every new `keyward run` flag or sandbox detail shows there);
//! that is intended, not a flaky test. After such a change,
//! regenerate them and read what changed:
//!
//!     TRYCMD=overwrite cargo test -p keyward --test cli_cmd
//!
//! One case only: `cargo test -p keyward --test cli_cmd -- trycmd=NAME`.

#[test]
fn cli_cases() {
    let cases = trycmd::TestCases::new();
    cases
        .register_bin(
            "keyward",
            std::path::Path::new(env!("CARGO_BIN_EXE_keyward")),
        )
        // `keyward [VERSION] (commit [..])`: a release changes neither.
        .insert_var("[VERSION]", env!("CARGO_PKG_VERSION"))
        .expect("a valid variable name");
    cases.case("tests/cmd/*/*.toml");
}
