//! The initramfs handed to the guest kernel: guest-init as `/init`, the pod
//! spec at `berth_spec::kvm::INITRAMFS_SPEC_PATH`, and a `/dev/console` node
//! so the kernel can give PID 1 its stdio. Built in memory as an uncompressed
//! newc cpio archive: decompressing is guest-kernel work, which is emulated
//! (slow) on the CI hosts.

use std::io::Write;

/// File types for the cpio mode field.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// Build the archive; with `random_seed`, that file too (read-only for
/// root) at `berth_spec::kvm::INITRAMFS_RANDOM_SEED_PATH`.
pub fn build(
    init: &[u8],
    spec_json: &[u8],
    random_seed: Option<&[u8]>,
) -> std::io::Result<Vec<u8>> {
    let spec_path = berth_spec::kvm::INITRAMFS_SPEC_PATH.trim_start_matches('/');
    let spec_dir = spec_path.rsplit_once('/').map_or("", |(d, _)| d);
    let mut out = Vec::with_capacity(init.len() + spec_json.len() + 4096);
    let mut ino = 1u32;
    let mut add =
        |out: &mut Vec<u8>, name: &str, mode: u32, rdev: Option<(u32, u32)>, data: &[u8]| {
            let mut b = cpio::newc::Builder::new(name).ino(ino).mode(mode).nlink(1);
            if let Some((major, minor)) = rdev {
                b = b.rdev_major(major).rdev_minor(minor);
            }
            ino += 1;
            let size = u32::try_from(data.len()).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{name} is over 4 GiB"),
                )
            })?;
            let mut w = b.write(out, size);
            w.write_all(data)?;
            w.finish().map(|_| ())
        };
    add(&mut out, "dev", S_IFDIR | 0o755, None, &[])?;
    add(&mut out, "dev/console", S_IFCHR | 0o600, Some((5, 1)), &[])?;
    add(&mut out, spec_dir, S_IFDIR | 0o755, None, &[])?;
    add(&mut out, spec_path, S_IFREG | 0o644, None, spec_json)?;
    if let Some(seed) = random_seed {
        let path = berth_spec::kvm::INITRAMFS_RANDOM_SEED_PATH.trim_start_matches('/');
        add(&mut out, path, S_IFREG | 0o400, None, seed)?;
    }
    add(&mut out, "init", S_IFREG | 0o755, None, init)?;
    cpio::newc::trailer(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn entries(bytes: Vec<u8>) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
        let mut cursor = std::io::Cursor::new(bytes);
        let mut seen = Vec::new();
        loop {
            let mut r = cpio::newc::Reader::new(cursor).unwrap();
            if r.entry().is_trailer() {
                break;
            }
            let e = r.entry();
            let (name, mode, major, minor) = (
                e.name().to_string(),
                e.mode(),
                e.rdev_major(),
                e.rdev_minor(),
            );
            let mut data = Vec::new();
            r.read_to_end(&mut data).unwrap();
            seen.push((name, mode, major, minor, data));
            cursor = r.finish().unwrap();
        }
        seen
    }

    #[test]
    fn a_service_pods_archive_holds_the_random_seed_for_root_only() {
        let plain = entries(build(b"i", b"{}", None).unwrap());
        assert!(plain.iter().all(|e| e.0 != "berth/random-seed"));
        let seeded = entries(build(b"i", b"{}", Some(&[7u8; 64])).unwrap());
        let seed = seeded.iter().find(|e| e.0 == "berth/random-seed").unwrap();
        assert_eq!(
            (seed.1, seed.4.as_slice()),
            (S_IFREG | 0o400, &[7u8; 64][..])
        );
    }

    #[test]
    fn archive_holds_init_spec_and_console() {
        let seen = entries(build(b"\x7fELF-init", b"{\"version\":1}", None).unwrap());
        let find = |n: &str| {
            seen.iter()
                .find(|e| e.0 == n)
                .unwrap_or_else(|| panic!("{n} missing"))
        };
        let init = find("init");
        assert_eq!(init.1, S_IFREG | 0o755);
        assert_eq!(init.4, b"\x7fELF-init");
        assert_eq!(find("berth/pod.json").4, b"{\"version\":1}");
        let console = find("dev/console");
        assert_eq!(
            (console.1 & 0o170000, console.2, console.3),
            (S_IFCHR, 5, 1)
        );
        // Directories precede their contents.
        let pos = |n: &str| seen.iter().position(|e| e.0 == n).unwrap();
        assert!(pos("berth") < pos("berth/pod.json"));
        assert!(pos("dev") < pos("dev/console"));
    }
}
