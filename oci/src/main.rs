//! berth-oci: an OCI runtime speaking runc's command line, so podman
//! (conmon) and containerd (containerd-shim-runc-v2) run containers as
//! berth pods, on the ns stage1 or — per container, annotation
//! `run.berth.stage1=kvm` — in a microVM. See docs/oci.md.

mod bundle;
mod cmd;
mod state;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "berth-oci",
    version,
    about = "OCI runtime (runc's command line) running containers as berth pods"
)]
pub struct Cli {
    /// State directory: one berth pod directory per container.
    #[arg(long, global = true, default_value = "/run/berth-oci")]
    root: PathBuf,
    /// Append errors (and with --debug, debug messages) to this file.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// text or json.
    #[arg(long = "log-format", global = true, default_value = "text")]
    log_format: String,
    /// Accepted for runc compatibility: berth places each pod in its own
    /// cgroup (/berth/<uuid>) whatever the cgroup driver.
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    #[arg(long, global = true)]
    debug: bool,
    /// Accepted for runc compatibility (berth-oci runs as root).
    #[arg(long, global = true)]
    rootless: Option<String>,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
pub enum Verb {
    /// Create a container: its process exists and waits for `start`.
    Create(cmd::CreateArgs),
    /// Start the user process of a created container.
    Start { id: String },
    /// Create, start and wait for a container; exit with its status.
    Run(cmd::CreateArgs),
    /// Print the container's OCI state.
    State { id: String },
    /// Send a signal to the container (default SIGTERM).
    Kill {
        id: String,
        signal: Option<String>,
        /// Every process of the container.
        #[arg(short, long)]
        all: bool,
    },
    /// Remove a stopped container (--force: kill it first).
    Delete {
        id: String,
        #[arg(short, long)]
        force: bool,
    },
    /// Run a process in a running container.
    Exec(Box<cmd::ExecArgs>),
    /// List the container's processes.
    Ps {
        #[arg(short, long, default_value = "table")]
        format: String,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Print what this runtime supports (runtime-spec features.md).
    Features,
    /// Not supported by berth (the error names the verb).
    #[command(external_subcommand)]
    Other(Vec<String>),
}

fn main() {
    let cli = Cli::parse();
    let level = if cli.debug { "debug" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("BERTH_LOG", level))
        .format_timestamp(None)
        .init();
    if cli.debug {
        std::env::set_var("BERTH_LOG", "debug");
    }
    let result = cmd::dispatch(&cli);
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let msg = format!("{e:#}");
            eprintln!("berth-oci: {msg}");
            log_error(&cli, &msg);
            std::process::exit(1);
        }
    }
}

/// runc's error log: `{"level":"error","msg":…,"time":…}` with
/// `--log-format json`, logrus' text line otherwise.
fn log_error(cli: &Cli, msg: &str) {
    let Some(path) = &cli.log else { return };
    let time = state::now_rfc3339();
    let line = if cli.log_format == "json" {
        serde_json::json!({"level": "error", "msg": msg, "time": time}).to_string()
    } else {
        format!("time={time:?} level=error msg={msg:?}")
    };
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}
