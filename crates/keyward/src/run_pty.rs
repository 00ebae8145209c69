//! `keyward run --pty`: the program's terminal is a pseudo-terminal of its
//! own, relayed to the user's terminal (which stays in raw mode while the
//! program runs and is restored when it ends), so that nothing the program
//! does to its terminal reaches the user's shell.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::cli::RunArgs;

/// Standard input, output and error.
const STD_FDS: [i32; 3] = [0, 1, 2];

/// A pseudo-terminal opened for the program, not yet relayed.
pub struct PrivateTerminal {
    controller: OwnedFd,
    program: OwnedFd,
    /// Which of this process's standard descriptors are terminals (they
    /// become the program's pseudo-terminal).
    terminals: [bool; 3],
}

/// The relay between the user's terminal and the program's, while it runs.
pub struct Relay {
    controller: OwnedFd,
    /// Raw mode, when keys are relayed (standard input is a terminal).
    raw: Option<keyward_sys::RawMode>,
    output: std::thread::JoinHandle<()>,
    /// A copy of the program's end kept open until the run is over: the
    /// relay reads on even while the program has closed its descriptors
    /// (and may open `/dev/tty` again).
    hold: OwnedFd,
}

impl PrivateTerminal {
    /// A private terminal when asked for (`--pty`), or by default for a
    /// sandboxed run with a terminal on standard input, output or error
    /// (`--no-pty` opts out).
    pub fn for_run(args: &RunArgs) -> Result<Option<Self>> {
        let terminals = STD_FDS.map(keyward_sys::is_terminal);
        let any = terminals.iter().any(|t| *t);
        let wanted = args.pty || (args.sandbox.is_some() && any && !args.no_pty);
        if !wanted {
            return Ok(None);
        }
        let Some(like) = STD_FDS.into_iter().find(|fd| terminals[*fd as usize]) else {
            bail!("--pty needs a terminal on standard input, output or error");
        };
        let (controller, program) =
            keyward_sys::open_pty(like).context("cannot open a pseudo-terminal for the program")?;
        Ok(Some(Self {
            controller,
            program,
            terminals,
        }))
    }

    /// Gives the program the pseudo-terminal in place of each standard
    /// descriptor that is a terminal (redirected ones stay as they are),
    /// as its controlling terminal.
    pub fn attach(&self, cmd: &mut Command) -> Result<()> {
        let end = || -> Result<Stdio> {
            Ok(Stdio::from(
                self.program
                    .try_clone()
                    .context("cannot duplicate the pseudo-terminal")?,
            ))
        };
        if self.terminals[0] {
            cmd.stdin(end()?);
        }
        if self.terminals[1] {
            cmd.stdout(end()?);
        }
        if self.terminals[2] {
            cmd.stderr(end()?);
        }
        keyward_sys::controlling_terminal_on_spawn(cmd);
        Ok(())
    }

    /// Once the program started: the user's terminal goes raw, keys go to
    /// the program's terminal and its output to the user's.
    pub fn start(self) -> Result<Relay> {
        let Self {
            controller,
            program,
            terminals,
        } = self;
        // Keys are relayed only from a terminal: redirected input is the
        // program's own (it was not replaced).
        let raw = if terminals[0] {
            let raw =
                keyward_sys::RawMode::enter(0).context("cannot put the terminal in raw mode")?;
            let mut keys = File::from(controller.try_clone()?);
            std::thread::spawn(move || {
                let mut stdin = std::io::stdin().lock();
                let mut buf = [0u8; 4096];
                while let Ok(n) = stdin.read(&mut buf) {
                    if n == 0 || keys.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
            Some(raw)
        } else {
            None
        };
        let mut screen = File::from(controller.try_clone()?);
        let to_stdout = terminals[1] || !terminals[2];
        let output = std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            while let Ok(n) = screen.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let written = if to_stdout {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&buf[..n]).and_then(|()| out.flush())
                } else {
                    std::io::stderr().lock().write_all(&buf[..n])
                };
                if written.is_err() {
                    break;
                }
            }
        });
        Ok(Relay {
            controller,
            raw,
            output,
            hold: program,
        })
    }
}

impl Relay {
    /// The user's terminal was resized: so is the program's.
    pub fn resize(&self) {
        let _ = keyward_sys::copy_window_size(0, self.controller.as_raw_fd());
    }

    /// Puts the user's terminal back as it was (before an early exit).
    pub fn restore(&self) {
        if let Some(raw) = &self.raw {
            raw.restore();
        }
    }

    /// After the program and what it left are gone: the rest of their
    /// output is shown (the relay reads until the last end closes), then
    /// the terminal restored.
    pub fn finish(self) {
        let Self {
            controller,
            raw,
            output,
            hold,
        } = self;
        drop(hold);
        let _ = output.join();
        drop(controller);
        drop(raw);
    }
}
