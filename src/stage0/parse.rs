//! Parsing of command-line values into spec values. Every error names the
//! offending value.

use berth_spec::{Device, DeviceKind, Mount, PortMapping, Protocol};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    #[error("invalid volume {0:?}: expected SRC:DST[:ro|:rw]")]
    VolumeSyntax(String),
    #[error("invalid volume {spec:?}: source {src} does not exist")]
    VolumeSource { spec: String, src: String },
    #[error("invalid volume {0:?}: destination must be an absolute path below /")]
    VolumeDest(String),
    #[error("invalid size {0:?}: expected a number with an optional k, m, g suffix")]
    Size(String),
    #[error("invalid cpus {0:?}: expected a positive number such as 1 or 0.5")]
    Cpus(String),
    #[error("invalid user {0:?}: expected UID[:GID]")]
    User(String),
    #[error("invalid environment {0:?}: expected KEY=VALUE")]
    Env(String),
    #[error("invalid capability {0:?}: expected a name such as NET_ADMIN or ALL")]
    Capability(String),
    #[error("invalid port {0:?}: expected HOSTPORT:PODPORT[/tcp|/udp] with ports 1-65535")]
    Port(String),
    #[error("invalid --memory {0:?}: a pod needs at least {min} MiB", min = MIN_MEMORY >> 20)]
    MemoryTooSmall(String),
    #[error("invalid --pids {0:?}: expected a whole number from 2 (the pod's init counts as one) to {max}", max = MAX_PIDS)]
    Pids(String),
    #[error("invalid --disk {0:?}: expected a size of at least {min} MiB such as 512m or 2g", min = MIN_DISK >> 20)]
    Disk(String),
    #[error("invalid --device {0:?}: expected HOSTPATH[:PODPATH][:PERMS] naming a character or block device, PERMS from r, w, m")]
    DeviceSyntax(String),
    #[error("invalid --device {spec:?}: {path} is not a character or block device")]
    NotADevice { spec: String, path: String },
}

/// The smallest memory limit a pod starts with (init and a small app).
pub const MIN_MEMORY: u64 = 6 << 20;
/// The kernel's highest pid limit (PID_MAX_LIMIT on 64-bit).
pub const MAX_PIDS: u32 = 4 * 1024 * 1024;
/// The smallest `--disk` (a fresh ext4 holding the overlay's upper layer).
pub const MIN_DISK: u64 = 16 << 20;

/// `--memory`: a size of at least [`MIN_MEMORY`].
pub fn memory(s: &str) -> Result<u64, ParseError> {
    let v = size(s)?;
    if v < MIN_MEMORY {
        return Err(ParseError::MemoryTooSmall(s.into()));
    }
    Ok(v)
}

/// `--pids`: 2 ..= [`MAX_PIDS`].
pub fn pids(s: &str) -> Result<u32, ParseError> {
    let err = || ParseError::Pids(s.into());
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    s.parse::<u32>()
        .ok()
        .filter(|n| (2..=MAX_PIDS).contains(n))
        .ok_or_else(err)
}

/// `--disk`: a size of at least [`MIN_DISK`].
pub fn disk(s: &str) -> Result<u64, ParseError> {
    size(s)
        .ok()
        .filter(|v| *v >= MIN_DISK)
        .ok_or_else(|| ParseError::Disk(s.into()))
}

/// The host's RAM in bytes (MemTotal), if /proc/meminfo says.
pub fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb << 10)
}

/// `--device HOSTPATH[:PODPATH][:PERMS]` (docker's syntax): the host node's
/// type and numbers, the path in the pod (default: the same), and the
/// access granted (default `rwm`).
pub fn device(spec: &str) -> Result<Device, ParseError> {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::MetadataExt;
    let syntax = || ParseError::DeviceSyntax(spec.into());
    let is_perms =
        |p: &str| !p.is_empty() && p.len() <= 3 && p.chars().all(|c| matches!(c, 'r' | 'w' | 'm'));
    let parts: Vec<&str> = spec.split(':').collect();
    let (host, pod, access) = match parts.as_slice() {
        [h] => (*h, *h, "rwm"),
        [h, p] if is_perms(p) => (*h, *h, *p),
        [h, p] => (*h, *p, "rwm"),
        [h, p, a] if is_perms(a) => (*h, *p, *a),
        _ => return Err(syntax()),
    };
    if !host.starts_with('/') {
        return Err(syntax());
    }
    // What the host path is comes first: `--device /etc/passwd` is "not a
    // device", whatever its pod path would have been.
    let not_dev = || ParseError::NotADevice {
        spec: spec.into(),
        path: host.into(),
    };
    let meta = std::fs::metadata(host).map_err(|_| not_dev())?;
    let ft = meta.file_type();
    let kind = if ft.is_char_device() {
        DeviceKind::Char
    } else if ft.is_block_device() {
        DeviceKind::Block
    } else {
        return Err(not_dev());
    };
    if !pod.starts_with("/dev/") || pod.split('/').any(|c| c == "..") {
        return Err(syntax());
    }
    let rdev = meta.rdev();
    Ok(Device {
        path: normalize(pod),
        kind,
        major: libc::major(rdev),
        minor: libc::minor(rdev),
        access: access.to_string(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

/// `-p HOSTPORT:PODPORT[/tcp|/udp]` (default tcp).
pub fn port(s: &str) -> Result<PortMapping, ParseError> {
    let err = || ParseError::Port(s.into());
    let (ports, proto) = match s.split_once('/') {
        Some((p, "tcp")) => (p, Protocol::Tcp),
        Some((p, "udp")) => (p, Protocol::Udp),
        Some(_) => return Err(err()),
        None => (s, Protocol::Tcp),
    };
    let (h, c) = ports.split_once(':').ok_or_else(err)?;
    let num = |x: &str| -> Result<u16, ParseError> {
        if x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        x.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(err)
    };
    Ok(PortMapping {
        host_port: num(h)?,
        pod_port: num(c)?,
        protocol: proto,
    })
}

/// `NET_ADMIN`, `cap_net_admin`, `net_admin` → `net_admin`; `ALL` → every one.
pub fn capability(s: &str) -> Result<Vec<String>, ParseError> {
    let l = s.to_ascii_lowercase();
    let l = l.strip_prefix("cap_").unwrap_or(&l);
    if l == "all" {
        return Ok(berth_spec::ALL_CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .collect());
    }
    if berth_spec::ALL_CAPABILITIES.contains(&l) {
        Ok(vec![l.to_string()])
    } else {
        Err(ParseError::Capability(s.into()))
    }
}

/// `SRC:DST[:ro|:rw]`; SRC must exist and is made absolute.
pub fn volume(spec: &str) -> Result<Mount, ParseError> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, ro) = match parts.as_slice() {
        [s, d] => (*s, *d, false),
        [s, d, "ro"] => (*s, *d, true),
        [s, d, "rw"] => (*s, *d, false),
        _ => return Err(ParseError::VolumeSyntax(spec.into())),
    };
    if src.is_empty() || dst.is_empty() {
        return Err(ParseError::VolumeSyntax(spec.into()));
    }
    let source = std::fs::canonicalize(src).map_err(|_| ParseError::VolumeSource {
        spec: spec.into(),
        src: src.into(),
    })?;
    if !dst.starts_with('/')
        || dst.split('/').any(|c| c == "..")
        || dst.trim_end_matches('/').is_empty()
    {
        return Err(ParseError::VolumeDest(spec.into()));
    }
    Ok(Mount {
        source,
        destination: normalize(dst),
        read_only: ro,
    })
}

/// Collapse `//`, `/./` and a trailing `/`.
fn normalize(p: &str) -> String {
    let mut out = String::new();
    for c in p.split('/').filter(|c| !c.is_empty() && *c != ".") {
        out.push('/');
        out.push_str(c);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// `512m`, `1g`, `65536`, `1.5g` → bytes.
pub fn size(s: &str) -> Result<u64, ParseError> {
    let err = || ParseError::Size(s.into());
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        Some(_) => (t, 1),
        None => return Err(err()),
    };
    let v: f64 = num.parse().map_err(|_| err())?;
    if !v.is_finite() || v <= 0.0 {
        return Err(err());
    }
    let bytes = v * mult as f64;
    if bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(err());
    }
    Ok(bytes as u64)
}

/// `1.5` → 1500 thousandths of a CPU.
pub fn cpus(s: &str) -> Result<u32, ParseError> {
    let v: f64 = s.parse().map_err(|_| ParseError::Cpus(s.into()))?;
    if !v.is_finite() || !(0.001..=4096.0).contains(&v) {
        return Err(ParseError::Cpus(s.into()));
    }
    Ok((v * 1000.0).round() as u32)
}

/// `UID[:GID]`, numeric. Without GID, the primary group from the image's
/// /etc/passwd, or the uid's number.
pub fn user(s: &str, image: &Path) -> Result<(u32, u32), ParseError> {
    let err = || ParseError::User(s.into());
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let uid: u32 = u.parse().map_err(|_| err())?;
    let gid = match g {
        Some(g) => g.parse().map_err(|_| err())?,
        None => passwd_gid(image, uid).unwrap_or(uid),
    };
    Ok((uid, gid))
}

fn passwd_gid(image: &Path, uid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(image.join("etc/passwd")).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[2].parse() == Ok(uid)).then(|| f[3].parse().ok())?
    })
}

/// `KEY=VALUE`, or `KEY` alone to pass the caller's value through.
pub fn env(s: &str) -> Result<String, ParseError> {
    match s.split_once('=') {
        Some((k, _)) if valid_env_key(k) => Ok(s.to_string()),
        None if valid_env_key(s) => std::env::var(s)
            .map(|v| format!("{s}={v}"))
            .map_err(|_| ParseError::Env(s.into())),
        _ => Err(ParseError::Env(s.into())),
    }
}

fn valid_env_key(k: &str) -> bool {
    !k.is_empty() && !k.contains('\0')
}

/// Absolute form of a user-given path, relative to the current directory.
pub fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().to_str().unwrap();
        let m = volume(&format!("{src}:/data:ro")).unwrap();
        assert_eq!(m.destination, "/data");
        assert!(m.read_only);
        assert!(!volume(&format!("{src}:/data/")).unwrap().read_only);
        assert_eq!(
            volume(&format!("{src}://a/./b/")).unwrap().destination,
            "/a/b"
        );
        assert!(matches!(
            volume("nocolon"),
            Err(ParseError::VolumeSyntax(_))
        ));
        assert!(matches!(
            volume(&format!("{src}:/d:xx")),
            Err(ParseError::VolumeSyntax(_))
        ));
        assert!(matches!(
            volume("/does/not/exist:/d"),
            Err(ParseError::VolumeSource { .. })
        ));
        assert!(matches!(
            volume(&format!("{src}:rel")),
            Err(ParseError::VolumeDest(_))
        ));
        assert!(matches!(
            volume(&format!("{src}:/")),
            Err(ParseError::VolumeDest(_))
        ));
        assert!(matches!(
            volume(&format!("{src}:/a/../b")),
            Err(ParseError::VolumeDest(_))
        ));
        let e = volume("/does/not/exist:/d").unwrap_err().to_string();
        assert!(e.contains("/does/not/exist"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(size("512m"), Ok(512 << 20));
        assert_eq!(size("1G"), Ok(1 << 30));
        assert_eq!(size("1.5g"), Ok(3 << 29));
        assert_eq!(size("4096"), Ok(4096));
        assert_eq!(size("64MB"), Ok(64 << 20));
        for bad in ["", "m", "-1m", "0", "abc", "1x", "nan"] {
            assert!(size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn limits() {
        assert_eq!(memory("64m"), Ok(64 << 20));
        assert_eq!(memory("1k"), Err(ParseError::MemoryTooSmall("1k".into())));
        assert!(memory("1k").unwrap_err().to_string().contains("\"1k\""));
        assert_eq!(pids("2"), Ok(2));
        for bad in ["1", "0", "-1", "4294967295", "x", "", "+5"] {
            let e = pids(bad).expect_err(bad).to_string();
            assert_eq!(e.matches(&format!("{bad:?}")).count(), 1, "{e}");
        }
        assert_eq!(disk("1g"), Ok(1 << 30));
        assert!(disk("1m").is_err());
        assert!(host_memory().is_some_and(|m| m > MIN_MEMORY));
    }

    #[test]
    fn devices() {
        let d = device("/dev/null").unwrap();
        assert_eq!((d.kind, d.major, d.minor), (DeviceKind::Char, 1, 3));
        assert_eq!((d.path.as_str(), d.access.as_str()), ("/dev/null", "rwm"));
        let d = device("/dev/zero:/dev/z0:r").unwrap();
        assert_eq!((d.path.as_str(), d.access.as_str()), ("/dev/z0", "r"));
        assert_eq!(device("/dev/zero:rw").unwrap().access, "rw");
        for bad in [
            "",
            "dev/null",
            "/dev/null:/tmp/x",
            "/dev/null:/dev/x:rx",
            "/dev/null:/dev/../x",
        ] {
            assert!(
                matches!(device(bad), Err(ParseError::DeviceSyntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            device("/etc/passwd"),
            Err(ParseError::NotADevice { .. })
        ));
    }

    #[test]
    fn cpu_values() {
        assert_eq!(cpus("1"), Ok(1000));
        assert_eq!(cpus("0.5"), Ok(500));
        assert!(cpus("0").is_err());
        assert!(cpus("-2").is_err());
        assert!(cpus("x").is_err());
    }

    #[test]
    fn users() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/passwd"), "app:x:1000:1001::/:/bin/sh\n").unwrap();
        assert_eq!(user("1000", d.path()), Ok((1000, 1001)));
        assert_eq!(user("1000:5", d.path()), Ok((1000, 5)));
        assert_eq!(user("42", d.path()), Ok((42, 42)));
        assert!(user("bob", d.path()).is_err());
        assert!(user("1:x", d.path()).is_err());
    }

    #[test]
    fn capabilities() {
        assert_eq!(capability("NET_ADMIN"), Ok(vec!["net_admin".to_string()]));
        assert_eq!(
            capability("cap_sys_admin"),
            Ok(vec!["sys_admin".to_string()])
        );
        assert_eq!(
            capability("all").unwrap().len(),
            berth_spec::ALL_CAPABILITIES.len()
        );
        assert!(capability("frob").is_err());
    }

    #[test]
    fn ports() {
        assert_eq!(
            port("18080:80"),
            Ok(PortMapping {
                host_port: 18080,
                pod_port: 80,
                protocol: Protocol::Tcp
            })
        );
        assert_eq!(port("53:5353/udp").unwrap().protocol, Protocol::Udp);
        assert_eq!(port("1:2/tcp").unwrap().pod_port, 2);
        for bad in [
            "",
            "80",
            ":80",
            "80:",
            "0:80",
            "80:0",
            "70000:80",
            "a:80",
            "80:80/sctp",
            "+1:80",
            "1:2:3",
        ] {
            let e = port(bad).expect_err(bad).to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn envs() {
        assert_eq!(env("A=b=c"), Ok("A=b=c".into()));
        assert_eq!(env("E="), Ok("E=".into()));
        assert!(env("=x").is_err());
        std::env::set_var("BERTH_TEST_PASSTHRU", "v");
        assert_eq!(
            env("BERTH_TEST_PASSTHRU"),
            Ok("BERTH_TEST_PASSTHRU=v".into())
        );
        assert!(env("BERTH_TEST_SURELY_UNSET_VAR").is_err());
    }
}
