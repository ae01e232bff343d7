//! What a VM is made of ([`VmConfig`] and its devices' configurations) and
//! the checks made before anything is created.

use std::path::PathBuf;

use super::error::BuildError;
use crate::devices::serial::SerialOut;
use crate::devices::virtio::fs::FsError;
use crate::devices::virtio::net::NetError;
use crate::seccomp::SeccompLevel;

/// A virtio-blk disk.
#[derive(Debug, Clone)]
pub struct BlockConfig {
    /// Raw image file.
    pub path: PathBuf,
    /// Attach read-only (VIRTIO_BLK_F_RO; writes fail).
    pub read_only: bool,
}

/// A virtio-fs share: host directory `path`, mounted in the guest with
/// `mount -t virtiofs TAG DIR`.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Mount tag: 1 to 36 bytes, no control characters, unique per VM.
    pub tag: String,
    /// Host directory to share (symlinks in the path are resolved once, at boot).
    pub path: PathBuf,
    /// Refuse every mutating request with EROFS, host side.
    pub read_only: bool,
    /// Who may change the share while the guest runs: how much the guest
    /// may cache (see [`crate::devices::virtio::fs::ShareCache`]).
    pub cache: crate::devices::virtio::fs::ShareCache,
}

impl FsConfig {
    /// Checks the tag and that `path` is a directory.
    pub fn validate(&self) -> Result<(), FsError> {
        crate::devices::virtio::fs::tag_bytes(&self.tag)?;
        crate::devices::virtio::fs::resolve_share(&self.path)?;
        Ok(())
    }
}

/// A virtio-vsock device whose host side is a unix socket (Firecracker's
/// hybrid scheme; protocol in [`crate::devices::virtio::vsock`]).
#[derive(Debug, Clone)]
pub struct VsockConfig {
    /// The guest's CID, 3..=4294967294 (0-2 and u32::MAX are reserved).
    pub guest_cid: u32,
    /// Unix socket the VMM listens on for host → guest connections
    /// (`CONNECT <port>\n`); guest → host connections to port P go to
    /// `<uds_path>_<P>`. A stale socket here is replaced; the VMM removes it
    /// when the VM is dropped.
    pub uds_path: PathBuf,
}

/// A virtio-net interface backed by a tap device.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Host tap interface name (1–15 bytes of `[A-Za-z0-9_.-]`). Without
    /// `fd`, an existing tap is attached to and a missing one is created
    /// (and vanishes with the VM).
    pub tap: String,
    /// An already-open tap (`/dev/net/tun` after TUNSETIFF, e.g. created
    /// and put on a bridge by berth's host networking); used instead of
    /// opening `tap` by name.
    pub fd: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// The guest's MAC address (unicast, not zero); see [`crate::mac_from_id`].
    pub mac: [u8; 6],
}

impl NetConfig {
    /// Checks the tap name and the MAC; the error names the bad value.
    pub fn validate(&self) -> Result<(), NetError> {
        crate::devices::virtio::net::validate_tap_name(&self.tap).map_err(NetError::Tap)?;
        crate::devices::virtio::net::validate_mac(&self.mac)
    }
}

/// Initramfs source.
#[derive(Debug, Clone)]
pub enum Initramfs {
    /// In-memory newc cpio archive.
    Bytes(Vec<u8>),
    /// A cpio archive file.
    Path(PathBuf),
}

/// Everything needed to boot a VM.
pub struct VmConfig {
    /// Uncompressed ELF `vmlinux`.
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initramfs: Option<Initramfs>,
    /// Appended to the command line after berth's own parameters.
    pub extra_cmdline: String,
    /// Guest RAM in MiB.
    pub mem_mib: u32,
    /// Number of vCPUs (1..=254).
    pub vcpus: u8,
    /// virtio-blk disks, in order (`/dev/vda`, `/dev/vdb`, …).
    pub block: Vec<BlockConfig>,
    /// virtio-fs shares, placed after the disks.
    pub fs: Vec<FsConfig>,
    /// virtio-vsock device, placed after the disks.
    pub vsock: Option<VsockConfig>,
    /// virtio-net interfaces, in order (`eth0`, `eth1`, …), placed after the disks.
    pub net: Vec<NetConfig>,
    /// Where guest serial output goes.
    pub serial_out: SerialOut,
    /// Override PVM detection (None = detect).
    pub pvm: Option<bool>,
    /// /dev/kvm, opened by the caller (a jailed VMM has no device nodes);
    /// `None`: opened at boot.
    pub kvm_fd: Option<std::os::fd::OwnedFd>,
    /// Seccomp filters on the vCPU and event-loop threads ([`crate::seccomp`]).
    pub seccomp: SeccompLevel,
    /// A virtio-balloon device for free page reporting (placed last): the
    /// guest returns the memory it frees to the host
    /// ([`crate::devices::virtio::balloon`]; needs a guest kernel with
    /// CONFIG_VIRTIO_BALLOON and CONFIG_PAGE_REPORTING, others ignore it).
    pub free_page_reporting: bool,
}

impl VmConfig {
    /// Checks the whole configuration before anything is created: vCPU
    /// count, memory size, shares, network interfaces, vsock CID.
    pub fn validate(&self) -> Result<(), BuildError> {
        if self.vcpus == 0 || self.vcpus >= 254 {
            return Err(BuildError::InvalidConfig("vcpus must be 1..=253"));
        }
        if self.mem_mib < 32 {
            return Err(BuildError::InvalidConfig("mem_mib must be at least 32"));
        }
        validate_fs(&self.fs)?;
        for net in &self.net {
            net.validate().map_err(BuildError::InvalidNet)?;
        }
        if let Some(v) = &self.vsock {
            if v.guest_cid < 3 || v.guest_cid == u32::MAX {
                return Err(BuildError::InvalidVsockCid(v.guest_cid));
            }
        }
        Ok(())
    }

    /// The capabilities the VMM process needs for this config's virtio-fs
    /// shares (see [`crate::devices::virtio::fs::required_capabilities`]);
    /// empty without shares.
    pub fn fs_capabilities(&self) -> Vec<caps::Capability> {
        crate::devices::virtio::fs::required_capabilities(self.fs.iter().map(|s| s.read_only))
    }

    /// A config with defaults: 256 MiB, 1 vCPU, no disks, no shares, console
    /// to stdout, seccomp enforced, free page reporting on.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initramfs: None,
            extra_cmdline: String::new(),
            mem_mib: 256,
            vcpus: 1,
            block: Vec::new(),
            fs: Vec::new(),
            vsock: None,
            net: Vec::new(),
            serial_out: Box::new(std::io::stdout()),
            pvm: None,
            kvm_fd: None,
            seccomp: SeccompLevel::Enforce,
            free_page_reporting: true,
        }
    }
}

/// Checks every share (tag, directory) and that tags are unique.
pub fn validate_fs(shares: &[FsConfig]) -> Result<(), BuildError> {
    for (i, share) in shares.iter().enumerate() {
        share
            .validate()
            .map_err(|e| BuildError::Fs(share.tag.clone(), e))?;
        if shares[..i].iter().any(|s| s.tag == share.tag) {
            return Err(BuildError::DuplicateFsTag(share.tag.clone()));
        }
    }
    Ok(())
}
