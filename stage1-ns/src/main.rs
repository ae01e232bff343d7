//! berth-stage1-ns: runs a berth pod in Linux namespaces.
//!
//! Verbs (the stage1 contract in DESIGN.md): `run POD_DIR`, `exec POD_DIR --
//! CMD...`, `stop POD_DIR [--force] [--timeout S]`, `gc POD_DIR`.

mod app;
mod chan;
mod exec;
mod init;
mod lifecycle;
mod mounts;
mod oci;
mod run;
mod sealed;
mod security;
mod service;
mod supervise;
mod userns;

use berth_spec::stage1_cli::{self, Verb};
use berth_spec::PodDir;
use std::time::Duration;

fn main() {
    // Nothing stage0 did not mean to pass may reach a pod.
    let pass = berth_spec::state::sanitize_fds();
    let result = match stage1_cli::parse().verb {
        Verb::Run { pod_dir } => run::run(&PodDir::new(pod_dir), &pass),
        Verb::Exec(args) => args
            .options()
            .and_then(|(pod, opts)| exec::exec(&pod, opts)),
        Verb::Stop {
            pod_dir,
            force,
            timeout,
        } => {
            lifecycle::stop(&PodDir::new(pod_dir), force, Duration::from_secs(timeout)).map(|()| 0)
        }
        Verb::Gc { pod_dir } => lifecycle::gc(&PodDir::new(pod_dir)).map(|()| 0),
    };
    stage1_cli::exit_with(result)
}
