//! Service pods at create: find systemd and the requested units in the
//! image (or, with `--host-share`, on the host), write the pod's seed layer
//! (machine-id, hostname, the generated target, the persistent journal's
//! directory) and, for `--host-share`, the pod's private tree.
//!
//! `--host-share` rules (docs/service-pods.md holds the same table):
//!
//! | path                                  | in the pod                                          |
//! |---------------------------------------|-----------------------------------------------------|
//! | `/usr`                                | the host's, read-only                               |
//! | `/bin` `/sbin` `/lib` `/lib32` `/lib64` `/libx32` | as the host lays them out: its symlinks (merged /usr) copied, real directories shared read-only |
//! | `/etc`                                | private copy of the host's, made at create, without `shadow`, `gshadow` (a locked `shadow` is written), `ssh/ssh_host_*` keys, `ssl/private/`, `machine-id`, `hostname`, `berth/` |
//! | `/var`                                | private: the host's directory tree (directories, owners and modes only — no files; `/var/lib/berth`, `/var/cache/berth` left out), symlinks kept |
//! | `/root` `/home` `/srv` `/opt` `/mnt` `/media` `/tmp` | private, empty                          |
//! | `/run`, `/proc`, `/sys`, `/dev`       | the pod's own, as for every pod                     |
//!
//! A write in the pod lands in the pod's upper layer; nothing of the host is
//! writable from it.

use anyhow::{bail, Context, Result};
use berth_spec::service::{target_path, target_unit, unit_file_names, SYSTEMD_PATHS, UNIT_DIRS};
use berth_spec::{Mount, PodDir, PodSpec};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Does `path` (absolute, inside `root`) name an existing file, with every
/// symlink on the way resolved inside `root` (an image's absolute symlinks
/// must not send the look-up to the host)? Returns its metadata.
fn stat_in_root(root: &Path, path: &str) -> Option<std::fs::Metadata> {
    let mut cur = PathBuf::from("/");
    let mut parts: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(String::from)
        .collect();
    let mut hops = 0;
    while let Some(part) = parts.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                cur.pop();
                continue;
            }
            _ => {}
        }
        let next = cur.join(&part);
        let host = root.join(next.strip_prefix("/").ok()?);
        let meta = std::fs::symlink_metadata(&host).ok()?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = std::fs::read_link(&host).ok()?;
            let t = target.to_string_lossy();
            if t.starts_with('/') {
                cur = PathBuf::from("/");
            }
            parts.extend(
                t.split('/')
                    .filter(|c| !c.is_empty())
                    .rev()
                    .map(String::from),
            );
        } else {
            cur = next;
            if parts.is_empty() {
                return Some(meta);
            }
        }
    }
    std::fs::metadata(root.join(cur.strip_prefix("/").ok()?)).ok()
}

/// systemd's path in `root`.
pub fn find_systemd(root: &Path) -> Result<String> {
    for p in SYSTEMD_PATHS {
        if stat_in_root(root, p).is_some_and(|m| m.is_file() && m.mode() & 0o111 != 0) {
            return Ok(p.to_string());
        }
    }
    bail!(
        "{} has no systemd (looked for {}): a service pod boots systemd",
        describe_root(root),
        SYSTEMD_PATHS.join(", ")
    )
}

fn describe_root(root: &Path) -> String {
    if root == Path::new("/") {
        "the host".into()
    } else {
        format!("rootfs {}", root.display())
    }
}

/// Is `unit` (or its template) defined in `root`, and not masked?
pub fn check_unit(root: &Path, unit: &str) -> Result<()> {
    for dir in UNIT_DIRS {
        for name in unit_file_names(unit) {
            let p = format!("/{dir}/{name}");
            let host = root.join(&p[1..]);
            if let Ok(l) = std::fs::read_link(&host) {
                if l == Path::new("/dev/null") {
                    bail!("unit {unit} is masked in {}", describe_root(root));
                }
            }
            if stat_in_root(root, &p).is_some_and(|m| m.is_file()) {
                return Ok(());
            }
        }
    }
    bail!("unit {unit} not found in {}", describe_root(root))
}

/// The read-only host directories of a `--host-share` pod (see the table).
pub fn host_share_mounts() -> Result<Vec<Mount>> {
    let mut v = vec![Mount {
        source: "/usr".into(),
        destination: "/usr".into(),
        read_only: true,
    }];
    for d in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        let p = Path::new("/").join(d);
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            if m.is_dir() {
                v.push(Mount {
                    source: p.clone(),
                    destination: format!("/{d}"),
                    read_only: true,
                });
            }
        }
    }
    Ok(v)
}

/// Files of the host's /etc a pod never gets a copy of.
const ETC_EXCLUDED: &[&str] = &[
    "shadow",
    "shadow-",
    "gshadow",
    "gshadow-",
    "machine-id",
    "hostname",
    "berth",
    "ssl/private",
];

fn etc_excluded(rel: &Path) -> bool {
    let s = rel.to_string_lossy();
    ETC_EXCLUDED.contains(&s.as_ref()) || (s.starts_with("ssh/ssh_host_"))
}

/// Trees under the host's /var that are berth's own.
const VAR_EXCLUDED: &[&str] = &["lib/berth", "cache/berth"];

/// Build a `--host-share` pod's private tree (see the table).
pub fn build_host_share(pod: &PodDir) -> Result<()> {
    let tree = pod.host_share_tree();
    mkdir(&tree, 0o755)?;
    for d in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        let host = Path::new("/").join(d);
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&host)?;
                std::os::unix::fs::symlink(&target, tree.join(d))
                    .with_context(|| format!("cannot make {}", tree.join(d).display()))?;
            }
            Ok(m) if m.is_dir() => mkdir(&tree.join(d), 0o755)?,
            _ => {}
        }
    }
    for (d, mode) in [
        ("usr", 0o755),
        ("root", 0o700),
        ("home", 0o755),
        ("srv", 0o755),
        ("opt", 0o755),
        ("mnt", 0o755),
        ("media", 0o755),
        ("tmp", 0o1777),
        ("run", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
    ] {
        mkdir(&tree.join(d), mode)?;
    }
    copy_tree(Path::new("/etc"), &tree.join("etc"), &|rel, _| {
        !etc_excluded(rel)
    })?;
    locked_shadow(&tree.join("etc"))?;
    copy_tree(Path::new("/var"), &tree.join("var"), &|rel, meta| {
        let s = rel.to_string_lossy();
        !VAR_EXCLUDED
            .iter()
            .any(|x| s == *x || s.starts_with(&format!("{x}/")))
            && (meta.is_dir() || meta.file_type().is_symlink())
    })?;
    Ok(())
}

fn mkdir(p: &Path, mode: u32) -> Result<()> {
    match std::fs::DirBuilder::new().mode(mode).create(p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", p.display())),
    }
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", p.display()))
}

/// Copy `from` to `to` (which must not exist): directories, regular files
/// and symlinks for which `keep(relative path, metadata)` holds, with
/// their modes and owners; never following a symlink; sockets, fifos and
/// devices skipped.
fn copy_tree(
    from: &Path,
    to: &Path,
    keep: &dyn Fn(&Path, &std::fs::Metadata) -> bool,
) -> Result<()> {
    fn walk(
        root: &Path,
        rel: &Path,
        to: &Path,
        keep: &dyn Fn(&Path, &std::fs::Metadata) -> bool,
    ) -> Result<()> {
        let src = root.join(rel);
        let meta = std::fs::symlink_metadata(&src)
            .with_context(|| format!("cannot read {}", src.display()))?;
        let dst = to.join(rel);
        let ft = meta.file_type();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)
                .with_context(|| format!("cannot make {}", dst.display()))?;
        } else if ft.is_dir() {
            std::fs::create_dir(&dst)
                .with_context(|| format!("cannot create {}", dst.display()))?;
            let mut names: Vec<_> = std::fs::read_dir(&src)
                .with_context(|| format!("cannot list {}", src.display()))?
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .collect();
            names.sort();
            for n in names {
                let r = rel.join(&n);
                if let Ok(m) = std::fs::symlink_metadata(root.join(&r)) {
                    if keep(&r, &m) {
                        walk(root, &r, to, keep)?;
                    }
                }
            }
        } else if ft.is_file() {
            std::fs::copy(&src, &dst).with_context(|| format!("cannot copy {}", src.display()))?;
        } else {
            return Ok(());
        }
        if !ft.is_symlink() {
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        }
        std::os::unix::fs::lchown(&dst, Some(meta.uid()), Some(meta.gid()))
            .with_context(|| format!("cannot chown {}", dst.display()))?;
        Ok(())
    }
    walk(from, Path::new(""), to, keep)
}

/// A `shadow` in which every user of the copied `passwd` is locked.
fn locked_shadow(etc: &Path) -> Result<()> {
    let passwd = std::fs::read_to_string(etc.join("passwd")).unwrap_or_default();
    let mut out = String::new();
    for l in passwd.lines() {
        if let Some(user) = l.split(':').next().filter(|u| !u.is_empty()) {
            out.push_str(&format!("{user}:!*:19000:0:99999:7:::\n"));
        }
    }
    let p = etc.join("shadow");
    std::fs::write(&p, out).with_context(|| format!("cannot write {}", p.display()))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640))?;
    Ok(())
}

/// Write the service pod's seed layer and point the spec at it.
pub fn seed(pod: &PodDir, spec: &mut PodSpec) -> Result<()> {
    let Some(svc) = &spec.service else {
        return Ok(());
    };
    let seed = pod.seed_layer();
    let w = |rel: &str, text: &str, mode: u32| -> Result<()> {
        let p = seed.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    w("etc/machine-id", &format!("{}\n", spec.machine_id), 0o444)?;
    w("etc/hostname", &format!("{}\n", spec.hostname), 0o644)?;
    w(&target_path(), &target_unit(&spec.name, svc), 0o644)?;
    // A persistent journal: journald keeps /var/log/journal/<machine-id>.
    let journal = seed.join("var/log/journal").join(&spec.machine_id);
    std::fs::create_dir_all(&journal)
        .with_context(|| format!("cannot create {}", journal.display()))?;
    // Directories are created 0755 by create_dir_all; journald wants 2755
    // owned by root:systemd-journal, which it fixes itself (tmpfiles).
    mask_generators(&seed, spec)?;
    mark_updated(&seed, spec)?;
    spec.rootfs.layers = vec![seed];
    Ok(())
}

/// `/etc/.updated`, stamped with the image's /usr: systemd's
/// `ConditionNeedsUpdate=/etc` units (ldconfig, systemd-sysusers,
/// journal-catalog-update, update-done…) run when /usr is newer than that
/// stamp, i.e. on every pod's first boot of an image that has none —
/// work the image build already did. Skipped when the image has a stamp
/// of its own or its /usr is not found.
fn mark_updated(seed: &Path, spec: &PodSpec) -> Result<()> {
    let image = &spec.rootfs.image;
    let usr = spec
        .mounts
        .iter()
        .find(|m| m.destination == "/usr")
        .map_or_else(|| image.join("usr"), |m| m.source.clone());
    if image.join("etc/.updated").exists() {
        return Ok(());
    }
    let Ok(meta) = std::fs::metadata(&usr) else {
        return Ok(());
    };
    let p = seed.join("etc/.updated");
    let text = format!(
        "# Written by berth: the image's /usr is up to date.\nTIMESTAMP_NSEC={}\n",
        meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
    );
    std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
    let f = std::fs::File::options()
        .write(true)
        .open(&p)
        .with_context(|| format!("cannot open {}", p.display()))?;
    let mtime = meta
        .modified()
        .with_context(|| format!("cannot read the mtime of {}", usr.display()))?;
    f.set_times(std::fs::FileTimes::new().set_modified(mtime))
        .with_context(|| format!("cannot set the mtime of {}", p.display()))?;
    Ok(())
}

/// Where an image keeps systemd's system generators, relative to its root.
const GENERATOR_DIRS: &[&str] = &[
    "usr/lib/systemd/system-generators",
    "lib/systemd/system-generators",
    "usr/local/lib/systemd/system-generators",
];

/// systemd runs every generator at boot, before any unit, each a process
/// of its own (cryptsetup, fstab, getty, gpt-auto, sysv…): none has
/// anything to do for a pod that runs named units, and in a microVM on a
/// nested (PVM) host each costs seconds of emulated exec and dynamic
/// linking. Mask them all (`/etc/systemd/system-generators/NAME` ->
/// /dev/null) in the seed layer: the image's, and with --host-share the
/// host's /usr ones.
fn mask_generators(seed: &Path, spec: &PodSpec) -> Result<()> {
    let mut roots = vec![spec.rootfs.image.clone()];
    for m in &spec.mounts {
        if m.destination == "/usr" {
            // The mount's source is the pod's /usr: strip the prefix.
            if let Some(parent) = m.source.parent() {
                roots.push(parent.to_path_buf());
            }
        }
    }
    let dir = seed.join("etc/systemd/system-generators");
    let mut names: Vec<std::ffi::OsString> = Vec::new();
    for root in &roots {
        for d in GENERATOR_DIRS {
            let Ok(rd) = std::fs::read_dir(root.join(d)) else {
                continue;
            };
            names.extend(rd.filter_map(|e| e.ok().map(|e| e.file_name())));
        }
    }
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for n in names {
        let link = dir.join(&n);
        std::os::unix::fs::symlink("/dev/null", &link)
            .with_context(|| format!("cannot make {}", link.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_stay_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("usr/lib/systemd/system")).unwrap();
        std::fs::write(root.join("usr/lib/systemd/systemd"), "").unwrap();
        std::fs::set_permissions(
            root.join("usr/lib/systemd/systemd"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        // Merged /usr with an absolute symlink: must resolve inside root.
        std::os::unix::fs::symlink("/usr/lib", root.join("lib")).unwrap();
        std::fs::write(root.join("usr/lib/systemd/system/nginx.service"), "").unwrap();
        std::fs::write(root.join("usr/lib/systemd/system/getty@.service"), "").unwrap();
        std::os::unix::fs::symlink(
            "/dev/null",
            root.join("usr/lib/systemd/system/masked.service"),
        )
        .unwrap();
        assert_eq!(find_systemd(root).unwrap(), "/usr/lib/systemd/systemd");
        check_unit(root, "nginx.service").unwrap();
        check_unit(root, "getty@tty1.service").unwrap();
        let e = check_unit(root, "nope.service").unwrap_err().to_string();
        assert!(e.contains("unit nope.service not found"), "{e}");
        let e = check_unit(root, "masked.service").unwrap_err().to_string();
        assert!(e.contains("masked"), "{e}");
        // A symlink pointing at a host path is looked up inside the root.
        std::os::unix::fs::symlink("/etc/passwd", root.join("escape")).unwrap();
        assert!(stat_in_root(root, "/escape").is_none());
        let empty = tempfile::tempdir().unwrap();
        let e = find_systemd(empty.path()).unwrap_err().to_string();
        assert!(e.contains("has no systemd"), "{e}");
    }

    #[test]
    fn every_generator_of_the_image_is_masked() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("img");
        for g in [
            "usr/lib/systemd/system-generators",
            "lib/systemd/system-generators",
        ] {
            std::fs::create_dir_all(img.join(g)).unwrap();
        }
        std::fs::write(
            img.join("usr/lib/systemd/system-generators/systemd-fstab-generator"),
            "",
        )
        .unwrap();
        std::fs::write(
            img.join("lib/systemd/system-generators/systemd-getty-generator"),
            "",
        )
        .unwrap();
        std::fs::write(
            img.join("lib/systemd/system-generators/systemd-fstab-generator"),
            "",
        )
        .unwrap();
        let mut spec = PodSpec::new("t", "0b9f3c2e-6a1d-4c8e-9f00-1234567890ab", vec![], &img);
        spec.service = Some(berth_spec::Service {
            units: vec!["nginx.service".into()],
        });
        let pod = PodDir::new(d.path().join("pod"));
        std::fs::create_dir_all(pod.path()).unwrap();
        seed(&pod, &mut spec).unwrap();
        let dir = pod.seed_layer().join("etc/systemd/system-generators");
        let mut got: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        got.sort();
        assert_eq!(got, ["systemd-fstab-generator", "systemd-getty-generator"]);
        for g in got {
            assert_eq!(
                std::fs::read_link(dir.join(g)).unwrap(),
                Path::new("/dev/null")
            );
        }
        // /etc/.updated carries /usr's mtime: ConditionNeedsUpdate=/etc is
        // false in the pod.
        let usr = std::fs::metadata(img.join("usr")).unwrap();
        let stamp = std::fs::metadata(pod.seed_layer().join("etc/.updated")).unwrap();
        assert_eq!(stamp.modified().unwrap(), usr.modified().unwrap());
        let text = std::fs::read_to_string(pod.seed_layer().join("etc/.updated")).unwrap();
        assert!(text.contains(&format!(
            "TIMESTAMP_NSEC={}\n",
            usr.mtime() * 1_000_000_000 + usr.mtime_nsec()
        )));
    }

    #[test]
    fn etc_exclusions() {
        for x in [
            "shadow",
            "gshadow",
            "machine-id",
            "ssh/ssh_host_rsa_key",
            "berth",
        ] {
            assert!(etc_excluded(Path::new(x)), "{x}");
        }
        for k in ["passwd", "nginx/nginx.conf", "ssh/sshd_config"] {
            assert!(!etc_excluded(Path::new(k)), "{k}");
        }
    }
}
