//! `--security-label`: the SELinux context or AppArmor profile a pod's
//! processes run under, shared by both stage1s.
//!
//! Syntax (as virt-sandbox-service's `-l`):
//! - a full SELinux context, `user:role:type[:level]`, e.g.
//!   `system_u:system_r:svirt_lxc_net_t:s0:c1,c2`;
//! - an SELinux MLS/MCS level or range alone, e.g. `s0:c1,c2` or
//!   `s0-s0:c0.c1023`, combined with the host policy's default container
//!   process type (`lxc_contexts`' `process`, as libvirt-sandbox does;
//!   `system_u:system_r:svirt_lxc_net_t` without one);
//! - `apparmor=PROFILE`.
//!
//! How it is applied, in each process just before its execve (the app,
//! a service pod's systemd, every `berth exec` process):
//! - SELinux: what libselinux's `setexeccon(3)` does, one write(2) of the
//!   context and its NUL to `/proc/thread-self/attr/exec`; the pod's
//!   tmpfs/devpts mounts and its overlay root get the matching file
//!   context (`lxc_contexts`' `file` type with the label's level) with the
//!   `context=` mount option;
//! - AppArmor: what libapparmor's `aa_change_onexec(3)` does, one write of
//!   `exec PROFILE` to `/proc/thread-self/attr/apparmor/exec` (the legacy
//!   `/proc/thread-self/attr/exec` on kernels before 5.1).
//!
//! With no_new_privs (the default for commands) the kernel only lets the
//! transition happen when the policy allows it (SELinux: `nnp_transition`;
//! AppArmor: a profile that confines at least as much) — as for runc.
//! On a host where the label's LSM is not active, [`check_active`] fails
//! with one line naming the label and the LSM, before anything is made.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("invalid --security-label {value:?}: {reason}")]
    Invalid { value: String, reason: String },
    #[error("--security-label {label:?}: {lsm} is not active on this host{detail}")]
    NotActive {
        label: String,
        lsm: &'static str,
        detail: String,
    },
    #[error("cannot write the {lsm} label to {path}")]
    Write {
        lsm: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A pod's security label ([`crate::Security::label`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SecurityLabel {
    /// A full SELinux context, `user:role:type[:level]`.
    SelinuxContext(String),
    /// Only an SELinux level or range (`s0:c1,c2`), combined with the
    /// policy's default container type.
    SelinuxLevel(String),
    /// An AppArmor profile.
    Apparmor(String),
}

/// The Linux security module a label belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lsm {
    Selinux,
    Apparmor,
}

impl Lsm {
    pub fn name(self) -> &'static str {
        match self {
            Lsm::Selinux => "SELinux",
            Lsm::Apparmor => "AppArmor",
        }
    }

    /// Its name in `/sys/kernel/security/lsm`.
    fn id(self) -> &'static str {
        match self {
            Lsm::Selinux => "selinux",
            Lsm::Apparmor => "apparmor",
        }
    }
}

impl std::fmt::Display for SecurityLabel {
    /// As the user wrote it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecurityLabel::SelinuxContext(c) => f.write_str(c),
            SecurityLabel::SelinuxLevel(l) => f.write_str(l),
            SecurityLabel::Apparmor(p) => write!(f, "apparmor={p}"),
        }
    }
}

/// Longest label accepted (the kernel's attr write limit is a page).
const MAX_LEN: usize = 1024;

impl SecurityLabel {
    /// Parse a `--security-label` value; the error names it.
    pub fn parse(value: &str) -> Result<SecurityLabel, LabelError> {
        let bad = |reason: &str| LabelError::Invalid {
            value: value.to_string(),
            reason: reason.to_string(),
        };
        if value.len() > MAX_LEN {
            return Err(bad("longer than 1024 bytes"));
        }
        if let Some(profile) = value.strip_prefix("apparmor=") {
            if profile.is_empty() {
                return Err(bad("apparmor= needs a profile name"));
            }
            if !profile.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad(
                    "an AppArmor profile name is printable ASCII without spaces",
                ));
            }
            return Ok(SecurityLabel::Apparmor(profile.to_string()));
        }
        const SYNTAX: &str = "expected an SELinux context (user:role:type[:level]), \
                              an SELinux level (s0:c1,c2) or apparmor=PROFILE";
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(SYNTAX));
        }
        if is_mls_range(value) {
            return Ok(SecurityLabel::SelinuxLevel(value.to_string()));
        }
        let fields: Vec<&str> = value.splitn(4, ':').collect();
        if fields.len() < 3 {
            return Err(bad(SYNTAX));
        }
        for (what, f) in ["user", "role", "type"].iter().zip(&fields[..3]) {
            if !is_identifier(f) {
                return Err(bad(&format!(
                    "the SELinux {what} {f:?} is not an identifier ([A-Za-z0-9_.-])"
                )));
            }
        }
        if let Some(level) = fields.get(3) {
            if !is_mls_range(level) {
                return Err(bad(&format!(
                    "the SELinux level {level:?} is not a level or range (s0, s0:c1,c2, s0-s0:c0.c1023)"
                )));
            }
        }
        Ok(SecurityLabel::SelinuxContext(value.to_string()))
    }

    pub fn lsm(&self) -> Lsm {
        match self {
            SecurityLabel::SelinuxContext(_) | SecurityLabel::SelinuxLevel(_) => Lsm::Selinux,
            SecurityLabel::Apparmor(_) => Lsm::Apparmor,
        }
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// `s0`, `s0:c1,c2`, `s0:c0.c255,c300`, `s0-s15:c0.c1023`.
fn is_mls_range(s: &str) -> bool {
    let mut parts = s.splitn(2, '-');
    let low = parts.next().unwrap_or("");
    is_mls_level(low) && parts.next().is_none_or(is_mls_level)
}

fn is_mls_level(s: &str) -> bool {
    let (sens, cats) = match s.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let number = |p: &str, prefix: char| {
        p.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.len() <= 4 && n.bytes().all(|b| b.is_ascii_digit()))
    };
    number(sens, 's')
        && cats.is_none_or(|c| {
            c.split(',').all(|item| match item.split_once('.') {
                Some((a, b)) => number(a, 'c') && number(b, 'c'),
                None => number(item, 'c'),
            })
        })
}

/// Is the label's LSM active on this host? `root` is `/` (a test's
/// stand-in otherwise). `/sys/kernel/security/lsm` decides when securityfs
/// is mounted; the LSM's own file system must be there as well
/// (`/sys/fs/selinux`; `/sys/kernel/security/apparmor`, or AppArmor's
/// module parameter without securityfs).
pub fn check_active(label: &SecurityLabel, root: &Path) -> Result<(), LabelError> {
    let lsm = label.lsm();
    let list = std::fs::read_to_string(root.join("sys/kernel/security/lsm")).ok();
    let listed = list
        .as_deref()
        .map(|l| l.trim().split(',').any(|n| n == lsm.id()));
    let own_fs = match lsm {
        Lsm::Selinux => root.join("sys/fs/selinux/enforce").exists(),
        Lsm::Apparmor => {
            root.join("sys/kernel/security/apparmor").is_dir()
                || (list.is_none()
                    && std::fs::read_to_string(root.join("sys/module/apparmor/parameters/enabled"))
                        .is_ok_and(|s| s.trim() == "Y"))
        }
    };
    if listed != Some(false) && own_fs {
        return Ok(());
    }
    let detail = match &list {
        Some(l) => format!(" (active LSMs: {})", l.trim()),
        None => String::new(),
    };
    Err(LabelError::NotActive {
        label: label.to_string(),
        lsm: lsm.name(),
        detail,
    })
}

/// The SELinux contexts of a pod: its processes' and its mounts' files'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelinuxContexts {
    pub process: String,
    pub file: String,
}

/// Without an `lxc_contexts` file: libvirt-sandbox's types.
const DEFAULT_PROCESS: &str = "system_u:system_r:svirt_lxc_net_t:s0";
const DEFAULT_FILE: &str = "system_u:object_r:svirt_sandbox_file_t:s0";

/// The policy's default container contexts, from
/// `/etc/selinux/config`'s `SELINUXTYPE` (default `targeted`) and that
/// policy's `contexts/lxc_contexts` (`process = "…"`, `file = "…"`).
fn policy_defaults(root: &Path) -> (String, String) {
    let policy = std::fs::read_to_string(root.join("etc/selinux/config"))
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.trim()
                    .strip_prefix("SELINUXTYPE=")
                    .map(|v| v.trim().to_string())
            })
        })
        .filter(|p| is_identifier(p))
        .unwrap_or_else(|| "targeted".into());
    let lxc = std::fs::read_to_string(
        root.join("etc/selinux")
            .join(&policy)
            .join("contexts/lxc_contexts"),
    )
    .unwrap_or_default();
    let key = |k: &str| {
        lxc.lines().find_map(|l| {
            let (name, value) = l.split_once('=')?;
            (name.trim() == k)
                .then(|| value.trim().trim_matches('"').to_string())
                .filter(|v| v.splitn(4, ':').count() >= 3)
        })
    };
    (
        key("process").unwrap_or_else(|| DEFAULT_PROCESS.into()),
        key("file").unwrap_or_else(|| DEFAULT_FILE.into()),
    )
}

/// `user:role:type` of a context.
fn urt(context: &str) -> String {
    context.splitn(4, ':').take(3).collect::<Vec<_>>().join(":")
}

/// The level of a context, if it has one.
fn level(context: &str) -> Option<&str> {
    context.splitn(4, ':').nth(3)
}

impl SecurityLabel {
    /// SELinux: the process and file contexts (None for AppArmor).
    /// `root` is `/`, where the policy's files are.
    pub fn selinux_contexts(&self, root: &Path) -> Option<SelinuxContexts> {
        let (process, file) = policy_defaults(root);
        let with = |c: &str, l: Option<&str>| match l {
            Some(l) => format!("{}:{l}", urt(c)),
            None => urt(c),
        };
        match self {
            SecurityLabel::SelinuxContext(c) => Some(SelinuxContexts {
                process: c.clone(),
                file: with(&file, level(c).or(level(&file))),
            }),
            SecurityLabel::SelinuxLevel(l) => Some(SelinuxContexts {
                process: with(&process, Some(l)),
                file: with(&file, Some(l)),
            }),
            SecurityLabel::Apparmor(_) => None,
        }
    }

    /// Resolve against the host's policy (`root` = `/`): what to write
    /// before exec, and the mount option for the pod's own mounts.
    pub fn prepare(&self, root: &Path) -> PreparedLabel {
        match self {
            SecurityLabel::Apparmor(p) => {
                let own = root.join("proc/thread-self/attr/apparmor/exec");
                let path = if root.join("proc/self/attr/apparmor").is_dir() {
                    own
                } else {
                    root.join("proc/thread-self/attr/exec")
                };
                PreparedLabel {
                    lsm: Lsm::Apparmor,
                    attr: path,
                    bytes: format!("exec {p}").into_bytes(),
                    mount_context: None,
                }
            }
            _ => {
                let c = self
                    .selinux_contexts(root)
                    .unwrap_or_else(|| SelinuxContexts {
                        process: DEFAULT_PROCESS.into(),
                        file: DEFAULT_FILE.into(),
                    });
                let mut bytes = c.process.into_bytes();
                // setexeccon(3) writes the terminating NUL too.
                bytes.push(0);
                PreparedLabel {
                    lsm: Lsm::Selinux,
                    attr: root.join("proc/thread-self/attr/exec"),
                    bytes,
                    mount_context: Some(c.file),
                }
            }
        }
    }
}

impl SecurityLabel {
    /// Resolve for a process that takes the label itself, now, without an
    /// execve (the kvm stage1's VMM, a clone of the stage1): SELinux's
    /// `setcon(3)` (the context and its NUL to
    /// `/proc/thread-self/attr/current`; the policy must allow the
    /// dynamic transition), AppArmor's `aa_change_profile(3)`
    /// (`changeprofile PROFILE` to `attr/apparmor/current`, or the legacy
    /// `attr/current`). Write it while the process is single-threaded.
    pub fn prepare_current(&self, root: &Path) -> PreparedLabel {
        match self {
            SecurityLabel::Apparmor(p) => {
                let path = if root.join("proc/self/attr/apparmor").is_dir() {
                    root.join("proc/thread-self/attr/apparmor/current")
                } else {
                    root.join("proc/thread-self/attr/current")
                };
                PreparedLabel {
                    lsm: Lsm::Apparmor,
                    attr: path,
                    bytes: format!("changeprofile {p}").into_bytes(),
                    mount_context: None,
                }
            }
            _ => {
                let mut p = self.prepare(root);
                p.attr = root.join("proc/thread-self/attr/current");
                p.mount_context = None;
                p
            }
        }
    }
}

/// A label ready to apply: computed on the host before forking, written in
/// the child with [`PreparedLabel::apply`] (syscalls only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedLabel {
    pub lsm: Lsm,
    /// The attr file the calling thread writes (`/proc/thread-self/…`):
    /// the kernel only lets a task set its own exec label.
    pub attr: PathBuf,
    /// Exactly what is written, in one write(2).
    pub bytes: Vec<u8>,
    /// SELinux: the file context of the pod's own mounts.
    pub mount_context: Option<String>,
}

impl PreparedLabel {
    /// Set the label the next execve of the calling thread runs under.
    pub fn apply(&self) -> Result<(), LabelError> {
        self.apply_to(&self.attr)
    }

    /// [`PreparedLabel::apply`] writing to `path` (a test's stand-in).
    pub fn apply_to(&self, path: &Path) -> Result<(), LabelError> {
        use std::os::unix::fs::OpenOptionsExt;
        let err = |source| LabelError::Write {
            lsm: self.lsm.name(),
            path: path.display().to_string(),
            source,
        };
        // No O_CREAT, no O_TRUNC: the file is the kernel's.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
            .map_err(err)?;
        // One write(2), as libselinux and libapparmor do: the kernel takes
        // the whole value from a single write.
        match std::io::Write::write(&mut f, &self.bytes) {
            Ok(n) if n == self.bytes.len() => Ok(()),
            Ok(_) => Err(err(std::io::Error::from(std::io::ErrorKind::WriteZero))),
            Err(e) => Err(err(e)),
        }
    }

    /// The `context=` mount option (quoted: levels hold commas), when the
    /// label gives the pod's mounts a file context.
    pub fn mount_option(&self) -> Option<String> {
        self.mount_context
            .as_ref()
            .map(|c| format!("context=\"{c}\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            SecurityLabel::parse("system_u:system_r:svirt_lxc_net_t:s0:c1,c2").unwrap(),
            SecurityLabel::SelinuxContext("system_u:system_r:svirt_lxc_net_t:s0:c1,c2".into())
        );
        assert_eq!(
            SecurityLabel::parse("user_u:user_r:user_t").unwrap(),
            SecurityLabel::SelinuxContext("user_u:user_r:user_t".into())
        );
        for level in ["s0", "s0:c1,c2", "s0-s0:c0.c1023", "s1:c3.c7,c9"] {
            assert_eq!(
                SecurityLabel::parse(level).unwrap(),
                SecurityLabel::SelinuxLevel(level.into()),
                "{level}"
            );
        }
        assert_eq!(
            SecurityLabel::parse("apparmor=berth-default").unwrap(),
            SecurityLabel::Apparmor("berth-default".into())
        );
        assert_eq!(
            SecurityLabel::parse("apparmor=/usr/bin/foo").unwrap(),
            SecurityLabel::Apparmor("/usr/bin/foo".into())
        );
        let l = SecurityLabel::parse("apparmor=p").unwrap();
        assert_eq!(l.to_string(), "apparmor=p");
        assert_eq!(l.lsm(), Lsm::Apparmor);
        assert_eq!(SecurityLabel::parse("s0").unwrap().lsm(), Lsm::Selinux);
    }

    #[test]
    fn bad_labels_are_named() {
        for bad in [
            "",
            "justaword",
            "a:b",
            "apparmor=",
            "apparmor=has space",
            "apparmor=new\nline",
            "u:r:t:notalevel",
            "u:r:t:s0:x1",
            "u:r:t:s0:c1,",
            "u:r:t:s0-",
            "u:r$:t:s0",
            "s0 :c1",
            "s0:c1\0",
        ] {
            let e = SecurityLabel::parse(bad).expect_err(bad);
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("invalid --security-label {bad:?}: ")),
                "{msg}"
            );
        }
        let long = "s".repeat(2000);
        assert!(SecurityLabel::parse(&long).is_err());
    }

    #[test]
    fn serde_form() {
        let l = SecurityLabel::SelinuxLevel("s0:c1,c2".into());
        let j = serde_json::to_string(&l).unwrap();
        assert_eq!(j, "{\"selinux_level\":\"s0:c1,c2\"}");
        assert_eq!(serde_json::from_str::<SecurityLabel>(&j).unwrap(), l);
        assert_eq!(
            serde_json::to_string(&SecurityLabel::Apparmor("p".into())).unwrap(),
            "{\"apparmor\":\"p\"}"
        );
    }

    fn fake_root() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn lsm_detection() {
        let r = fake_root();
        let aa = SecurityLabel::parse("apparmor=p").unwrap();
        let se = SecurityLabel::parse("s0:c1,c2").unwrap();
        // Nothing at all: neither is active; no LSM list to quote.
        let e = check_active(&aa, r.path()).unwrap_err().to_string();
        assert_eq!(
            e,
            "--security-label \"apparmor=p\": AppArmor is not active on this host"
        );
        let e = check_active(&se, r.path()).unwrap_err().to_string();
        assert_eq!(
            e,
            "--security-label \"s0:c1,c2\": SELinux is not active on this host"
        );
        // securityfs lists the active ones.
        std::fs::create_dir_all(r.path().join("sys/kernel/security")).unwrap();
        std::fs::write(
            r.path().join("sys/kernel/security/lsm"),
            "lockdown,capability,landlock\n",
        )
        .unwrap();
        let e = check_active(&aa, r.path()).unwrap_err().to_string();
        assert!(
            e.ends_with(
                "AppArmor is not active on this host (active LSMs: lockdown,capability,landlock)"
            ),
            "{e}"
        );
        std::fs::write(
            r.path().join("sys/kernel/security/lsm"),
            "lockdown,capability,apparmor\n",
        )
        .unwrap();
        std::fs::create_dir_all(r.path().join("sys/kernel/security/apparmor")).unwrap();
        check_active(&aa, r.path()).unwrap();
        assert!(check_active(&se, r.path()).is_err());
        // SELinux needs its file system mounted as well.
        std::fs::write(
            r.path().join("sys/kernel/security/lsm"),
            "capability,selinux\n",
        )
        .unwrap();
        assert!(check_active(&se, r.path()).is_err());
        std::fs::create_dir_all(r.path().join("sys/fs/selinux")).unwrap();
        std::fs::write(r.path().join("sys/fs/selinux/enforce"), "1").unwrap();
        check_active(&se, r.path()).unwrap();
        assert!(check_active(&aa, r.path()).is_err(), "not in the list");
        // Without securityfs: AppArmor's module parameter.
        let r2 = fake_root();
        std::fs::create_dir_all(r2.path().join("sys/module/apparmor/parameters")).unwrap();
        std::fs::write(
            r2.path().join("sys/module/apparmor/parameters/enabled"),
            "Y\n",
        )
        .unwrap();
        check_active(&aa, r2.path()).unwrap();
    }

    #[test]
    fn selinux_contexts_from_the_policy_or_the_defaults() {
        let r = fake_root();
        let level = SecurityLabel::parse("s0:c1,c2").unwrap();
        assert_eq!(
            level.selinux_contexts(r.path()).unwrap(),
            SelinuxContexts {
                process: "system_u:system_r:svirt_lxc_net_t:s0:c1,c2".into(),
                file: "system_u:object_r:svirt_sandbox_file_t:s0:c1,c2".into(),
            }
        );
        std::fs::create_dir_all(r.path().join("etc/selinux/mls/contexts")).unwrap();
        std::fs::write(
            r.path().join("etc/selinux/config"),
            "# comment\nSELINUX=enforcing\nSELINUXTYPE=mls\n",
        )
        .unwrap();
        std::fs::write(
            r.path().join("etc/selinux/mls/contexts/lxc_contexts"),
            "process = \"system_u:system_r:container_t:s0\"\n\
             content = \"system_u:object_r:virt_var_lib_t:s0\"\n\
             file = \"system_u:object_r:container_file_t:s0\"\n",
        )
        .unwrap();
        assert_eq!(
            level.selinux_contexts(r.path()).unwrap(),
            SelinuxContexts {
                process: "system_u:system_r:container_t:s0:c1,c2".into(),
                file: "system_u:object_r:container_file_t:s0:c1,c2".into(),
            }
        );
        let full = SecurityLabel::parse("system_u:system_r:svirt_lxc_net_t:s0:c5,c6").unwrap();
        assert_eq!(
            full.selinux_contexts(r.path()).unwrap(),
            SelinuxContexts {
                process: "system_u:system_r:svirt_lxc_net_t:s0:c5,c6".into(),
                file: "system_u:object_r:container_file_t:s0:c5,c6".into(),
            }
        );
        let nolevel = SecurityLabel::parse("u:r:t").unwrap();
        assert_eq!(
            nolevel.selinux_contexts(r.path()).unwrap().file,
            "system_u:object_r:container_file_t:s0"
        );
        assert_eq!(
            SecurityLabel::Apparmor("p".into()).selinux_contexts(r.path()),
            None
        );
    }

    #[test]
    fn exact_bytes_written() {
        let r = fake_root();
        // SELinux: the context and its NUL, as setexeccon(3).
        let p = SecurityLabel::parse("s0:c1,c2").unwrap().prepare(r.path());
        assert_eq!(p.attr, r.path().join("proc/thread-self/attr/exec"));
        assert_eq!(p.bytes, b"system_u:system_r:svirt_lxc_net_t:s0:c1,c2\0");
        assert_eq!(
            p.mount_option().unwrap(),
            "context=\"system_u:object_r:svirt_sandbox_file_t:s0:c1,c2\""
        );
        let f = r.path().join("attr-exec");
        std::fs::write(&f, "").unwrap();
        p.apply_to(&f).unwrap();
        assert_eq!(
            std::fs::read(&f).unwrap(),
            b"system_u:system_r:svirt_lxc_net_t:s0:c1,c2\0"
        );
        // AppArmor: "exec PROFILE", no NUL, to apparmor/exec when the
        // kernel has the per-LSM directory.
        let aa = SecurityLabel::parse("apparmor=berth-pod").unwrap();
        let p = aa.prepare(r.path());
        assert_eq!(p.attr, r.path().join("proc/thread-self/attr/exec"));
        std::fs::create_dir_all(r.path().join("proc/self/attr/apparmor")).unwrap();
        let p = aa.prepare(r.path());
        assert_eq!(p.attr, r.path().join("proc/thread-self/attr/apparmor/exec"));
        assert_eq!(p.bytes, b"exec berth-pod");
        assert_eq!(p.mount_option(), None);
        let f2 = r.path().join("aa-exec");
        std::fs::write(&f2, "").unwrap();
        p.apply_to(&f2).unwrap();
        assert_eq!(std::fs::read(&f2).unwrap(), b"exec berth-pod");
        // The attr file is never created, nor followed through a symlink.
        let e = p.apply_to(&r.path().join("missing")).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("cannot write the AppArmor label to "));
        std::os::unix::fs::symlink(&f2, r.path().join("link")).unwrap();
        assert!(p.apply_to(&r.path().join("link")).is_err());
        assert!(!r.path().join("missing").exists());
    }

    #[test]
    fn a_label_taken_now_goes_to_current() {
        let r = fake_root();
        // SELinux: setcon(3), the context and its NUL; no mount context.
        let p = SecurityLabel::parse("s0:c1,c2")
            .unwrap()
            .prepare_current(r.path());
        assert_eq!(p.attr, r.path().join("proc/thread-self/attr/current"));
        assert_eq!(p.bytes, b"system_u:system_r:svirt_lxc_net_t:s0:c1,c2\0");
        assert_eq!(p.mount_option(), None);
        // AppArmor: aa_change_profile(3).
        let aa = SecurityLabel::parse("apparmor=berth-vmm").unwrap();
        let p = aa.prepare_current(r.path());
        assert_eq!(p.attr, r.path().join("proc/thread-self/attr/current"));
        assert_eq!(p.bytes, b"changeprofile berth-vmm");
        std::fs::create_dir_all(r.path().join("proc/self/attr/apparmor")).unwrap();
        let p = aa.prepare_current(r.path());
        assert_eq!(
            p.attr,
            r.path().join("proc/thread-self/attr/apparmor/current")
        );
    }
}
