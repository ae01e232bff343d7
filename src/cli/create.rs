//! `berth create -u UNIT… (--rootfs DIR | --host-share) [OPTIONS] NAME`: a
//! service pod, created but not started.

use super::pod_args::PodArgs;
use crate::stage0::build::{self, AppOptions};
use crate::stage0::{pod, service, store::Store};
use anyhow::{Context, Result};
use berth_spec::{Service, Stdio};
use clap::Args;

#[derive(Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub pod: PodArgs,
    /// A systemd unit to run (repeatable; templates as `getty@tty1.service`).
    #[arg(short = 'u', long = "unit", value_name = "UNIT", required = true)]
    pub units: Vec<String>,
    /// Share the host's /usr (read-only) instead of a --rootfs image, with a
    /// private /etc, /var and home (docs/service-pods.md lists the rules).
    #[arg(long)]
    pub host_share: bool,
    /// Pod name.
    #[arg(value_name = "NAME")]
    pub pod_name: String,
}

pub fn create(store: &Store, mut a: CreateArgs) -> Result<i32> {
    for u in &a.units {
        if !berth_spec::valid_unit_name(u) {
            anyhow::bail!(
                "invalid unit {u:?}: expected a unit name such as nginx.service or getty@tty1.service"
            );
        }
    }
    if a.pod.name.as_deref().is_some_and(|n| n != a.pod_name) {
        anyhow::bail!("the pod's name is given twice: --name and NAME");
    }
    a.pod.name = Some(a.pod_name.clone());
    let built = build::spec(
        store,
        &a.pod,
        AppOptions {
            argv: Vec::new(),
            user: None,
            // /dev/console is a pty: systemd's console output goes to app.log.
            stdio: Stdio {
                interactive: false,
                tty: true,
            },
            service: Some(Service {
                units: a.units.clone(),
            }),
            host_share: a.host_share,
        },
    )?;
    let mut spec = built.spec;
    let mut new = pod::claim(store, &spec.name)?;
    pod::allocate_users(store, &mut spec, a.pod.private_users)?;
    if a.host_share {
        service::build_host_share(&new.dir).context("cannot build the pod's private tree")?;
    }
    service::seed(&new.dir, &mut spec)?;
    new.write_spec(&spec, &built.stage1)?;
    new.keep();
    println!("{}", spec.name);
    if crate::stage0::systemd::booted() {
        eprintln!(
            "berth: start it with `berth start {n}`, or at every boot with `systemctl enable --now berth@{n}`",
            n = spec.name
        );
    }
    Ok(0)
}
