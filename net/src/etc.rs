//! The pod's /etc/resolv.conf and /etc/hosts.

use berth_spec::PrivateNetwork;
use std::net::Ipv4Addr;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

pub fn resolv_conf(dns: &[Ipv4Addr]) -> String {
    let mut s = String::from("# written by berth\n");
    for d in dns {
        s.push_str(&format!("nameserver {d}\n"));
    }
    s
}

pub fn hosts(hostname: &str, address: Option<Ipv4Addr>) -> String {
    let mut s = String::from(
        "# written by berth\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    match address {
        Some(a) => s.push_str(&format!("{a}\t{hostname}\n")),
        None => s.push_str(&format!("127.0.1.1\t{hostname}\n")),
    }
    s
}

/// Write both files into `dir/etc/` (the pod's overlay upper directory, before
/// the overlay is mounted — or any directory that becomes the guest's root).
pub fn write(dir: &Path, hostname: &str, net: &PrivateNetwork) -> std::io::Result<()> {
    let etc = dir.join("etc");
    match std::fs::DirBuilder::new().mode(0o755).create(&etc) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    for (name, text) in [
        ("resolv.conf", resolv_conf(&net.dns)),
        ("hosts", hosts(hostname, Some(net.address))),
    ] {
        let p = etc.join(name);
        // Never follow a symlink the pod left in its upper layer.
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents() {
        assert_eq!(
            resolv_conf(&[Ipv4Addr::new(192, 0, 2, 1)]),
            "# written by berth\nnameserver 192.0.2.1\n"
        );
        let h = hosts("web", Some(Ipv4Addr::new(10, 88, 0, 2)));
        assert!(h.contains("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("10.88.0.2\tweb\n"));
    }
}
