//! berth-stage1-kvm: runs a berth pod in a KVM microVM on berth's own VMM.
//!
//! Verbs (the stage1 contract in DESIGN.md): `run POD_DIR`, `exec POD_DIR --
//! CMD...` (needs the vsock control channel: not yet), `stop POD_DIR
//! [--force] [--timeout S]`, `gc POD_DIR`.

mod assets;
mod disk;
mod initramfs;
mod run;

use anyhow::{bail, Result};
use berth_spec::state::{self, StateError};
use berth_spec::{PodDir, EXIT_BERTH_FAILED};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "berth-stage1-kvm",
    version,
    about = "berth stage1: KVM microVM"
)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Run the pod in the foreground; exit with the app's status.
    Run { pod_dir: PathBuf },
    /// Run a command in a running pod (not supported yet).
    Exec {
        pod_dir: PathBuf,
        #[arg(short, long)]
        interactive: bool,
        #[arg(short, long)]
        tty: bool,
        #[arg(short, long = "env")]
        env: Vec<String>,
        #[arg(short, long = "workdir")]
        workdir: Option<String>,
        #[arg(short, long)]
        user: Option<String>,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Stop a running pod: the app gets SIGTERM, the VM is killed after the timeout.
    Stop {
        pod_dir: PathBuf,
        #[arg(long)]
        force: bool,
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Release host resources of a dead pod.
    Gc { pod_dir: PathBuf },
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("BERTH_LOG", "warn"))
        .format_timestamp(None)
        .init();
    let cli = Cli::parse();
    let result = match cli.verb {
        Verb::Run { pod_dir } => run::run(&PodDir::new(pod_dir)),
        Verb::Exec { .. } => Err(anyhow::anyhow!(
            "exec is not supported by the kvm stage1 yet (it needs the vsock control channel)"
        )),
        Verb::Stop {
            pod_dir,
            force,
            timeout,
        } => state::stop(&PodDir::new(pod_dir), force, Duration::from_secs(timeout))
            .map(|()| 0)
            .map_err(Into::into),
        Verb::Gc { pod_dir } => gc(&PodDir::new(pod_dir)).map(|()| 0),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("berth: {}", chain.join(": "));
            std::process::exit(EXIT_BERTH_FAILED);
        }
    }
}

/// A kvm pod holds nothing on the host outside its directory (its overlay
/// mount lived in the dead stage1's mount namespace), so gc only checks that
/// the pod is not running.
fn gc(pod: &PodDir) -> Result<()> {
    match state::take_life_lock(pod) {
        Ok(_) | Err(StateError::Open { .. }) => Ok(()),
        Err(StateError::Busy(name)) => bail!("pod {name} is running"),
        Err(e) => Err(e.into()),
    }
}
