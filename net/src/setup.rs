//! What berth set up on the host for a state root: `<root>/net/setup.json`
//! records the bridge, subnet and nftables table it created (and the layout
//! version of the tables), written once they exist and read by every
//! `prepare` under the network lock. The bridge and tables stay while the
//! record does: until `berth network rm`, or until `berth.toml` names
//! another bridge, subnet or table (then the recorded ones are removed and
//! the new ones created, once no pod uses the old ones).

use crate::config::{HostConfig, Subnet};
use crate::lease::NetLock;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Version of the table layout in [`crate::nft`]: a record of another
/// version makes the next `prepare` rebuild the tables.
pub const LAYOUT: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The host network of one state root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setup {
    pub layout: u32,
    pub bridge: String,
    pub subnet: String,
    pub nft_table: String,
}

impl Setup {
    /// What `cfg` asks for.
    pub fn of(cfg: &HostConfig) -> Setup {
        Setup {
            layout: LAYOUT,
            bridge: cfg.bridge.clone(),
            subnet: cfg.subnet.to_string(),
            nft_table: cfg.nft_table.clone(),
        }
    }

    pub fn subnet(&self) -> Option<Subnet> {
        Subnet::parse(&self.subnet)
    }
}

pub fn path(root: &Path) -> PathBuf {
    root.join("net").join("setup.json")
}

/// The record, if there is a readable one (an unreadable one counts as none:
/// the next `prepare` sets up afresh).
pub fn load(root: &Path, _lock: &NetLock) -> Option<Setup> {
    let text = std::fs::read_to_string(path(root)).ok()?;
    match serde_json::from_str(&text) {
        Ok(s) => Some(s),
        Err(e) => {
            log::warn!("net: ignoring {}: {e}", path(root).display());
            None
        }
    }
}

/// Record `s` (lock held). Write-then-rename.
pub fn store(root: &Path, _lock: &NetLock, s: &Setup) -> Result<(), SetupError> {
    let p = path(root);
    let tmp = p.with_extension("tmp");
    let text = serde_json::to_string_pretty(s).unwrap_or_default();
    std::fs::write(&tmp, text + "\n")
        .and_then(|()| std::fs::rename(&tmp, &p))
        .map_err(|source| SetupError::Write { path: p, source })
}

/// Forget the record (lock held); Ok if there was none.
pub fn forget(root: &Path, _lock: &NetLock) -> Result<(), SetupError> {
    let p = path(root);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SetupError::Remove { path: p, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let leases = crate::lease::LeaseDir::new(d.path());
        let lock = leases.lock().unwrap();
        assert_eq!(load(d.path(), &lock), None);
        let s = Setup::of(&HostConfig::default());
        assert_eq!(s.subnet(), Some(crate::config::DEFAULT_SUBNET));
        store(d.path(), &lock, &s).unwrap();
        assert_eq!(load(d.path(), &lock), Some(s));
        std::fs::write(path(d.path()), "{").unwrap();
        assert_eq!(load(d.path(), &lock), None);
        forget(d.path(), &lock).unwrap();
        forget(d.path(), &lock).unwrap();
        assert!(!path(d.path()).exists());
    }
}
