//! tracing setup: `RUST_LOG` wins; otherwise the daemon follows
//! `daemon.log_level` (reloadable on SIGHUP) and other commands log warnings.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::cli::LogFormat;

/// Lets the daemon swap the filter on reload.
pub struct FilterHandle {
    handle: reload::Handle<EnvFilter, Registry>,
    from_env: bool,
}

impl keyward_daemon::LogControl for FilterHandle {
    fn set_filter(&self, directive: &str) -> Result<(), String> {
        if self.from_env {
            // RUST_LOG is the operator's explicit choice; keep it.
            return Ok(());
        }
        let filter = EnvFilter::try_new(directive).map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }
}

/// Installs the global subscriber with `default_filter` unless `RUST_LOG`
/// is set.
pub fn init(format: LogFormat, default_filter: &str) -> FilterHandle {
    let from_env = std::env::var_os("RUST_LOG").is_some_and(|v| !v.is_empty());
    let filter = if from_env {
        EnvFilter::try_from_default_env().unwrap_or_else(|e| {
            eprintln!("keyward: ignoring invalid RUST_LOG ({e}); using {default_filter}");
            EnvFilter::new(default_filter)
        })
    } else {
        EnvFilter::new(default_filter)
    };
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::stderr().is_terminal();
    let output = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_target(false)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .init();
    FilterHandle { handle, from_env }
}
