//! The contract between stage0 (the `berth` CLI) and a stage1 executable.
//!
//! stage0 writes a pod directory (see [`PodDir`]) containing `pod.json`, a
//! serialized [`PodSpec`], and runs `<stage1> run POD_DIR`. Every stage1 reads
//! the same spec; anything a stage1 cannot honour is rejected with a clear error.
//!
//! Parsing ([`PodSpec::from_json`]) and checking ([`PodSpec::validate`]) are
//! separate steps: parsing rejects unknown fields and foreign versions, and
//! `validate` checks the semantic rules (absolute paths, name syntax, limits).

#[cfg(feature = "stage1")]
pub mod app_log;
#[cfg(feature = "stage1")]
pub mod cgroup;
#[cfg(feature = "confine")]
pub mod confine;
#[cfg(feature = "stage1")]
pub mod disk;
#[cfg(feature = "stage1")]
pub mod idmap;
#[cfg(feature = "rotating-log")]
pub mod rotating_log;
#[cfg(feature = "cli")]
pub mod stage1_cli;
#[cfg(feature = "stage1")]
pub mod systemd;
#[cfg(feature = "cli")]
pub use stage1_cli::exit_with;
pub mod control;
pub mod init_msg;
pub mod label;
pub mod landlock;
pub mod oci;
pub mod report;
pub mod service;
pub mod state;

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Version of the `pod.json` format written by this stage0. Version 2 added
/// `--net private` (`NetworkMode::Private` and `Network::private`); version 3
/// made `resources` the only place of the VM size and vCPU count (the
/// version 2 `kvm.memory_mib` and `kvm.vcpus` are still read, and ignored:
/// they were always derived from `resources` the same way). Older files are
/// valid newer files, so all are read (see [`MIN_SPEC_VERSION`]), and a
/// stage1 that only knows an older version refuses a newer file with a clear
/// message instead of an "unknown field".
pub const SPEC_VERSION: u32 = 3;

/// Oldest `pod.json` version this berth still reads (pods written by an older
/// stage0 stay listable and collectable).
pub const MIN_SPEC_VERSION: u32 = 1;

/// Environment variable naming an inherited fd that holds an exclusive
/// `flock` on the pod's `lock` file. stage0 takes the lock while it creates
/// the pod and hands it to stage1, so `gc` never sees a half-started pod.
pub const ENV_LOCK_FD: &str = "BERTH_LOCK_FD";

/// Environment variable naming an inherited pipe fd on which stage1 writes
/// its [`report::StartReport`] (one line) once the app has started or could
/// not start, then closes it.
pub const ENV_READY_FD: &str = "BERTH_READY_FD";

/// Environment variable: how many inherited fds, starting at 3, stage0
/// passes through a stage1 to the app (`--preserve-fds N`, or the sockets
/// of systemd socket activation). Every other inherited fd is closed.
pub const ENV_PASS_FDS: &str = "BERTH_PASS_FDS";

/// Environment variable set (to the `LISTEN_FDNAMES` value, possibly empty)
/// when the passed fds came from systemd socket activation: the app then
/// gets `LISTEN_FDS`, `LISTEN_PID` (its own pid) and `LISTEN_FDNAMES`.
pub const ENV_LISTEN_FDNAMES: &str = "BERTH_LISTEN_FDNAMES";

/// VM size of a kvm pod without `--memory`.
pub const KVM_DEFAULT_MEMORY: u64 = 256 << 20;
/// The smallest VM berth boots.
pub const KVM_MIN_MEMORY: u64 = 32 << 20;

/// Signals a stage1 passes on to the app (and stage0 to its stage1): the
/// ones a supervisor (a terminal, systemd, `kill`) uses to ask for a stop or
/// a reload. SIGKILL and SIGSTOP cannot be caught.
pub const FORWARDED_SIGNALS: &[i32] = &[
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Exit code: berth (stage0 or stage1) itself failed.
pub const EXIT_BERTH_FAILED: i32 = 125;
/// Exit code: the command was found but could not be executed.
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
/// Exit code: the command was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Default `PATH` for apps whose spec does not set one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// An error and its sources on one line, `a: b: c` — how every berth
/// program prints an error.
pub struct ErrorChain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}

/// `aa:bb:cc:dd:ee:ff` (hex, either case) → the six bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Errors from parsing or validating a [`PodSpec`].
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("pod.json is not valid")]
    Parse(#[source] serde_json::Error),
    #[error("pod.json has version {found}, this berth understands versions {MIN_SPEC_VERSION} to {SPEC_VERSION}")]
    Version { found: u32 },
    #[error("invalid pod spec: {0}")]
    Invalid(String),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The whole description of a pod, as written to `pod.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    pub version: u32,
    /// Pod name, unique per state root: `[A-Za-z0-9][A-Za-z0-9_.-]{0,62}`.
    pub name: String,
    /// RFC 4122 textual UUID (lowercase, with dashes).
    pub uuid: String,
    /// 32 lowercase hex digits; the pod's /etc/machine-id and machined id.
    pub machine_id: String,
    pub app: App,
    pub hostname: String,
    pub rootfs: Rootfs,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Host devices given to the pod (`--device`; ns only). The pod always
    /// has null, zero, full, random, urandom, tty, console and ptmx/pts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    pub network: Network,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub security: Security,
    #[serde(default)]
    pub stdio: Stdio,
    /// Settings used only by the kvm stage1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvm: Option<KvmSettings>,
    /// A service pod: systemd (`app.argv`) is the pod's PID 1 and runs
    /// only these units (see [`Service`]). `None`: a command pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Service>,
    /// A pod made by an OCI runtime front-end (`berth-oci`): the hand-off
    /// of `create`/`start` and the OCI settings berth has no flag for (see
    /// [`oci::OciSettings`]). `None`: an ordinary pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<oci::OciSettings>,
}

/// A service pod (`berth create -u UNIT…`): the app is systemd, booted
/// into [`SERVICE_TARGET`], a target berth generates into the pod's
/// `/etc/systemd/system` that wants exactly `units`. Following systemd's
/// container interface: `container=berth` in its environment,
/// `/run/host/container-manager`, `/run/host/notify` as its
/// `NOTIFY_SOCKET` (its `READY=1` is when the boot's jobs are done; the
/// stage1 then checks each unit is active), a writable cgroup subtree of
/// its own, `/dev/console` a pty, SIGRTMIN+3 to halt it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The units to run, with their dependencies (`nginx.service`,
    /// `getty@tty1.service`).
    pub units: Vec<String>,
}

/// The target a service pod boots (`systemd --unit=`).
pub const SERVICE_TARGET: &str = "berth-pod.target";
/// Where a service pod's systemd finds its notify socket.
pub const SERVICE_NOTIFY_SOCKET: &str = "/run/host/notify";

/// Is `name` a unit name berth accepts for `-u` (`name.service`,
/// `getty@tty1.service`, `foo.socket`…)? Printable ASCII from systemd's
/// allowed set, a known suffix, at most 255 bytes.
pub fn valid_unit_name(name: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        ".service", ".socket", ".timer", ".target", ".path", ".mount",
    ];
    let Some(stem) = SUFFIXES.iter().find_map(|s| name.strip_suffix(s)) else {
        return false;
    };
    name.len() <= 255
        && !stem.is_empty()
        && !stem.starts_with('@')
        && stem.matches('@').count() <= 1
        && stem
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b":-_.\\@".contains(&c))
}

/// The process run inside the pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// argv; `argv[0]` is looked up in `PATH` inside the pod when it has no `/`.
    pub argv: Vec<String>,
    /// `KEY=VALUE` strings, in order; later entries win.
    #[serde(default)]
    pub env: Vec<String>,
    /// Absolute working directory inside the pod.
    pub cwd: String,
    pub user: User,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

/// How the pod's root filesystem is assembled: an overlay whose lower layer is
/// `image` and whose upper/work directories live in the pod directory, so the
/// image is never modified and can be shared by many pods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rootfs {
    /// Absolute host path of the read-only image directory.
    pub image: PathBuf,
    /// Read-only layers above the image, topmost first (a service pod's
    /// seed files: its machine-id, the generated target…), in the pod
    /// directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<PathBuf>,
}

impl Rootfs {
    /// The overlay's lower layers, topmost first.
    pub fn lowers(&self) -> Vec<&Path> {
        self.layers
            .iter()
            .map(PathBuf::as_path)
            .chain(std::iter::once(self.image.as_path()))
            .collect()
    }

    /// The overlayfs mount options of a pod whose upper and work
    /// directories are `upper` and `work`.
    pub fn overlay_options(&self, upper: &Path, work: &Path) -> String {
        overlay_options(&self.lowers(), upper, work)
    }
}

/// A host directory or file made visible inside the pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// Absolute host path.
    pub source: PathBuf,
    /// Absolute path inside the pod.
    pub destination: String,
    #[serde(default)]
    pub read_only: bool,
}

/// A host device node made in the pod's /dev and allowed by its device
/// policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Absolute path in the pod, below `/dev/`.
    pub path: String,
    pub kind: DeviceKind,
    pub major: u32,
    pub minor: u32,
    /// Access allowed: a combination of `r`, `w`, `m` (mknod).
    pub access: String,
    /// Mode bits of the node (the host node's).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Char,
    Block,
}

impl DeviceKind {
    /// `c` or `b`, as device cgroups write it.
    pub fn letter(self) -> char {
        match self {
            DeviceKind::Char => 'c',
            DeviceKind::Block => 'b',
        }
    }
}

/// The pod's network. With [`NetworkMode::Private`], `ports` are the
/// ports to publish and `private` is the lease stage0 takes each time the
/// pod starts (address, bridge, ports; every stage1 reads the same fields);
/// a pod that is not running may hold a stale one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub mode: NetworkMode,
    /// `-p` ports to publish (private mode only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private: Option<PrivateNetwork>,
}

impl Network {
    /// `--net none`: loopback only.
    pub fn none() -> Network {
        Network {
            mode: NetworkMode::None,
            ports: Vec::new(),
            private: None,
        }
    }

    /// The pod's IPv4 address, if it has one.
    pub fn address(&self) -> Option<Ipv4Addr> {
        self.private.as_ref().map(|p| p.address)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// A private network namespace with only loopback.
    None,
    /// The host's network namespace (ns stage1 only).
    Host,
    /// Own network namespace (ns) or virtio-net device (kvm) with one address
    /// on the host bridge, a default route via the bridge and outbound NAT.
    Private,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::Host => "host",
            NetworkMode::Private => "private",
        }
    }
}

/// `--net private`: everything a stage1 needs to plug the pod into the host
/// bridge. Written by stage0 from its address lease and the host config
/// (`berth.toml`); see the `berth-net` crate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateNetwork {
    /// The pod's address (leased from the bridge's subnet).
    pub address: Ipv4Addr,
    /// Prefix length of the bridge's subnet (e.g. 16).
    pub prefix_len: u8,
    /// The bridge's own address: the pod's default route and DNS-less host.
    pub gateway: Ipv4Addr,
    /// Name of the pod's interface inside the pod / guest (`eth0`).
    pub ifname: String,
    /// MAC address of the pod's interface, `02:xx:xx:xx:xx:xx` (locally
    /// administered, derived from the pod's uuid).
    pub mac: String,
    /// Host bridge the pod is attached to.
    pub bridge: String,
    /// Host-side interface of the pod: the veth's host end (ns) or the tap (kvm).
    pub host_ifname: String,
    /// berth's nftables table (family `ip`) holding NAT and port rules.
    pub nft_table: String,
    /// Name servers written to the pod's /etc/resolv.conf.
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// Published ports (`-p HOSTPORT:PODPORT[/PROTO]`).
    #[serde(default)]
    pub ports: Vec<PortMapping>,
}

/// One `-p HOSTPORT:PODPORT[/tcp|/udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    pub host_port: u16,
    pub pod_port: u16,
    pub protocol: Protocol,
}

impl std::fmt::Display for PortMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.host_port,
            self.pod_port,
            self.protocol.as_str()
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// Is `name` a valid Linux interface name (1..=15 bytes, no `/`, `:` or
/// whitespace, not `.` or `..`)?
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|c| c.is_ascii_graphic() && c != b'/' && c != b':')
}

impl PrivateNetwork {
    fn validate(&self) -> Result<(), String> {
        if !(1..=30).contains(&self.prefix_len) {
            return Err(format!(
                "prefix length {} is out of range 1..=30",
                self.prefix_len
            ));
        }
        let mask = u32::MAX << (32 - u32::from(self.prefix_len));
        let (a, g) = (u32::from(self.address), u32::from(self.gateway));
        if a & mask != g & mask || a == g {
            return Err(format!(
                "address {} is not a host of the gateway's subnet {}/{}",
                self.address, self.gateway, self.prefix_len
            ));
        }
        if a & !mask == 0 || a & !mask == !mask {
            return Err(format!(
                "address {} is a network or broadcast address",
                self.address
            ));
        }
        for n in [&self.ifname, &self.bridge, &self.host_ifname] {
            if !valid_ifname(n) {
                return Err(format!("interface name {n:?} is not valid"));
            }
        }
        let Some(mac) = parse_mac(&self.mac).filter(|_| self.mac == self.mac.to_lowercase()) else {
            return Err(format!(
                "mac {:?} is not a lowercase xx:xx:xx:xx:xx:xx address",
                self.mac
            ));
        };
        if mac[0] & 1 != 0 {
            return Err(format!("mac {} is a multicast address", self.mac));
        }
        if !valid_nft_name(&self.nft_table) {
            return Err(format!("nft table name {:?} is not valid", self.nft_table));
        }
        for (i, p) in self.ports.iter().enumerate() {
            if p.host_port == 0 || p.pod_port == 0 {
                return Err(format!("port mapping {p} uses port 0"));
            }
            if self.ports[..i]
                .iter()
                .any(|q| q.host_port == p.host_port && q.protocol == p.protocol)
            {
                return Err(format!(
                    "host port {}/{} is published twice",
                    p.host_port,
                    p.protocol.as_str()
                ));
            }
        }
        Ok(())
    }
}

/// Is `name` usable as an nftables table name (`[A-Za-z][A-Za-z0-9_]{0,31}`)?
pub fn valid_nft_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Resource limits; `None` means unlimited. They mean the same on both
/// stage1s (docs/architecture.md, "Resource limits"):
///
/// - `memory`: ns — the pod cgroup's memory limit (swap included: none);
///   kvm — the VM's RAM ([`KVM_DEFAULT_MEMORY`] when unset), and the VMM
///   process's cgroup is bounded to that plus the VMM's own overhead.
/// - `cpu_millis`: a CFS quota on the pod's cgroup (ns: the pod's
///   processes; kvm: the VMM process, whose guest sees
///   `cpu_millis` rounded up as vCPUs).
/// - `pids`: the number of tasks of the pod's processes (kvm: enforced by
///   guest-init in a guest cgroup around the app; the VMM's threads are
///   bounded separately).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory limit in bytes.
    #[serde(default)]
    pub memory: Option<u64>,
    /// CPU limit in thousandths of a CPU (1500 = 1.5 CPUs).
    #[serde(default)]
    pub cpu_millis: Option<u32>,
    /// Maximum number of tasks.
    #[serde(default)]
    pub pids: Option<u32>,
    /// Bytes the pod may write to its root filesystem (the overlay's upper
    /// layer lives on a file system of this size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<u64>,
}

impl Resources {
    /// kvm: the VM's RAM in MiB.
    pub fn vm_memory_mib(&self) -> u64 {
        self.memory.unwrap_or(KVM_DEFAULT_MEMORY) >> 20
    }

    /// kvm: the guest's vCPUs, `cpu_millis` rounded up (1 when unset).
    pub fn vcpus(&self) -> u32 {
        self.cpu_millis.map_or(1, |m| m.div_ceil(1000))
    }
}

/// Confinement applied to the app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Security {
    /// Capabilities kept in the bounding, permitted and effective sets, as
    /// lowercase names without the `cap_` prefix (e.g. `net_bind_service`).
    pub capabilities: Vec<String>,
    /// Apply berth's seccomp filter ([`SeccompProfile`]).
    pub seccomp: bool,
    /// Which filter: the default, or systemd's for service pods.
    #[serde(default, skip_serializing_if = "SeccompProfile::is_default")]
    pub seccomp_profile: SeccompProfile,
    /// Set `PR_SET_NO_NEW_PRIVS`.
    pub no_new_privileges: bool,
    /// A user namespace: root in the pod is `host_uid` on the host
    /// (`--user-remap`, `--private-users`). `None`: root is root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<UserNamespace>,
    /// Landlock (`--security-opt landlock=on|off`): the pod's processes
    /// reach no file outside the pod's own tree ([`landlock`]).
    #[serde(default, skip_serializing_if = "LandlockMode::is_default")]
    pub landlock: LandlockMode,
    /// The SELinux context or AppArmor profile of the pod's processes
    /// (`--security-label`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<label::SecurityLabel>,
}

/// [`Security::landlock`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LandlockMode {
    /// Applied where the kernel has Landlock (one warning where not).
    #[default]
    On,
    /// Not applied.
    Off,
}

impl LandlockMode {
    fn is_default(&self) -> bool {
        *self == LandlockMode::On
    }
}

/// The pod's id mapping: ids `0 .. count` in the pod are `host_uid ..` and
/// `host_gid ..` on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserNamespace {
    pub host_uid: u32,
    pub host_gid: u32,
    pub count: u32,
    /// Picked by berth from its pool (`--private-users`): the range is the
    /// pod's until it is removed.
    #[serde(default)]
    pub private: bool,
}

impl UserNamespace {
    /// `uid_map`/`gid_map` contents.
    pub fn uid_map(&self) -> String {
        format!("0 {} {}\n", self.host_uid, self.count)
    }
    pub fn gid_map(&self) -> String {
        format!("0 {} {}\n", self.host_gid, self.count)
    }

    /// Check the numbers: a non-empty range that fits in 32 bits, and not
    /// the host's root.
    pub fn validate(&self) -> Result<(), String> {
        if self.count == 0 {
            return Err("a user namespace maps at least one id (COUNT > 0)".into());
        }
        for (what, base) in [("uid", self.host_uid), ("gid", self.host_gid)] {
            if u64::from(base) + u64::from(self.count) > u64::from(u32::MAX) {
                return Err(format!(
                    "host {what} {base} + {} ids go past 4294967295",
                    self.count
                ));
            }
            if base == 0 {
                return Err(format!(
                    "host {what} 0 would make the pod's root the host's"
                ));
            }
        }
        Ok(())
    }
}

/// The capability set kept by default: Docker's/Moby's default set without
/// NET_RAW (as podman does: raw sockets let a pod forge ARP and IP on the
/// bridge; ping works without it through ICMP datagram sockets, which each
/// stage1 allows for every group in the pod's `ping_group_range`). No
/// SYS_ADMIN, SYS_MODULE, SYS_RAWIO, SYS_TIME, SYS_PTRACE, MAC_ADMIN, NET_ADMIN...
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "chown",
    "dac_override",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "net_bind_service",
    "sys_chroot",
    "mknod",
    "audit_write",
    "setfcap",
];

/// Every capability name berth understands (Linux 6.x), lowercase without
/// the `cap_` prefix, in bit order.
pub const ALL_CAPABILITIES: &[&str] = &[
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// The seccomp filter a pod's processes get.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompProfile {
    /// For a command: no mounts, no namespaces, no keyrings, no user
    /// namespaces, and the rest of `confine`'s deny list.
    #[default]
    Default,
    /// For systemd as a service pod's PID 1: mounts, namespaces and
    /// keyrings allowed (as in systemd-nspawn); the kernel-surface part of
    /// the deny list stays.
    Systemd,
}

impl SeccompProfile {
    fn is_default(&self) -> bool {
        *self == SeccompProfile::Default
    }
}

impl Default for Security {
    fn default() -> Self {
        Security {
            capabilities: DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect(),
            seccomp: true,
            seccomp_profile: SeccompProfile::Default,
            no_new_privileges: true,
            userns: None,
            landlock: LandlockMode::On,
            label: None,
        }
    }
}

impl Security {
    /// A service pod's confinement: systemd needs CAP_SYS_ADMIN (mounts,
    /// namespaces for its units), and a few more to manage services
    /// (systemd-nspawn's set minus SYS_PTRACE, SYS_BOOT, NET_RAW and
    /// LINUX_IMMUTABLE); setuid programs keep working (no no_new_privs).
    /// Without a user namespace, root in such a pod holds these for real:
    /// use `--private-users` or `--stage1=kvm` for untrusted services.
    pub fn service() -> Security {
        let mut caps: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect();
        for c in SERVICE_EXTRA_CAPABILITIES {
            caps.push(c.to_string());
        }
        Security {
            capabilities: caps,
            seccomp: true,
            seccomp_profile: SeccompProfile::Systemd,
            no_new_privileges: false,
            userns: None,
            landlock: LandlockMode::On,
            label: None,
        }
    }
}

/// What a service pod adds to [`DEFAULT_CAPABILITIES`].
pub const SERVICE_EXTRA_CAPABILITIES: &[&str] = &[
    "sys_admin",
    "dac_read_search",
    "sys_nice",
    "sys_resource",
    "sys_tty_config",
    "ipc_owner",
    "lease",
    "net_broadcast",
    "audit_control",
];

/// How the app's standard streams are connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stdio {
    /// Keep stdin attached (otherwise the app reads /dev/null).
    #[serde(default)]
    pub interactive: bool,
    /// Give the app a pseudo-terminal.
    #[serde(default)]
    pub tty: bool,
}

/// kvm stage1 settings. The VM's size comes from [`Resources`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvmSettings {
    /// Guest kernel (uncompressed vmlinux ELF); `None` = the installed default.
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// Version 2 only: always `resources.memory` in MiB (or 256). Read and
    /// ignored; never written.
    #[serde(default, skip_serializing)]
    memory_mib: Option<u32>,
    /// Version 2 only: always `resources.cpu_millis` rounded up (or 1).
    /// Read and ignored; never written.
    #[serde(default, skip_serializing)]
    vcpus: Option<u32>,
    /// Without a user namespace: the host uid and gid the jailed VMM
    /// process runs as — the first id of a range stage0 took for the pod
    /// from berth's users pool (`[users] pool`), so that no other pod and
    /// no host user has it. `None` with a user namespace (the VMM is then
    /// the pod's mapped root), and for a pod made before this field: that
    /// VMM stays uid 0, confined by its capabilities, seccomp, Landlock and
    /// the jail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_id: Option<u32>,
}

/// Is `name` acceptable as a pod name?
pub fn valid_pod_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Is `name` acceptable as a hostname (RFC 1123 labels, at most 64 bytes)?
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.split('.').all(|label| {
            let l = label.as_bytes();
            !l.is_empty()
                && l.len() <= 63
                && l.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                && l[0] != b'-'
                && l[l.len() - 1] != b'-'
        })
}

fn is_abs_clean(p: &str) -> bool {
    p.starts_with('/') && !p.contains('\0') && p.split('/').all(|c| c != ".." && c != ".")
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

impl PodSpec {
    /// A pod running `argv` from `image` with defaults for everything else:
    /// hostname = `name`, machine id = `uuid` without dashes, cwd `/`, root,
    /// no mounts, `--net none`, no limits, the default security, no stdin
    /// or tty, no kvm settings. Not validated.
    pub fn new(name: &str, uuid: &str, argv: Vec<String>, image: impl Into<PathBuf>) -> PodSpec {
        PodSpec {
            version: SPEC_VERSION,
            name: name.into(),
            uuid: uuid.into(),
            machine_id: uuid.replace('-', ""),
            app: App {
                argv,
                env: Vec::new(),
                cwd: "/".into(),
                user: User { uid: 0, gid: 0 },
            },
            hostname: name.into(),
            rootfs: Rootfs {
                image: image.into(),
                layers: Vec::new(),
            },
            mounts: Vec::new(),
            devices: Vec::new(),
            network: Network::none(),
            resources: Resources::default(),
            security: Security::default(),
            stdio: Stdio::default(),
            kvm: None,
            service: None,
            oci: None,
        }
    }

    /// Parse `pod.json` text, rejecting unknown fields and other versions.
    pub fn from_json(text: &str) -> Result<PodSpec, SpecError> {
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u32,
        }
        let v: VersionOnly = serde_json::from_str(text).map_err(SpecError::Parse)?;
        if !(MIN_SPEC_VERSION..=SPEC_VERSION).contains(&v.version) {
            return Err(SpecError::Version { found: v.version });
        }
        serde_json::from_str(text).map_err(SpecError::Parse)
    }

    /// Read and parse `pod.json` from a pod directory, then validate it.
    pub fn load(pod: &PodDir) -> Result<PodSpec, SpecError> {
        let path = pod.spec_file();
        let text = std::fs::read_to_string(&path).map_err(|source| SpecError::Read {
            path: path.clone(),
            source,
        })?;
        let spec = PodSpec::from_json(&text)?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn to_json(&self) -> String {
        // Serializing these plain types cannot fail (no maps with non-string keys).
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Check the semantic rules a stage1 relies on.
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |m: String| Err(SpecError::Invalid(m));
        if !(MIN_SPEC_VERSION..=SPEC_VERSION).contains(&self.version) {
            return Err(SpecError::Version {
                found: self.version,
            });
        }
        if !valid_pod_name(&self.name) {
            return bad(format!("pod name {:?} is not valid", self.name));
        }
        if !is_uuid(&self.uuid) {
            return bad(format!(
                "uuid {:?} is not a lowercase RFC 4122 UUID",
                self.uuid
            ));
        }
        if !is_hex(&self.machine_id, 32) {
            return bad(format!(
                "machine_id {:?} is not 32 lowercase hex digits",
                self.machine_id
            ));
        }
        if !valid_hostname(&self.hostname) {
            return bad(format!("hostname {:?} is not valid", self.hostname));
        }
        if self.app.argv.is_empty() || self.app.argv[0].is_empty() {
            return bad("app.argv must name a command".into());
        }
        if self.app.argv.iter().any(|a| a.contains('\0')) {
            return bad("app.argv contains a NUL byte".into());
        }
        for e in &self.app.env {
            match e.split_once('=') {
                Some((k, _)) if !k.is_empty() && !e.contains('\0') => {}
                _ => return bad(format!("environment entry {e:?} is not KEY=VALUE")),
            }
        }
        if !is_abs_clean(&self.app.cwd) {
            return bad(format!(
                "working directory {:?} is not an absolute path",
                self.app.cwd
            ));
        }
        if let Some(l) = self.rootfs.layers.iter().find(|l| !l.is_absolute()) {
            return bad(format!(
                "rootfs layer {} is not an absolute path",
                l.display()
            ));
        }
        if !self.rootfs.image.is_absolute() {
            return bad(format!(
                "rootfs image {} is not an absolute path",
                self.rootfs.image.display()
            ));
        }
        for m in &self.mounts {
            if !m.source.is_absolute() {
                return bad(format!(
                    "volume source {} is not an absolute path",
                    m.source.display()
                ));
            }
            if !is_abs_clean(&m.destination) || m.destination == "/" {
                return bad(format!(
                    "volume destination {:?} must be an absolute path below /",
                    m.destination
                ));
            }
        }
        if let Some(svc) = &self.service {
            if svc.units.is_empty() {
                return bad("a service pod needs at least one unit".into());
            }
            for u in &svc.units {
                if !valid_unit_name(u) {
                    return bad(format!("unit name {u:?} is not valid"));
                }
            }
        }
        for d in &self.devices {
            if !d.path.starts_with("/dev/") || !is_abs_clean(&d.path) {
                return bad(format!("device path {:?} is not below /dev", d.path));
            }
            if d.access.is_empty() || !d.access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
                return bad(format!(
                    "device access {:?} is not a combination of r, w, m",
                    d.access
                ));
            }
        }
        if !self.network.ports.is_empty() && self.network.mode != NetworkMode::Private {
            return bad(format!(
                "ports are published but the network mode is {}",
                self.network.mode.as_str()
            ));
        }
        match (self.network.mode, &self.network.private) {
            (NetworkMode::Private, Some(p)) => p.validate().map_err(SpecError::Invalid)?,
            // Not leased yet (a pod that was created but never started).
            (NetworkMode::Private, None) => {}
            (_, Some(_)) => {
                return bad(format!(
                    "network.private is set but the network mode is {}",
                    self.network.mode.as_str()
                ))
            }
            _ => {}
        }
        if self.resources.memory == Some(0) {
            return bad("memory limit must be greater than 0".into());
        }
        if self.resources.cpu_millis == Some(0) {
            return bad("cpu limit must be greater than 0".into());
        }
        if self.resources.pids == Some(0) {
            return bad("pids limit must be greater than 0".into());
        }
        if let Some(u) = &self.security.userns {
            u.validate().map_err(SpecError::Invalid)?;
            if self.network.mode == NetworkMode::Host {
                return bad("a user namespace cannot share the host's network (--net host)".into());
            }
        }
        if let Some(l) = &self.security.label {
            // Each form must read back as itself: what a stage1 writes to
            // an attr file went through the command line's checks.
            match label::SecurityLabel::parse(&l.to_string()) {
                Ok(back) if back == *l => {}
                _ => return bad(format!("security label {l:?} is not valid")),
            }
        }
        for c in &self.security.capabilities {
            if !c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') || c.is_empty() {
                return bad(format!(
                    "capability {c:?} is not a lowercase capability name"
                ));
            }
        }
        if let Some(o) = &self.oci {
            o.validate().map_err(SpecError::Invalid)?;
            if self.service.is_some() {
                return bad("an OCI pod cannot be a service pod".into());
            }
        }
        if let Some(k) = &self.kvm {
            if k.vmm_id == Some(0) {
                return bad("the VMM's id must not be 0 (root)".into());
            }
            if k.vmm_id.is_some() && self.security.userns.is_some() {
                return bad("a VMM id is for pods without a user namespace".into());
            }
            let vcpus = self.resources.vcpus();
            if vcpus > 254 {
                return bad(format!("vcpus {vcpus} is out of range 1..=254"));
            }
            let mem = self.resources.memory.unwrap_or(KVM_DEFAULT_MEMORY);
            if mem < KVM_MIN_MEMORY {
                return bad(format!(
                    "VM memory {} MiB is below {} MiB",
                    mem >> 20,
                    KVM_MIN_MEMORY >> 20
                ));
            }
        }
        Ok(())
    }

    /// The app's environment with berth's defaults filled in: `PATH` (if the
    /// spec does not set it), `HOSTNAME`, `HOME` (unless set), `TERM` with a
    /// tty, and `container=berth`. Later entries of the spec win.
    pub fn effective_env(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(self.app.env.len() + 5);
        let has = |k: &str| {
            self.app
                .env
                .iter()
                .any(|e| e.split_once('=').map(|(x, _)| x) == Some(k))
        };
        if !has("PATH") {
            out.push(format!("PATH={DEFAULT_PATH}"));
        }
        out.push(format!("HOSTNAME={}", self.hostname));
        if !has("HOME") {
            let home = if self.app.user.uid == 0 { "/root" } else { "/" };
            out.push(format!("HOME={home}"));
        }
        if self.stdio.tty && !has("TERM") {
            out.push("TERM=xterm".into());
        }
        out.push("container=berth".into());
        for e in &self.app.env {
            if let Some((k, _)) = e.split_once('=') {
                out.retain(|o| o.split_once('=').map(|(x, _)| x) != Some(k));
            }
            out.push(e.clone());
        }
        out
    }
}

/// The overlayfs mount options for a pod's rootfs: `lowerdir=A:B…,upperdir=…,
/// workdir=…` (lower layers topmost first), each path escaped (`,`, `:` and
/// `\` are separators or escapes in overlayfs option values), so any
/// directory name works.
pub fn overlay_options(lowers: &[&Path], upper: &Path, work: &Path) -> String {
    fn escape(p: &Path) -> String {
        let s = p.to_string_lossy();
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            if matches!(c, ',' | ':' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }
    let lower: Vec<String> = lowers.iter().map(|l| escape(l)).collect();
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        escape(upper),
        escape(work)
    )
}

/// Is `s` a lowercase RFC 4122 textual UUID (8-4-4-4-12 hex digits)?
pub fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && [8, 4, 4, 4, 12]
            .iter()
            .zip(&parts)
            .all(|(n, p)| is_hex(p, *n))
}

/// Paths inside a pod directory. Files written by stage0: `pod.json`, `stage1`.
/// `remove-on-exit`. Files written by stage1: `pid`, `status`, `lock`,
/// `ctl.sock`, `console.log`,
/// `app.log` (output of detached pods), and the overlay's `upper/` and `work/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDir(PathBuf);

impl PodDir {
    pub fn new(path: impl Into<PathBuf>) -> PodDir {
        PodDir(path.into())
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn spec_file(&self) -> PathBuf {
        self.0.join("pod.json")
    }
    /// The state root holding this pod (`<root>/pods/<name>` → `<root>`),
    /// where host-wide state such as network leases lives.
    pub fn state_root(&self) -> PathBuf {
        self.0
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"))
    }
    /// Mount point of the assembled root filesystem.
    pub fn rootfs(&self) -> PathBuf {
        self.0.join("rootfs")
    }
    /// The overlay's directory, holding `upper/` and `work/` (with `--disk`,
    /// the mount point of the pod's own file system).
    pub fn overlay_dir(&self) -> PathBuf {
        self.0.join("overlay")
    }
    /// A service pod's seed layer: what berth writes into its root at
    /// create (machine-id, hostname, the generated target), read-only.
    pub fn seed_layer(&self) -> PathBuf {
        self.0.join("seed")
    }
    /// `--host-share`: the pod's private tree (its /etc copy, /var
    /// skeleton…), the overlay's image layer.
    pub fn host_share_tree(&self) -> PathBuf {
        self.0.join("host-share")
    }
    /// `--disk`: the ext4 image holding the overlay's upper layer.
    pub fn disk_image(&self) -> PathBuf {
        self.0.join("disk.img")
    }
    /// Overlay upper directory: every change the pod makes to its rootfs.
    pub fn upper(&self) -> PathBuf {
        self.0.join("overlay").join("upper")
    }
    /// Overlay work directory.
    pub fn work(&self) -> PathBuf {
        self.0.join("overlay").join("work")
    }
    /// Host PID of the pod leader (ns: the pod's PID 1; kvm: the VMM).
    pub fn pid_file(&self) -> PathBuf {
        self.0.join("pid")
    }
    /// The app's exit code, written when the pod ends.
    pub fn status_file(&self) -> PathBuf {
        self.0.join("status")
    }
    /// flock-ed for the whole life of the pod.
    pub fn lock_file(&self) -> PathBuf {
        self.0.join("lock")
    }
    /// Path of the stage1 executable that runs this pod (written by stage0).
    pub fn stage1_file(&self) -> PathBuf {
        self.0.join("stage1")
    }
    /// The pod's cgroup path (relative to each hierarchy's root), recorded
    /// by its stage1.
    pub fn cgroup_file(&self) -> PathBuf {
        self.0.join("cgroup")
    }
    /// Why the pod ended, when it was not the app's own doing
    /// (`oom-killed`), written by stage1 next to `status`.
    pub fn exit_reason_file(&self) -> PathBuf {
        self.0.join("exit-reason")
    }
    /// A service pod's notify socket (ns: bound by stage1, mounted at
    /// `/run/host/notify` in the pod).
    pub fn notify_socket(&self) -> PathBuf {
        self.0.join("notify.sock")
    }
    /// kvm: the directory of the VMM's sockets (bound into its jail).
    pub fn run_dir(&self) -> PathBuf {
        self.0.join("run")
    }
    /// Control socket for exec/stop (kvm).
    pub fn ctl_socket(&self) -> PathBuf {
        self.run_dir().join("ctl.sock")
    }
    /// kvm: the directory of the console log (bound into the VMM's jail).
    pub fn log_dir(&self) -> PathBuf {
        self.0.join("log")
    }
    /// Kernel and guest-init diagnostics (kvm), rotated to `console.log.1`.
    pub fn console_log(&self) -> PathBuf {
        self.log_dir().join("console.log")
    }
    /// kvm: the mount point of the VMM's jail.
    pub fn jail_dir(&self) -> PathBuf {
        self.0.join("jail")
    }
    /// stdout+stderr of a detached pod.
    pub fn app_log(&self) -> PathBuf {
        self.0.join("app.log")
    }
    /// The pod's Landlock as its stage1 applied it
    /// ([`landlock::LandlockState`], JSON).
    pub fn landlock_file(&self) -> PathBuf {
        self.0.join("landlock.json")
    }
    /// Present when stage0 asked for the pod to be removed once it exits
    /// (`run --detach --rm`, where stage0 is gone by then): stage1 removes
    /// the pod directory after releasing everything else.
    pub fn remove_on_exit_file(&self) -> PathBuf {
        self.0.join("remove-on-exit")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PodSpec {
        PodSpec {
            version: SPEC_VERSION,
            name: "web-1".into(),
            uuid: "0b9f3c2e-6a1d-4c8e-9f00-1234567890ab".into(),
            machine_id: "0b9f3c2e6a1d4c8e9f001234567890ab".into(),
            app: App {
                argv: vec!["/bin/sh".into(), "-c".into(), "true".into()],
                env: vec!["A=1".into()],
                cwd: "/".into(),
                user: User { uid: 0, gid: 0 },
            },
            hostname: "web-1".into(),
            rootfs: Rootfs {
                image: "/var/lib/images/busybox".into(),
                layers: Vec::new(),
            },
            mounts: vec![Mount {
                source: "/srv/data".into(),
                destination: "/data".into(),
                read_only: true,
            }],
            devices: Vec::new(),
            network: Network::none(),
            resources: Resources {
                memory: Some(64 << 20),
                cpu_millis: Some(500),
                pids: Some(100),
                disk: None,
            },
            security: Security::default(),
            stdio: Stdio::default(),
            kvm: None,
            service: None,
            oci: None,
        }
    }

    #[test]
    fn roundtrip_and_validate() {
        let s = sample();
        let text = s.to_json();
        let back = PodSpec::from_json(&text).expect("parse");
        assert_eq!(back, s);
        back.validate().expect("valid");
    }

    #[test]
    fn unknown_field_rejected() {
        let mut v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        v["app"]["surprise"] = serde_json::json!(1);
        let err = PodSpec::from_json(&v.to_string()).unwrap_err();
        assert!(err.to_string().contains("not valid"), "{err}");
        assert!(format!("{:?}", err).contains("surprise"));
    }

    #[test]
    fn other_version_rejected() {
        let mut v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        v["version"] = serde_json::json!(SPEC_VERSION + 1);
        match PodSpec::from_json(&v.to_string()) {
            Err(SpecError::Version { found }) if found == SPEC_VERSION + 1 => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn version_2_kvm_settings_are_read_and_ignored() {
        let mut s = sample();
        s.kvm = Some(KvmSettings::default());
        let mut v: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        assert!(v["kvm"].get("memory_mib").is_none(), "never written");
        v["version"] = serde_json::json!(2);
        v["kvm"]["memory_mib"] = serde_json::json!(64);
        v["kvm"]["vcpus"] = serde_json::json!(1);
        let back = PodSpec::from_json(&v.to_string()).expect("v2 parses");
        back.validate().expect("valid");
        assert_eq!(back.resources.vm_memory_mib(), 64);
        assert_eq!(back.resources.vcpus(), 1);
    }

    #[test]
    fn vm_size_comes_from_resources() {
        let mut r = Resources::default();
        assert_eq!(r.vm_memory_mib(), KVM_DEFAULT_MEMORY >> 20);
        assert_eq!(r.vcpus(), 1);
        r.memory = Some(512 << 20);
        r.cpu_millis = Some(1500);
        assert_eq!((r.vm_memory_mib(), r.vcpus()), (512, 2));
    }

    #[test]
    fn overlay_options_are_escaped() {
        assert_eq!(
            overlay_options(&[Path::new("/a,b:c")], Path::new("/u\\v"), Path::new("/w")),
            "lowerdir=/a\\,b\\:c,upperdir=/u\\\\v,workdir=/w"
        );
        let r = Rootfs {
            image: "/img".into(),
            layers: vec!["/p/seed".into()],
        };
        assert_eq!(
            r.overlay_options(Path::new("/u"), Path::new("/w")),
            "lowerdir=/p/seed:/img,upperdir=/u,workdir=/w"
        );
    }

    #[test]
    fn unit_names() {
        for ok in [
            "nginx.service",
            "getty@tty1.service",
            "a-b_c.socket",
            "x\\x2d.service",
        ] {
            assert!(valid_unit_name(ok), "{ok}");
        }
        for bad in [
            "",
            "nginx",
            ".service",
            "@x.service",
            "a/b.service",
            "a b.service",
            "a@b@c.service",
            "../x.service",
        ] {
            assert!(!valid_unit_name(bad), "{bad}");
        }
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02:0a:FF:00:10:01"), Some([2, 10, 255, 0, 16, 1]));
        for bad in [
            "",
            "02:0a",
            "02:0a:ff:00:10:zz",
            "02:0a:ff:00:10:01:02",
            "2:0a:ff:00:10:01",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn error_chains_print_on_one_line() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(ErrorChain(&e).to_string(), "outer: inner");
    }

    #[test]
    fn validate_rejects_bad_values() {
        type Mutation = Box<dyn Fn(&mut PodSpec)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("pod name", Box::new(|s| s.name = "-bad".into())),
            ("uuid", Box::new(|s| s.uuid = "nope".into())),
            ("machine_id", Box::new(|s| s.machine_id = "ABC".into())),
            ("hostname", Box::new(|s| s.hostname = "a_b".into())),
            ("argv", Box::new(|s| s.app.argv.clear())),
            ("KEY=VALUE", Box::new(|s| s.app.env.push("NOEQUALS".into()))),
            ("working directory", Box::new(|s| s.app.cwd = "rel".into())),
            (
                "working directory",
                Box::new(|s| s.app.cwd = "/a/../b".into()),
            ),
            ("rootfs image", Box::new(|s| s.rootfs.image = "rel".into())),
            (
                "volume destination",
                Box::new(|s| s.mounts[0].destination = "/".into()),
            ),
            (
                "volume source",
                Box::new(|s| s.mounts[0].source = "x".into()),
            ),
            ("memory", Box::new(|s| s.resources.memory = Some(0))),
            (
                "capability",
                Box::new(|s| s.security.capabilities.push("CAP_X".into())),
            ),
            (
                "vcpus",
                Box::new(|s| {
                    s.kvm = Some(KvmSettings::default());
                    s.resources.cpu_millis = Some(300_000);
                }),
            ),
            (
                "VM memory",
                Box::new(|s| {
                    s.kvm = Some(KvmSettings::default());
                    s.resources.memory = Some(16 << 20);
                }),
            ),
        ];
        for (needle, mutate) in cases {
            let mut s = sample();
            mutate(&mut s);
            let err = s.validate().expect_err(needle).to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    fn private() -> PrivateNetwork {
        PrivateNetwork {
            address: Ipv4Addr::new(10, 88, 0, 2),
            prefix_len: 16,
            gateway: Ipv4Addr::new(10, 88, 0, 1),
            ifname: "eth0".into(),
            mac: "02:0b:9f:3c:2e:6a".into(),
            bridge: "berth0".into(),
            host_ifname: "bv0b9f3c2e6a1d".into(),
            nft_table: "berth".into(),
            dns: vec![Ipv4Addr::new(10, 255, 255, 53)],
            ports: vec![PortMapping {
                host_port: 18080,
                pod_port: 80,
                protocol: Protocol::Tcp,
            }],
        }
    }

    #[test]
    fn private_network_roundtrip_and_rules() {
        let mut s = sample();
        s.network = Network {
            mode: NetworkMode::Private,
            ports: Vec::new(),
            private: Some(private()),
        };
        let back = PodSpec::from_json(&s.to_json()).expect("parse");
        assert_eq!(back, s);
        back.validate().expect("valid");
        assert_eq!(s.network.address(), Some(Ipv4Addr::new(10, 88, 0, 2)));
        // A version 1 file (no private network) is still read.
        let mut v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        v["version"] = serde_json::json!(1);
        PodSpec::from_json(&v.to_string())
            .expect("v1")
            .validate()
            .expect("v1 valid");

        type Mutation = Box<dyn Fn(&mut PrivateNetwork)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("prefix length", Box::new(|p| p.prefix_len = 31)),
            (
                "not a host",
                Box::new(|p| p.address = Ipv4Addr::new(10, 89, 0, 2)),
            ),
            ("not a host", Box::new(|p| p.address = p.gateway)),
            (
                "broadcast",
                Box::new(|p| p.address = Ipv4Addr::new(10, 88, 255, 255)),
            ),
            ("interface name", Box::new(|p| p.bridge = "a/b".into())),
            (
                "interface name",
                Box::new(|p| p.host_ifname = "x".repeat(16)),
            ),
            ("mac", Box::new(|p| p.mac = "02:00".into())),
            (
                "multicast",
                Box::new(|p| p.mac = "03:00:00:00:00:01".into()),
            ),
            ("nft table", Box::new(|p| p.nft_table = "1x".into())),
            ("port 0", Box::new(|p| p.ports[0].pod_port = 0)),
            ("twice", Box::new(|p| p.ports.push(p.ports[0]))),
        ];
        for (needle, mutate) in cases {
            let mut p = private();
            mutate(&mut p);
            s.network.private = Some(p);
            let err = s.validate().expect_err(needle).to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
        s.network.private = None;
        s.validate().expect("private, not leased yet");
        let mut n = sample();
        n.network.private = Some(private());
        assert!(n.validate().is_err(), "settings with mode none");
    }

    #[test]
    fn state_root_of_a_pod() {
        assert_eq!(
            PodDir::new("/var/lib/berth/pods/web").state_root(),
            PathBuf::from("/var/lib/berth")
        );
    }

    #[test]
    fn names() {
        assert!(valid_pod_name("a"));
        assert!(valid_pod_name("web_1.x-y"));
        assert!(!valid_pod_name(""));
        assert!(!valid_pod_name(".hidden"));
        assert!(!valid_pod_name("a/b"));
        assert!(!valid_pod_name(&"a".repeat(64)));
        assert!(valid_hostname("pod-1.example"));
        assert!(!valid_hostname("pod-"));
        assert!(!valid_hostname("a..b"));
    }

    #[test]
    fn effective_env_defaults_and_overrides() {
        let mut s = sample();
        s.app.env = vec!["PATH=/x".into(), "A=1".into(), "A=2".into()];
        let env = s.effective_env();
        assert!(env.contains(&"PATH=/x".to_string()));
        assert!(!env.iter().any(|e| e.starts_with("PATH=/usr")));
        assert!(env.contains(&"HOME=/root".to_string()));
        assert!(env.contains(&"HOSTNAME=web-1".to_string()));
        assert!(env.contains(&"container=berth".to_string()));
        assert_eq!(env.iter().filter(|e| e.starts_with("A=")).count(), 1);
        assert_eq!(env.last().map(String::as_str), Some("A=2"));
    }
}

/// The contract between the kvm stage1's VMM and guest-init (PID 1 in the VM).
pub mod kvm {
    /// I/O port guest-init writes (any byte) as its very first action: the VMM
    /// timestamps the first write, giving boot-to-init time (the same idea as
    /// Firecracker's boot-timer device).
    pub const BOOT_MARK_PORT: u16 = 0x0ef0;
    /// I/O port guest-init writes the app's exit status to (one byte, 0..=255,
    /// 128+N for a signal) just before powering off. The VMM's last value wins;
    /// a VM that powers off without writing here ended abnormally.
    pub const STATUS_PORT: u16 = 0x0ef1;
    /// Where the initramfs built by stage1-kvm holds the pod spec.
    pub const INITRAMFS_SPEC_PATH: &str = "/berth/pod.json";
    /// Where the initramfs of a service pod holds fresh random bytes from
    /// the host, which guest-init credits to the guest kernel's random
    /// pool: a microVM has no entropy source of its own (no RNG device; on
    /// PVM hosts even RDRAND is hidden), and systemd's blocking getrandom()
    /// calls (each unit's invocation ID) would wait minutes for the
    /// kernel's jitter entropy otherwise.
    pub const INITRAMFS_RANDOM_SEED_PATH: &str = "/berth/random-seed";
    /// Bytes in [`INITRAMFS_RANDOM_SEED_PATH`].
    pub const RANDOM_SEED_LEN: usize = 64;
    /// Kernel command-line parameter (`NAME=1`, which the kernel hands to
    /// init as an environment variable) stage1-kvm adds for a service pod
    /// on a host whose KVM emulates guest kernel code (PVM): there, starting
    /// a unit takes minutes, past systemd's default 90 s start timeout, so
    /// guest-init gives systemd longer default timeouts.
    pub const SLOW_HOST_PARAM: &str = "berth_slow_host";
    /// What `stop` waits at least for a service pod's systemd to halt on
    /// such a host: the stop timeout guest-init gives the guest's units
    /// there (`systemd.default_timeout_stop_sec=600`), since halting takes
    /// minutes of emulated guest-kernel work. On hardware KVM a halt takes
    /// seconds and the caller's timeout stands.
    pub const SLOW_HOST_STOP_SECS: u64 = 600;
    /// Kernel command-line parameter enabling the guest-kernel workaround for
    /// PVM's mis-delivered 64-bit `syscall` (see kernel-config/patches/). The
    /// VMM adds it only when it detects PVM.
    pub const PVM_SYSCALL_FIX_PARAM: &str = "pvm_syscall_fix=1";
    /// Exit status guest-init reports when it failed itself (not the app).
    pub const GUEST_INIT_FAILED: u8 = 125;
    /// virtio-fs tag of the pod's root filesystem.
    pub const ROOT_FS_TAG: &str = "rootfs";

    /// virtio-fs tag of the pod's `index`-th volume (`spec.mounts[index]`).
    pub fn volume_tag(index: usize) -> String {
        format!("vol{index}")
    }
}
