//! `berth run [OPTIONS] -- CMD [ARGS...]`: create a pod and run a command in
//! it (stage0's launcher does the work).

use super::pod_args::PodArgs;
use crate::stage0::build::{self, AppOptions};
use crate::stage0::launch::{self, Attach, Launch};
use crate::stage0::{fds, pod, store::Store};
use anyhow::{Context, Result};
use berth_spec::{NetworkMode, Stdio};
use clap::Args;

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub pod: PodArgs,
    /// User to run as, numeric.
    #[arg(short = 'u', long, value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Keep stdin open.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Run in the background and print the pod's name.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Remove the pod when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Pass N more inherited file descriptors (from 3, after any of systemd
    /// socket activation) to the app.
    #[arg(long = "preserve-fds", value_name = "N", default_value_t = 0)]
    pub preserve_fds: u32,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

pub fn run(store: &Store, a: RunArgs, listen: &fds::PassFds) -> Result<i32> {
    let pass = fds::pass(listen, a.preserve_fds)?;
    let built = build::spec(
        store,
        &a.pod,
        AppOptions {
            argv: a.cmd.clone(),
            user: a.user.clone(),
            stdio: Stdio {
                interactive: a.interactive,
                tty: a.tty,
            },
            service: None,
            host_share: false,
        },
    )?;
    if pass.count > 0 && built.spec.kvm.is_some() {
        anyhow::bail!(
            "cannot pass {} file descriptor(s) (--preserve-fds or socket activation) into a VM: \
             --stage1=kvm shares no descriptors with the host; use --stage1=ns",
            pass.count
        );
    }
    if built.spec.network.mode == NetworkMode::Host {
        eprintln!(
            "berth: warning: --net host shares the host's network namespace: the pod can reach \
             host-only sockets (abstract unix sockets, services bound to 127.0.0.1)"
        );
    }
    let mut new = pod::claim(store, &built.spec.name)?;
    let mut spec = built.spec;
    pod::allocate_users(store, &mut spec, a.pod.private_users)?;
    new.write_spec(&spec, &built.stage1)?;
    let lock = new.lock.take().context("pod lock missing")?;
    let out = launch::start(Launch {
        store,
        pod: &new.dir,
        lock,
        stage1: built.stage1,
        attach: if a.detach {
            Attach::Detached
        } else {
            Attach::Foreground
        },
        remove_on_exit: a.rm,
        pass,
    })?;
    // A pod that never started goes like a failed create — unless its
    // clean-up failed, then it stays for `berth gc` to retry. A pod that
    // ran stays (or, with --rm, has removed itself).
    if out.started || !out.collected {
        new.keep();
    }
    if out.started && a.detach {
        println!("{}", spec.name);
    }
    Ok(out.code)
}
