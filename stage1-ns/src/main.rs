//! berth-stage1-ns: runs a berth pod in Linux namespaces.
//!
//! Verbs (the stage1 contract in DESIGN.md): `run POD_DIR`, `exec POD_DIR --
//! CMD...`, `stop POD_DIR [--force] [--timeout S]`, `gc POD_DIR`.

mod app;
mod cgroups;
mod chan;
mod exec;
mod init;
mod lifecycle;
mod mounts;
mod run;
mod security;
mod supervise;

use berth_spec::{PodDir, User, EXIT_BERTH_FAILED};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "berth-stage1-ns",
    version,
    about = "berth stage1: Linux namespaces"
)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Run the pod in the foreground; exit with the app's status.
    Run { pod_dir: PathBuf },
    /// Run a command in a running pod.
    Exec {
        pod_dir: PathBuf,
        #[arg(short, long)]
        interactive: bool,
        #[arg(short, long)]
        tty: bool,
        #[arg(short, long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        #[arg(short, long = "workdir", value_name = "DIR")]
        workdir: Option<String>,
        #[arg(short, long, value_name = "UID:GID")]
        user: Option<String>,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Stop a running pod (SIGTERM, then SIGKILL after the timeout).
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
        Verb::Exec {
            pod_dir,
            interactive,
            tty,
            env,
            workdir,
            user,
            cmd,
        } => parse_user(user.as_deref()).and_then(|user| {
            exec::exec(
                &PodDir::new(pod_dir),
                exec::ExecOptions {
                    argv: cmd,
                    env,
                    cwd: workdir,
                    user,
                    interactive,
                    tty,
                },
            )
        }),
        Verb::Stop {
            pod_dir,
            force,
            timeout,
        } => {
            lifecycle::stop(&PodDir::new(pod_dir), force, Duration::from_secs(timeout)).map(|()| 0)
        }
        Verb::Gc { pod_dir } => lifecycle::gc(&PodDir::new(pod_dir)).map(|()| 0),
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

/// `UID:GID` as resolved by stage0 (numeric).
fn parse_user(s: Option<&str>) -> anyhow::Result<Option<User>> {
    let Some(s) = s else { return Ok(None) };
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    match (u.parse(), g.parse()) {
        (Ok(uid), Ok(gid)) => Ok(Some(User { uid, gid })),
        _ => anyhow::bail!("user {s:?} is not UID:GID"),
    }
}
