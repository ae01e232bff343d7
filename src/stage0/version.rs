//! `berth --version`: berth's version and what it finds to run pods with —
//! each built-in stage1 and the guest kernel of the kvm one.

use std::sync::OnceLock;

/// The long version text (computed once; clap wants a 'static string).
pub fn long() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let mut s = env!("CARGO_PKG_VERSION").to_string();
        for name in ["ns", "kvm"] {
            let found = super::stage1::resolve(name)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|e| format!("not found ({e})"));
            s.push_str(&format!("\nstage1 {name}: {found}"));
        }
        let kernel = std::env::var_os("BERTH_KERNEL")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from("/usr/local/lib/berth/vmlinux"));
        let k = if kernel.is_file() {
            match kernel_release(&kernel) {
                Some(r) => format!("{} (Linux {r})", kernel.display()),
                None => kernel.display().to_string(),
            }
        } else {
            format!("{} not found (make setup builds it)", kernel.display())
        };
        s.push_str(&format!("\nguest kernel: {k}"));
        s
    })
}

/// The `Linux version X` string a vmlinux carries (its linux_banner).
fn kernel_release(path: &std::path::Path) -> Option<String> {
    let data = std::fs::read(path).ok()?;
    let needle = b"Linux version ";
    let at = data.windows(needle.len()).position(|w| w == needle)?;
    let rest = &data[at + needle.len()..];
    let end = rest.iter().position(|b| *b == b' ' || *b == 0)?;
    std::str::from_utf8(&rest[..end]).ok().map(String::from)
}
