//! The command line every stage1 executable accepts (the verbs of the stage
//! contract in DESIGN.md), and how a stage1 reports a failure: one line
//! `berth: <error chain>` on stderr and exit code 125.

use crate::EXIT_BERTH_FAILED;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    version,
    about = "A berth stage1: runs the pod described by POD_DIR/pod.json"
)]
pub struct Stage1Cli {
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Subcommand)]
pub enum Verb {
    /// Run the pod in the foreground; exit with the app's status.
    Run { pod_dir: PathBuf },
    /// Run a command in a running pod; exit with its status.
    Exec(ExecArgs),
    /// Stop a running pod (SIGTERM to the app, SIGKILL after the timeout).
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

/// The `exec` verb's arguments.
#[derive(clap::Args)]
pub struct ExecArgs {
    pub pod_dir: PathBuf,
    #[arg(short, long)]
    pub interactive: bool,
    #[arg(short, long)]
    pub tty: bool,
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    #[arg(short, long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    #[arg(short, long, value_name = "UID:GID")]
    pub user: Option<String>,
    /// With -t: this byte on stdin (29 = ^]) detaches: the session hangs up.
    #[arg(long, value_name = "BYTE")]
    pub escape_byte: Option<u8>,
    #[arg(last = true, required = true)]
    pub cmd: Vec<String>,
}

/// What to run for `exec`, checked.
pub struct ExecOptions {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub user: Option<crate::User>,
    pub interactive: bool,
    pub tty: bool,
    pub escape: Option<u8>,
}

impl ExecArgs {
    /// The pod directory and the checked options (the user parsed).
    pub fn options(self) -> anyhow::Result<(crate::PodDir, ExecOptions)> {
        let user = parse_user(self.user.as_deref())?;
        Ok((
            crate::PodDir::new(self.pod_dir),
            ExecOptions {
                argv: self.cmd,
                env: self.env,
                cwd: self.workdir,
                user,
                interactive: self.interactive,
                tty: self.tty,
                escape: self.escape_byte.filter(|_| self.tty),
            },
        ))
    }
}

/// Parse the command line and set up logging (`BERTH_LOG`, set by stage0
/// from `--log-level`).
pub fn parse() -> Stage1Cli {
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("BERTH_LOG", "warn"))
        .format_timestamp(None)
        .init();
    Stage1Cli::parse()
}

/// Exit with the status, or print the error chain on one line and exit 125
/// (every berth binary reports failures this way).
pub fn exit_with(result: anyhow::Result<i32>) -> ! {
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // `{:#}`: the error and its causes, `a: b: c`.
            eprintln!("berth: {e:#}");
            std::process::exit(EXIT_BERTH_FAILED);
        }
    }
}

/// `UID:GID` (numeric, as stage0 passes it) for `exec --user`.
pub fn parse_user(s: Option<&str>) -> anyhow::Result<Option<crate::User>> {
    let Some(s) = s else { return Ok(None) };
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    match (u.parse(), g.parse()) {
        (Ok(uid), Ok(gid)) => Ok(Some(crate::User { uid, gid })),
        _ => anyhow::bail!("user {s:?} is not UID:GID"),
    }
}

/// Puts the host terminal (stdin) in raw mode for a `-t` session; restores
/// it on drop. Shared by both stage1s.
pub struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    /// Raw mode on stdin if it is a terminal; `None` otherwise.
    pub fn enter() -> Option<RawMode> {
        // SAFETY: termios is plain data filled by tcgetattr; cfmakeraw and
        // tcsetattr read the local copy. A non-terminal stdin makes
        // tcgetattr fail and nothing is changed.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(0, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            Some(RawMode { saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter` on the same fd.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.saved) };
    }
}

/// The host terminal's window size (rows, cols), if stdin is a terminal.
pub fn host_winsize() -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we pass; it fails
    // harmlessly when fd 0 is not a terminal.
    (unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) } == 0).then_some((ws.ws_row, ws.ws_col))
}
