//! The host network configuration, `berth.toml`.
//!
//! Which file: `<root>/berth.toml` if it exists (`root` = the state root,
//! `--root`), else `/etc/berth/berth.toml` if it exists, else the built-in
//! defaults. The chosen file is used alone (no merging); a missing key takes
//! its default. Example (every key optional):
//!
//! ```toml
//! [network]
//! bridge = "berth0"          # host bridge the pods are attached to
//! subnet = "10.88.0.0/16"    # pod addresses; the bridge gets the first one
//! nft_table = "berth"        # berth's own nftables table (family ip)
//! dns = ["192.0.2.53"]       # default: the host's non-loopback name servers
//! ```

use serde::Deserialize;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The system-wide config file.
pub const SYSTEM_CONFIG: &str = "/etc/berth/berth.toml";
pub const DEFAULT_BRIDGE: &str = "berth0";
pub const DEFAULT_SUBNET: Subnet = Subnet {
    network: Ipv4Addr::new(10, 88, 0, 0),
    prefix_len: 16,
};
pub const DEFAULT_NFT_TABLE: &str = "berth";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// An IPv4 subnet `a.b.c.d/len`, with host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

impl Subnet {
    pub fn parse(s: &str) -> Option<Subnet> {
        let (a, l) = s.split_once('/')?;
        let network: Ipv4Addr = a.parse().ok()?;
        let prefix_len: u8 = l.parse().ok()?;
        if !(8..=30).contains(&prefix_len) {
            return None;
        }
        let sub = Subnet {
            network,
            prefix_len,
        };
        (u32::from(network) & !sub.mask() == 0).then_some(sub)
    }

    pub fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix_len))
    }

    /// The bridge's address: the first host of the subnet.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Pod addresses, in allocation order: every host after the gateway.
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.network);
        let last = base | !self.mask();
        (base + 2..last).map(Ipv4Addr::from)
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask() == u32::from(self.network)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// The resolved host network configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    pub bridge: String,
    pub subnet: Subnet,
    pub nft_table: String,
    /// Name servers for pods; `None` = the host's non-loopback ones.
    pub dns: Option<Vec<Ipv4Addr>>,
    /// `--private-users`: the host ids pods' ranges are taken from
    /// (`[users] pool = "FIRST-LAST"`), 65536 at a time.
    pub user_pool: (u32, u32),
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
}

/// systemd-nspawn's `--private-users=pick` range (0x80000 … 0x6fffffff):
/// above the usual `/etc/subuid` ranges, below the ids some tools treat
/// as negative.
pub const DEFAULT_USER_POOL: (u32, u32) = (0x0008_0000, 0x6fff_ffff);

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            bridge: DEFAULT_BRIDGE.into(),
            subnet: DEFAULT_SUBNET,
            nft_table: DEFAULT_NFT_TABLE.into(),
            dns: None,
            user_pool: DEFAULT_USER_POOL,
            source: None,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    network: NetworkSection,
    #[serde(default)]
    users: UsersSection,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct UsersSection {
    pool: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NetworkSection {
    bridge: Option<String>,
    subnet: Option<String>,
    nft_table: Option<String>,
    dns: Option<Vec<Ipv4Addr>>,
}

impl HostConfig {
    /// The config for state root `root` (see the module docs for the rule).
    pub fn load(root: &Path) -> Result<HostConfig, ConfigError> {
        let local = root.join("berth.toml");
        if local.exists() {
            return HostConfig::from_file(&local);
        }
        let system = Path::new(SYSTEM_CONFIG);
        if system.exists() {
            return HostConfig::from_file(system);
        }
        Ok(HostConfig::default())
    }

    pub fn from_file(path: &Path) -> Result<HostConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut c = HostConfig::parse(&text).map_err(|e| match e {
            ParseError::Toml(source) => ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            },
            ParseError::Invalid(message) => ConfigError::Invalid {
                path: path.to_path_buf(),
                message,
            },
        })?;
        c.source = Some(path.to_path_buf());
        Ok(c)
    }

    fn parse(text: &str) -> Result<HostConfig, ParseError> {
        let f: File = toml::from_str(text).map_err(ParseError::Toml)?;
        let mut c = HostConfig::default();
        if let Some(b) = f.network.bridge {
            if !berth_spec::valid_ifname(&b) {
                return Err(ParseError::Invalid(format!(
                    "bridge {b:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"
                )));
            }
            c.bridge = b;
        }
        if let Some(s) = f.network.subnet {
            c.subnet = Subnet::parse(&s).ok_or_else(|| {
                ParseError::Invalid(format!(
                    "subnet {s:?} is not an IPv4 network such as 10.88.0.0/16 (prefix 8 to 30, host bits zero)"
                ))
            })?;
        }
        if let Some(t) = f.network.nft_table {
            if !berth_spec::valid_nft_name(&t) {
                return Err(ParseError::Invalid(format!(
                    "nft_table {t:?} is not valid (a letter, then letters, digits or '_', at most 32)"
                )));
            }
            c.nft_table = t;
        }
        c.dns = f.network.dns;
        if let Some(p) = f.users.pool {
            let bad = || {
                ParseError::Invalid(format!(
                    "users pool {p:?} is not FIRST-LAST host ids (FIRST > 0, room for 65536 ids)"
                ))
            };
            let (a, b) = p.split_once('-').ok_or_else(bad)?;
            let (a, b): (u32, u32) = (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            );
            if a == 0 || b < a || b - a < 65535 {
                return Err(bad());
            }
            c.user_pool = (a, b);
        }
        Ok(c)
    }

    /// Name servers for a pod: the configured ones, or the host's
    /// /etc/resolv.conf entries that a pod can reach (loopback ones, such as
    /// systemd-resolved's 127.0.0.53, are skipped).
    pub fn pod_dns(&self) -> Vec<Ipv4Addr> {
        if let Some(d) = &self.dns {
            return d.clone();
        }
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        host_nameservers(&text)
    }
}

enum ParseError {
    Toml(toml::de::Error),
    Invalid(String),
}

fn host_nameservers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next())?
        })
        .filter_map(|a| a.parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let s = Subnet::parse("10.88.0.0/16").unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(s.hosts().next(), Some(Ipv4Addr::new(10, 88, 0, 2)));
        assert_eq!(s.hosts().last(), Some(Ipv4Addr::new(10, 88, 255, 254)));
        assert!(s.contains(Ipv4Addr::new(10, 88, 3, 4)));
        assert!(!s.contains(Ipv4Addr::new(10, 89, 0, 1)));
        assert_eq!(Subnet::parse("198.18.4.0/30").unwrap().hosts().count(), 1);
        for bad in [
            "10.88.0.1/16",
            "10.88.0.0",
            "10.88.0.0/31",
            "x/16",
            "10.0.0.0/7",
        ] {
            assert!(Subnet::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn files() {
        let c = HostConfig::parse("").ok().unwrap();
        assert_eq!(c, HostConfig::default());
        let c = HostConfig::parse(
            "[network]\nbridge = \"bt0\"\nsubnet = \"198.18.0.0/24\"\nnft_table = \"bt\"\ndns = [\"192.0.2.1\"]\n",
        )
        .ok()
        .unwrap();
        assert_eq!(c.bridge, "bt0");
        assert_eq!(c.subnet.to_string(), "198.18.0.0/24");
        assert_eq!(c.pod_dns(), vec![Ipv4Addr::new(192, 0, 2, 1)]);
        for bad in [
            "[network]\nbridge = \"a/b\"",
            "[network]\nsubnet = \"1.2.3.4/8\"",
            "[network]\nnft_table = \"-x\"",
            "[network]\nsurprise = 1",
            "[network",
        ] {
            assert!(HostConfig::parse(bad).is_err(), "{bad}");
        }
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("berth.toml"),
            "[network]\nbridge = \"bad name\"",
        )
        .unwrap();
        let e = HostConfig::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("berth.toml") && e.contains("bad name"), "{e}");
    }

    #[test]
    fn resolv_conf() {
        let t = "# x\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver ::1\nsearch a\n";
        assert_eq!(host_nameservers(t), vec![Ipv4Addr::new(10, 0, 0, 2)]);
    }
}
