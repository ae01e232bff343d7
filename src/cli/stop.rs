//! `berth stop [--force] [--timeout S] NAME`

use crate::stage0::{stage1, store};
use anyhow::{Context, Result};
use clap::Args;

#[derive(Args)]
pub struct StopArgs {
    /// Kill at once instead of asking the app to stop.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Seconds to wait after SIGTERM before killing.
    #[arg(short = 't', long, default_value_t = 10)]
    pub timeout: u64,
    /// Pod name.
    pub name: String,
}

pub fn stop(store: &store::Store, a: StopArgs) -> Result<i32> {
    let pod = store.existing(&a.name)?;
    // A pod that its unit runs is stopped through the unit (whose ExecStop
    // comes back here, inside the unit, and stops it directly).
    if crate::stage0::systemd::use_unit(&a.name) && crate::stage0::systemd::unit_active(&a.name) {
        return crate::stage0::systemd::systemctl("stop", &a.name);
    }
    stop_pod(&pod, a.force, a.timeout)?;
    Ok(0)
}

pub fn stop_pod(pod: &berth_spec::PodDir, force: bool, timeout: u64) -> Result<()> {
    if !store::is_running(pod) {
        return Ok(());
    }
    let s1 = stage1::of_pod(pod).context("pod records no stage1")?;
    let mut args = vec![format!("--timeout={timeout}")];
    if force {
        args.push("--force".into());
    }
    let st = stage1::command(&s1, "stop", pod, &args)
        .status()
        .with_context(|| format!("cannot run {}", s1.display()))?;
    if !st.success() {
        anyhow::bail!("stage1 could not stop the pod");
    }
    Ok(())
}
