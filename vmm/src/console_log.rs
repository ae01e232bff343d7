//! A size-capped console log for [`crate::VmConfig::serial_out`].
//!
//! Whatever the guest prints on its serial console is hostile input of
//! unbounded length: written to a plain file, a guest could fill the host's
//! disk. [`RotatingLog`] keeps at most `max_bytes` in the live file: when a
//! write would take it past that, the file is renamed to `<path>.1`
//! (replacing the previous one) and a fresh `<path>` is started, so at most
//! `2 × max_bytes` are ever on disk and the newest output is always kept.
//!
//! It never blocks or fails the guest: every `write` reports all bytes
//! written; I/O errors (a full disk, a failed rename or open) are counted
//! in [`LogStats`] and the bytes dropped. After a failed open, output is
//! dropped until the next rotation point (`max_bytes` later), when the file
//! is opened again.
//!
//! The writer runs where serial output is produced, i.e. on the vCPU thread
//! (port-I/O exits): rotation costs a `rename` and an `openat` there, so a
//! seccomp filter for vCPU threads must allow both (see [`crate::seccomp`]).
//! Readers of the log (e.g. to find the guest's last words) should look in
//! `<path>.1` too when `<path>` is short.
//!
//! ```no_run
//! let log = vmm::console_log::RotatingLog::create("/run/pod/console.log", 1 << 20)?;
//! let stats = log.stats();
//! let mut cfg = vmm::VmConfig::new("/usr/local/lib/berth/vmlinux");
//! cfg.serial_out = Box::new(log);
//! // … after the VM ran:
//! println!("{} rotations, {} errors", stats.rotations(), stats.errors());
//! # Ok::<(), std::io::Error>(())
//! ```

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Counters of a [`RotatingLog`], readable while the log is owned by the
/// VM (get them with [`RotatingLog::stats`] before handing the log over).
#[derive(Debug, Default)]
pub struct LogStats {
    rotations: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
}

impl LogStats {
    /// Times the live file was renamed to `<path>.1` and a fresh one started.
    pub fn rotations(&self) -> u64 {
        self.rotations.load(Ordering::Relaxed)
    }

    /// I/O errors (failed writes, renames, opens); each was dropped.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Bytes not written: lost to I/O errors, or skipped because a single
    /// write was larger than the two files can hold.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A console log file capped at `max_bytes`, rotated to `<path>.1`; see the
/// [module documentation](self).
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    old_path: PathBuf,
    /// None after a failed open: output is dropped until the next rotation.
    file: Option<File>,
    /// Bytes accounted to the live file (written, or dropped after an error).
    len: u64,
    max_bytes: u64,
    stats: Arc<LogStats>,
}

impl RotatingLog {
    /// Creates (or truncates) `path`, mode 0640, not following a symlink
    /// there. `max_bytes` is the cap of each of the two files (at least 1).
    pub fn create(path: impl Into<PathBuf>, max_bytes: u64) -> io::Result<Self> {
        let path = path.into();
        let mut old = OsString::from(path.as_os_str());
        old.push(".1");
        let file = open_fresh(&path)?;
        Ok(RotatingLog {
            path,
            old_path: PathBuf::from(old),
            file: Some(file),
            len: 0,
            max_bytes: max_bytes.max(1),
            stats: Arc::new(LogStats::default()),
        })
    }

    /// The live file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the previous file goes on rotation (`<path>.1`).
    pub fn rotated_path(&self) -> &Path {
        &self.old_path
    }

    /// A handle on this log's counters.
    pub fn stats(&self) -> Arc<LogStats> {
        self.stats.clone()
    }

    fn error(&self, what: &str, e: &io::Error) {
        if self.stats.errors.fetch_add(1, Ordering::Relaxed) == 0 {
            // Only the first: a guest must not be able to flood the host's log.
            log::warn!(
                "vmm: console log {}: {what}: {e} (further errors only counted)",
                self.path.display()
            );
        }
    }

    /// Appends `data`, which fits the live file (`len + data.len() <= max`).
    fn append(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        let Some(file) = self.file.as_mut() else {
            self.stats
                .dropped
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            return;
        };
        if let Err(e) = file.write_all(data) {
            self.stats
                .dropped
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            self.error("write", &e);
        }
    }

    /// Renames the live file to `<path>.1` and starts a fresh one. Whatever
    /// fails, the live file's budget starts over, so that output is never
    /// retried more often than once per `max_bytes`.
    fn rotate(&mut self) {
        self.file = None;
        self.len = 0;
        self.stats.rotations.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = std::fs::rename(&self.path, &self.old_path) {
            // Without the rename the truncating open below still bounds
            // the disk use; only the previous output is lost.
            self.error("rotate", &e);
        }
        match open_fresh(&self.path) {
            Ok(f) => self.file = Some(f),
            Err(e) => self.error("reopen", &e),
        }
    }
}

fn open_fresh(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

impl Write for RotatingLog {
    /// Always takes the whole buffer (see the module documentation).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let max = self.max_bytes;
        let room = usize::try_from(max - self.len).unwrap_or(usize::MAX);
        if buf.len() <= room {
            self.append(buf);
            return Ok(buf.len());
        }
        // Fill the live file, then lay the rest out in files of `max`
        // bytes; only the last two can survive, so write just those.
        let (head, rest) = buf.split_at(room);
        self.append(head);
        self.rotate();
        let max_us = usize::try_from(max).unwrap_or(usize::MAX);
        let last = (rest.len() - 1) % max_us + 1;
        if rest.len() > last {
            let prev_start = rest.len() - last - max_us;
            self.stats
                .dropped
                .fetch_add(prev_start as u64, Ordering::Relaxed);
            self.append(&rest[prev_start..rest.len() - last]);
            self.rotate();
        }
        self.append(&rest[rest.len() - last..]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &Path) -> Vec<u8> {
        std::fs::read(p).unwrap_or_default()
    }

    fn setup(max: u64) -> (tempfile::TempDir, RotatingLog) {
        let dir = tempfile::tempdir().unwrap();
        let log = RotatingLog::create(dir.path().join("console.log"), max).unwrap();
        (dir, log)
    }

    #[test]
    fn rotation_boundary() {
        let (_dir, mut log) = setup(10);
        let (p, p1) = (log.path().to_path_buf(), log.rotated_path().to_path_buf());
        assert_eq!(p1.file_name().unwrap(), "console.log.1");
        log.write_all(b"0123456789").unwrap();
        // Exactly full: not rotated yet.
        assert_eq!(read(&p), b"0123456789");
        assert!(!p1.exists());
        assert_eq!(log.stats().rotations(), 0);
        log.write_all(b"a").unwrap();
        assert_eq!(read(&p1), b"0123456789");
        assert_eq!(read(&p), b"a");
        // A write crossing the boundary is split: the live file never exceeds max.
        log.write_all(b"bcdefghijXYZ").unwrap();
        assert_eq!(read(&p1), b"abcdefghij");
        assert_eq!(read(&p), b"XYZ");
        let stats = log.stats();
        assert_eq!(
            (stats.rotations(), stats.errors(), stats.dropped_bytes()),
            (2, 0, 0)
        );
    }

    #[test]
    fn many_small_writes_keep_the_newest_and_stay_bounded() {
        let (dir, mut log) = setup(100);
        let (p, p1) = (log.path().to_path_buf(), log.rotated_path().to_path_buf());
        let mut all = Vec::new();
        for i in 0..10_000u32 {
            let b = [b'a' + (i % 26) as u8];
            assert_eq!(log.write(&b).unwrap(), 1);
            all.push(b[0]);
            let on_disk: u64 = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum();
            assert!(on_disk <= 200, "{on_disk} bytes on disk after {i} writes");
        }
        // The two files, old then live, are exactly the newest output.
        let mut tail = read(&p1);
        tail.extend(read(&p));
        assert_eq!(tail, all[all.len() - 200..]);
        assert_eq!(log.stats().rotations(), 99);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn huge_single_write_keeps_the_last_two_files_only() {
        let (_dir, mut log) = setup(1000);
        let (p, p1) = (log.path().to_path_buf(), log.rotated_path().to_path_buf());
        log.write_all(b"start").unwrap();
        let huge: Vec<u8> = (0..10_000_003u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(log.write(&huge).unwrap(), huge.len());
        // Same result as writing it byte by byte: files of 1000 bytes
        // starting from "start"; the live one holds the remainder.
        let total = 5 + huge.len();
        let live = total % 1000;
        let mut all = b"start".to_vec();
        all.extend(&huge);
        assert_eq!(read(&p), all[total - live..]);
        assert_eq!(read(&p1), all[total - live - 1000..total - live]);
        // Only a few renames, not one per 1000 bytes.
        assert_eq!(log.stats().rotations(), 2);
        let dropped = log.stats().dropped_bytes();
        // Everything but the two files and the first, rotated-away file.
        assert_eq!(dropped, (total - live - 2000) as u64);
        // Writes go on normally afterwards.
        log.write_all(b"!").unwrap();
        assert_eq!(*read(&p).last().unwrap(), b'!');
    }

    #[test]
    fn io_errors_are_counted_and_never_fail_the_guest() {
        let (dir, mut log) = setup(10);
        // The directory goes away: renames and opens fail.
        let p = log.path().to_path_buf();
        std::fs::remove_dir_all(dir.path()).unwrap();
        for _ in 0..100 {
            assert_eq!(log.write(b"xyz").unwrap(), 3);
        }
        log.flush().unwrap();
        let stats = log.stats();
        assert!(stats.errors() > 0);
        // One rename and one open attempt per 10 bytes at most.
        assert!(stats.rotations() <= 30, "{}", stats.rotations());
        // The unlinked first file took 10 bytes; the rest was dropped.
        assert_eq!(stats.dropped_bytes(), 300 - 10);
        // The directory comes back: logging resumes at the next rotation.
        std::fs::create_dir(dir.path()).unwrap();
        log.write_all(&[b'q'; 25]).unwrap();
        assert_eq!(read(&p), b"qqqqq");
    }

    #[test]
    fn full_disk_writes_are_dropped() {
        if !Path::new("/dev/full").exists() {
            eprintln!("skipped: no /dev/full");
            return;
        }
        let mut log = RotatingLog {
            path: "/nonexistent/console.log".into(),
            old_path: "/nonexistent/console.log.1".into(),
            file: Some(OpenOptions::new().write(true).open("/dev/full").unwrap()),
            len: 0,
            max_bytes: 1 << 20,
            stats: Arc::new(LogStats::default()),
        };
        assert_eq!(log.write(b"hello").unwrap(), 5);
        assert_eq!(log.stats().errors(), 1);
        assert_eq!(log.stats().dropped_bytes(), 5);
    }

    #[test]
    fn a_symlink_at_the_path_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"precious").unwrap();
        let link = dir.path().join("console.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(RotatingLog::create(&link, 10).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    }
}
