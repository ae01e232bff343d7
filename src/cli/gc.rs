//! `berth gc`: collect every pod that is no longer running — remove exited
//! command pods and pods marked for removal; release what a killed stage1
//! left behind. Idempotent.

use crate::stage0::{gc, store};
use anyhow::Result;
use nix::fcntl::{Flock, FlockArg};

pub fn gc(store: &store::Store) -> Result<i32> {
    let mut failed = false;
    for pod in store.list() {
        // Hold the life lock while collecting, so a pod being created or
        // started right now is never collected.
        let Ok(file) = std::fs::File::open(pod.lock_file()) else {
            // No lock file: a pod dir from a crashed stage0, never started.
            if store::pid(&pod).is_none() {
                store::remove(&pod)?;
                println!("{}", crate::stage0::pod_name(&pod));
            }
            continue;
        };
        let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        match gc::remove(&pod, Some(&lock)) {
            Ok(()) => println!("{}", crate::stage0::pod_name(&pod)),
            Err(e) => {
                eprintln!("berth: gc {}: {e:#}", crate::stage0::pod_name(&pod));
                failed = true;
            }
        }
    }
    Ok(if failed {
        berth_spec::EXIT_BERTH_FAILED
    } else {
        0
    })
}
