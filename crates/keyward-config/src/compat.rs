//! `[compat]`: the settings of the protocols of other tools keyward also
//! speaks (the CAVRA socket is served by the daemon's `compat_cavra`).

use std::path::{Path, PathBuf};

use keyward_api::SOCKET_PATH_MAX;
use serde::{Deserialize, Serialize};

/// `[compat]`: protocols of other tools keyward also speaks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompatConfig {
    /// `[compat.cavra]`: CAVRA's decision socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cavra: Option<CavraCompatConfig>,
}

/// `[compat.cavra]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CavraCompatConfig {
    /// Where the socket is bound (read at start); relative paths are
    /// relative to the config file.
    pub socket: PathBuf,
}

impl CompatConfig {
    /// Makes a relative socket path relative to the config file's directory.
    pub(crate) fn resolve_relative(&mut self, dir: &Path) {
        if let Some(cavra) = &mut self.cavra
            && cavra.socket.is_relative()
        {
            cavra.socket = dir.join(&cavra.socket);
        }
    }

    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        let Some(cavra) = &self.cavra else {
            return Ok(());
        };
        let key = || "compat.cavra.socket".to_owned();
        let path = &cavra.socket;
        if path.as_os_str().is_empty() || path.file_name().is_none() {
            return Err((key(), "expected the path of a socket file".to_owned()));
        }
        let len = path.as_os_str().len();
        if len > SOCKET_PATH_MAX {
            return Err((
                key(),
                format!(
                    "{} is {len} bytes, over the {SOCKET_PATH_MAX}-byte limit of Unix socket paths; \
                     choose a shorter path",
                    path.display()
                ),
            ));
        }
        Ok(())
    }
}
