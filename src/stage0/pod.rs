//! Building a PodSpec from the command line and writing the pod directory.

use super::store::{Store, StoreError};
use berth_spec::{PodDir, PodSpec};
use std::fs::File;
use std::io::Read;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read random bytes for the pod's uuid")]
    Random(#[source] std::io::Error),
    #[error(transparent)]
    Spec(#[from] berth_spec::SpecError),
}

/// A random RFC 4122 version-4 UUID, lowercase with dashes.
pub fn new_uuid() -> Result<String, PodError> {
    let mut b = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(PodError::Random)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// A hostname derived from a pod name (`_` is not allowed in hostnames).
pub fn hostname_for(name: &str) -> String {
    let h: String = name
        .chars()
        .map(|c| if c == '_' { '-' } else { c })
        .collect();
    let h = h.trim_matches(|c| c == '-' || c == '.').to_string();
    if berth_spec::valid_hostname(&h) {
        h
    } else {
        "berth".to_string()
    }
}

/// A pod directory under construction: removed on drop unless `keep` is called,
/// so a failed `run`/`create` leaves nothing behind.
pub struct NewPod {
    pub dir: PodDir,
    pub lock: Option<File>,
    keep: bool,
}

impl NewPod {
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for NewPod {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(self.dir.path());
        }
    }
}

/// Claim the name (the pod directory, locked) and lay out the directory.
/// The spec is written by [`NewPod::write_spec`].
pub fn claim(store: &Store, name: &str) -> Result<NewPod, PodError> {
    let (dir, lock) = store.create(name)?;
    let pod = NewPod {
        dir,
        lock: Some(lock),
        keep: false,
    };
    for d in [pod.dir.rootfs(), pod.dir.upper(), pod.dir.work()] {
        std::fs::create_dir_all(&d).map_err(|source| PodError::Write {
            path: d.display().to_string(),
            source,
        })?;
    }
    Ok(pod)
}

impl NewPod {
    /// Write `pod.json` and `stage1`.
    pub fn write_spec(&self, spec: &PodSpec, stage1: &Path) -> Result<(), PodError> {
        write_spec(&self.dir, spec)?;
        berth_spec::state::write_file(&self.dir.stage1_file(), &format!("{}\n", stage1.display()))
            .map_err(|e| PodError::Write {
                path: self.dir.stage1_file().display().to_string(),
                source: std::io::Error::other(e),
            })
    }
}

/// `--private-users`: take a range from the pool for the new pod (the pod
/// directory exists already, so the range is its own from now on). A kvm
/// pod without a user namespace takes one too: its first id is the uid and
/// gid its VMM runs as (`KvmSettings::vmm_id`), an id no other pod and no
/// host user has.
pub fn allocate_users(
    store: &Store,
    spec: &mut PodSpec,
    private: bool,
) -> Result<(), anyhow::Error> {
    let vmm = spec.kvm.is_some() && !private && spec.security.userns.is_none();
    if !private && !vmm {
        return Ok(());
    }
    let cfg = berth_net::HostConfig::load(store.root())?;
    let range = super::users::allocate(store.root(), cfg.user_pool, &spec.uuid)?;
    match spec.kvm.as_mut().filter(|_| vmm) {
        Some(k) => k.vmm_id = Some(range.host_uid),
        None => spec.security.userns = Some(range),
    }
    Ok(())
}

/// Validate and (atomically) write a pod's `pod.json`.
pub fn write_spec(pod: &PodDir, spec: &PodSpec) -> Result<(), PodError> {
    spec.validate()?;
    berth_spec::state::write_file(&pod.spec_file(), &spec.to_json()).map_err(|e| PodError::Write {
        path: pod.spec_file().display().to_string(),
        source: std::io::Error::other(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_v4_and_distinct() {
        let a = new_uuid().unwrap();
        let b = new_uuid().unwrap();
        assert!(berth_spec::is_uuid(&a), "{a}");
        assert_ne!(a, b);
        assert_eq!(&a[14..15], "4");
    }

    #[test]
    fn hostnames() {
        assert_eq!(hostname_for("web_1"), "web-1");
        assert_eq!(hostname_for("a.b"), "a.b");
        assert_eq!(hostname_for("_x_"), "x");
    }
}
