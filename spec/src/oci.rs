//! What an OCI runtime front-end (`berth-oci`, driven by podman or
//! containerd) asks of a stage1 beyond an ordinary pod: [`OciSettings`], the
//! optional `oci` section of `pod.json`.
//!
//! The main difference is the *hand-off* (runc's `create` / `start`): the
//! stage1 sets the pod up, reports, and leaves. The pod's leader (ns: the
//! pod's init; kvm: the stage1 process itself) is reparented to the
//! caller's shim, which waits for it: it exits with the app's status. The
//! app starts only once `berth-oci start` opens [`OciSettings::start_fifo`]
//! for reading (the leader blocks opening it for writing, as runc's
//! `exec.fifo`). Cleanup of what outlives the leader (its cgroup) is the
//! front-end's `delete` (the stage1's `gc` verb).
//!
//! Everything here is checked by [`OciSettings::validate`] (called from
//! [`crate::PodSpec::validate`]).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The `oci` section of `pod.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciSettings {
    /// The container id (for hooks' state).
    pub id: String,
    /// The bundle directory (for hooks' state).
    pub bundle: PathBuf,
    /// The config's annotations (for hooks' state).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The FIFO whose opening by `start` releases the app.
    pub start_fifo: PathBuf,
    /// `--console-socket`: where the pty master goes (`process.terminal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_socket: Option<PathBuf>,
    /// Namespaces the pod joins instead of creating (`linux.namespaces[].path`),
    /// and which of the optional ones it creates.
    #[serde(default)]
    pub namespaces: Namespaces,
    /// Mounts beyond the ones berth makes itself (`/proc`, `/dev`,
    /// `/dev/pts`, `/dev/shm`, `/dev/mqueue`, `/sys`), in the config's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<OciMount>,
    /// `process.rlimits`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<Rlimit>,
    /// `process.user.additionalGids`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_gids: Vec<u32>,
    /// `process.user.umask`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub umask: Option<u32>,
    /// `process.oomScoreAdj`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i32>,
    /// `linux.sysctl` (namespaced sysctls only: `kernel.*` IPC keys, `net.*`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctl: BTreeMap<String, String>,
    /// Hooks the stage1 runs (`prestart` and `createRuntime` in the
    /// runtime's namespaces, `createContainer` in the pod's mount
    /// namespace, `startContainer` in the pod); `poststart` and `poststop`
    /// are the front-end's.
    #[serde(default, skip_serializing_if = "StageHooks::is_empty")]
    pub hooks: StageHooks,
    /// The image (`root.path`) is the pod's root itself, bound in place:
    /// writes land in the bundle's own files (`root.readonly` false, as
    /// runc) or are refused (`readonly` true). Never an overlay: the
    /// callers' rootfs is usually an overlayfs already (podman's, a
    /// containerd snapshot), which cannot be an overlay's upper layer.
    #[serde(default)]
    pub readonly_root: bool,
    /// `linux.seccomp`, replacing berth's filter (`None`: no filter, as
    /// with runc when the config has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<SeccompRules>,
    /// `linux.maskedPaths`, replacing berth's list.
    #[serde(default)]
    pub masked_paths: Vec<String>,
    /// `linux.readonlyPaths`, replacing berth's list.
    #[serde(default)]
    pub readonly_paths: Vec<String>,
    /// kvm: the network namespace (made by the caller: CNI, netavark) whose
    /// interface is bridged into the VM, and what the guest's interface
    /// gets. Filled in by stage1-kvm, in the guest's copy of the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_net: Option<GuestNet>,
}

/// `linux.namespaces`, as berth can honour it: the pod always has its own
/// mount and PID namespace; network, IPC and UTS are new ones, the host's
/// (absent from the config) or joined (`path`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Namespaces {
    #[serde(default)]
    pub net: NsChoice,
    #[serde(default)]
    pub ipc: NsChoice,
    #[serde(default)]
    pub uts: NsChoice,
    /// A cgroup namespace (berth's default: yes).
    #[serde(default = "yes")]
    pub cgroup: bool,
}

fn yes() -> bool {
    true
}

impl Default for Namespaces {
    fn default() -> Namespaces {
        Namespaces {
            net: NsChoice::New,
            ipc: NsChoice::New,
            uts: NsChoice::New,
            cgroup: true,
        }
    }
}

/// One namespace of [`Namespaces`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NsChoice {
    /// A new namespace.
    #[default]
    New,
    /// The host's (stage1's).
    Host,
    /// Join the namespace at this path (`/proc/PID/ns/net`, `/run/netns/x`).
    Join(PathBuf),
}

/// One OCI mount berth applies itself, after its own and before the
/// pivot into the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciMount {
    /// Absolute path in the pod.
    pub destination: String,
    /// `bind`, `tmpfs`, `proc`, `sysfs`, `devpts`, `mqueue`, `cgroup`...
    pub kind: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub options: Vec<String>,
}

/// Mount types berth applies from an OCI config (`bind` includes `rbind`).
pub const MOUNT_KINDS: &[&str] = &[
    "bind", "tmpfs", "proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2",
];

/// One `process.rlimits` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimit {
    /// `RLIMIT_*` resource number (Linux).
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// The `RLIMIT_` names of the OCI config, by resource number.
pub const RLIMIT_NAMES: &[&str] = &[
    "RLIMIT_CPU",
    "RLIMIT_FSIZE",
    "RLIMIT_DATA",
    "RLIMIT_STACK",
    "RLIMIT_CORE",
    "RLIMIT_RSS",
    "RLIMIT_NPROC",
    "RLIMIT_NOFILE",
    "RLIMIT_MEMLOCK",
    "RLIMIT_AS",
    "RLIMIT_LOCKS",
    "RLIMIT_SIGPENDING",
    "RLIMIT_MSGQUEUE",
    "RLIMIT_NICE",
    "RLIMIT_RTPRIO",
    "RLIMIT_RTTIME",
];

/// One hook: an executable run with the container's state on stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    pub path: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u32>,
}

/// The hooks run by the stage1, in the runtime-spec's order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageHooks {
    /// `prestart` (deprecated) then `createRuntime`: in the runtime's
    /// namespaces, once the pod's namespaces exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub create_runtime: Vec<Hook>,
    /// `createContainer`: in the pod's mount namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub create_container: Vec<Hook>,
    /// `startContainer`: in the pod, just before the app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start_container: Vec<Hook>,
}

impl StageHooks {
    pub fn is_empty(&self) -> bool {
        self.create_runtime.is_empty()
            && self.create_container.is_empty()
            && self.start_container.is_empty()
    }
}

/// kvm: the guest's interface, copied from the caller's network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestNet {
    /// Name in the guest (the netns interface's, `eth0`).
    pub ifname: String,
    pub address: std::net::Ipv4Addr,
    pub prefix_len: u8,
    /// Default route, if the netns has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<std::net::Ipv4Addr>,
    pub mac: String,
}

/// A seccomp profile given by the caller (the runtime-spec's
/// `linux.seccomp`), compiled with seccompiler by each stage1
/// (`confine::custom_filters`). Syscall names the kernel does not know are
/// skipped, as libseccomp does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeccompRules {
    pub default_action: SeccompAction,
    /// errno of a default `errno` action (EPERM when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno: Option<u32>,
    #[serde(default)]
    pub syscalls: Vec<SyscallRule>,
}

/// The actions berth can compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompAction {
    Allow,
    Errno,
    KillThread,
    KillProcess,
    Trap,
    Log,
}

/// Syscalls sharing an action and argument conditions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyscallRule {
    pub names: Vec<String>,
    pub action: SeccompAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<u32>,
    /// All must hold (AND).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<SeccompArg>,
}

/// One argument condition (`SCMP_CMP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeccompArg {
    pub index: u8,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: SeccompOp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompOp {
    Ne,
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
    MaskedEq,
}

fn abs_clean(p: &str) -> bool {
    p.starts_with('/') && !p.contains('\0') && p.split('/').all(|c| c != ".." && c != ".")
}

impl OciSettings {
    /// The semantic rules (paths absolute, known mount kinds and rlimits).
    pub fn validate(&self) -> Result<(), String> {
        if !self.start_fifo.is_absolute() {
            return Err(format!(
                "oci start fifo {} is not an absolute path",
                self.start_fifo.display()
            ));
        }
        for (what, ns) in [
            ("net", &self.namespaces.net),
            ("ipc", &self.namespaces.ipc),
            ("uts", &self.namespaces.uts),
        ] {
            if let NsChoice::Join(p) = ns {
                if !p.is_absolute() {
                    return Err(format!(
                        "{what} namespace path {} is not absolute",
                        p.display()
                    ));
                }
            }
        }
        for m in &self.mounts {
            if !abs_clean(&m.destination) {
                return Err(format!(
                    "mount destination {:?} is not an absolute path",
                    m.destination
                ));
            }
            if !MOUNT_KINDS.contains(&m.kind.as_str()) {
                return Err(format!(
                    "mount type {:?} at {} is not supported",
                    m.kind, m.destination
                ));
            }
            if m.kind == "bind" && !m.source.starts_with('/') {
                return Err(format!(
                    "bind mount source {:?} is not an absolute path",
                    m.source
                ));
            }
        }
        for p in self.masked_paths.iter().chain(&self.readonly_paths) {
            if !abs_clean(p) {
                return Err(format!("masked or read-only path {p:?} is not absolute"));
            }
        }
        for r in &self.rlimits {
            if r.resource as usize >= RLIMIT_NAMES.len() {
                return Err(format!("rlimit resource {} is unknown", r.resource));
            }
            if r.soft > r.hard {
                return Err(format!(
                    "rlimit {}: soft limit {} exceeds the hard limit {}",
                    RLIMIT_NAMES[r.resource as usize], r.soft, r.hard
                ));
            }
        }
        if self.umask.is_some_and(|m| m > 0o777) {
            return Err("umask is out of range 0..=0777".into());
        }
        if let Some(adj) = self.oom_score_adj {
            if !(-1000..=1000).contains(&adj) {
                return Err(format!("oomScoreAdj {adj} is out of range -1000..=1000"));
            }
        }
        for k in self.sysctl.keys() {
            if k.is_empty() || k.contains('/') || k.contains("..") || k.contains('\0') {
                return Err(format!("sysctl {k:?} is not valid"));
            }
        }
        for h in self
            .hooks
            .create_runtime
            .iter()
            .chain(&self.hooks.create_container)
            .chain(&self.hooks.start_container)
        {
            if !h.path.is_absolute() {
                return Err(format!("hook path {} is not absolute", h.path.display()));
            }
        }
        if let Some(g) = &self.guest_net {
            if !(1..=32).contains(&g.prefix_len) || crate::parse_mac(&g.mac).is_none() {
                return Err(format!("guest network {g:?} is not valid"));
            }
            if !crate::valid_ifname(&g.ifname) {
                return Err(format!("interface name {:?} is not valid", g.ifname));
            }
        }
        Ok(())
    }

    /// The OCI state JSON (`ociVersion`, `id`, `status`, `pid`, `bundle`,
    /// `annotations`) a hook reads on its stdin.
    pub fn state_json(&self, status: &str, pid: i32) -> String {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "id": self.id,
            "status": status,
            "pid": pid,
            "bundle": self.bundle,
            "annotations": self.annotations,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> OciSettings {
        OciSettings {
            id: "c1".into(),
            bundle: "/b".into(),
            start_fifo: "/run/berth-oci/c1/start.fifo".into(),
            mounts: vec![OciMount {
                destination: "/tmp".into(),
                kind: "tmpfs".into(),
                source: "tmpfs".into(),
                options: vec!["nosuid".into()],
            }],
            rlimits: vec![Rlimit {
                resource: 7,
                soft: 1024,
                hard: 1024,
            }],
            ..OciSettings::default()
        }
    }

    #[test]
    fn validates_and_round_trips() {
        let s = sample();
        s.validate().unwrap();
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<OciSettings>(&j).unwrap(), s);
        let st: serde_json::Value = serde_json::from_str(&s.state_json("created", 42)).unwrap();
        assert_eq!(st["pid"], 42);
        assert_eq!(st["status"], "created");
    }

    #[test]
    fn rejects_bad_values() {
        type M = Box<dyn Fn(&mut OciSettings)>;
        let cases: Vec<(&str, M)> = vec![
            ("fifo", Box::new(|s| s.start_fifo = "rel".into())),
            ("mount type", Box::new(|s| s.mounts[0].kind = "nfs".into())),
            (
                "destination",
                Box::new(|s| s.mounts[0].destination = "/a/../b".into()),
            ),
            ("soft limit", Box::new(|s| s.rlimits[0].soft = 2048)),
            ("unknown", Box::new(|s| s.rlimits[0].resource = 99)),
            ("oomScoreAdj", Box::new(|s| s.oom_score_adj = Some(5000))),
            (
                "namespace path",
                Box::new(|s| s.namespaces.net = NsChoice::Join("x".into())),
            ),
        ];
        for (needle, m) in cases {
            let mut s = sample();
            m(&mut s);
            let e = s.validate().expect_err(needle);
            assert!(e.contains(needle), "{e} should mention {needle}");
        }
    }
}
