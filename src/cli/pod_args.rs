//! The options shared by every verb that makes a pod (`run`, `create`):
//! they mean the same everywhere.

use clap::Args;
use std::path::PathBuf;

#[derive(Args, Clone, Debug, Default)]
pub struct PodArgs {
    /// Isolation: ns (namespaces), kvm (microVM), or the path of a stage1 executable.
    #[arg(long, default_value = "ns")]
    pub stage1: String,
    /// Root filesystem image (a directory; never modified).
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Pod name (default: generated).
    #[arg(long)]
    pub name: Option<String>,
    /// Hostname inside the pod (default: the pod name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to pass the current value).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the pod.
    #[arg(short = 'w', long = "workdir", value_name = "DIR", default_value = "/")]
    pub workdir: String,
    /// Bind a host path into the pod.
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:ro]")]
    pub volume: Vec<String>,
    /// Network: private (own address on berth's bridge, NAT), none (loopback
    /// only) or host (share the host's network; ns only).
    #[arg(long, default_value = "private", value_name = "private|none|host")]
    pub net: String,
    /// Publish a pod port on the host (--net private): HOSTPORT:PODPORT[/tcp|/udp].
    #[arg(short = 'p', long = "port", value_name = "HOSTPORT:PODPORT[/PROTO]")]
    pub port: Vec<String>,
    /// Add a capability to the default set (e.g. NET_ADMIN, or ALL).
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a capability from the default set (e.g. SETUID, or ALL).
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Give the pod a host device: HOSTPATH[:PODPATH][:rwm] (ns only).
    #[arg(long = "device", value_name = "HOSTPATH[:PODPATH][:PERMS]")]
    pub device: Vec<String>,
    /// Memory limit, e.g. 512m (kvm: the VM's memory, default 256m).
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// CPU limit, e.g. 1.5 (kvm: also the vCPUs, rounded up; default 1).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub cpus: Option<String>,
    /// Maximum number of processes in the pod.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub pids: Option<String>,
    /// A user namespace: root in the pod is host UID (COUNT ids mapped).
    #[arg(
        long = "user-remap",
        value_name = "UID:GID:COUNT",
        conflicts_with = "private_users"
    )]
    pub user_remap: Option<String>,
    /// A user namespace with a 65536-id range berth picks for this pod.
    #[arg(long = "private-users")]
    pub private_users: bool,
    /// Limit what the pod may write to its root filesystem, e.g. 1g.
    #[arg(long = "disk", value_name = "SIZE", allow_hyphen_values = true)]
    pub disk: Option<String>,
}
