//! Optional boot tracing: with `berth_trace=1` on the kernel command line
//! (the kernel passes unknown `key=value` parameters to init as environment
//! variables), guest-init writes a line to /dev/kmsg after each step, so
//! the console shows kernel timestamps for where guest boot time goes. Off
//! by default: each mark costs one guest syscall.

use std::sync::atomic::{AtomicI32, Ordering};

use crate::sys;

static KMSG: AtomicI32 = AtomicI32::new(-1);

/// The environment variable that turns tracing on.
pub const ENV: &str = "berth_trace";

/// Turn tracing on if requested (reads the environment: no syscall unless
/// enabled). Needs /dev.
pub fn init() {
    if std::env::var_os(ENV).is_some_and(|v| v == "1") {
        if let Ok(fd) = sys::open(c"/dev/kmsg", libc::O_WRONLY) {
            use std::os::fd::IntoRawFd;
            KMSG.store(fd.into_raw_fd(), Ordering::Relaxed);
        }
    }
}

pub fn enabled() -> bool {
    KMSG.load(Ordering::Relaxed) >= 0
}

/// Log `berth-guest-init: trace: <what>` through the kernel log.
pub fn mark(what: &str) {
    let fd = KMSG.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    let line = format!("berth-guest-init: trace: {what}\n");
    // SAFETY: one write from a live buffer to the kmsg fd we opened.
    let _ = unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
}
