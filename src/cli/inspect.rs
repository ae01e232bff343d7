//! `berth inspect NAME [--format text|json]`: a pod's full state.

use crate::stage0::{stage1, store};
use anyhow::{bail, Context, Result};
use berth_spec::landlock::LandlockState;
use berth_spec::{PodSpec, PortMapping};
use clap::Args;
use serde::Serialize;

#[derive(Args)]
pub struct InspectArgs {
    /// Output format: text or json.
    #[arg(long, default_value = "text")]
    pub format: String,
    /// Pod name.
    pub name: String,
}

#[derive(Serialize)]
struct Inspect {
    name: String,
    stage1: Option<String>,
    #[serde(flatten)]
    status: store::PodState,
    pid: Option<i32>,
    /// Why the pod ended, when the status alone does not say it
    /// (`oom-killed`).
    exit_reason: Option<String>,
    network: &'static str,
    address: Option<String>,
    gateway: Option<String>,
    bridge: Option<String>,
    host_interface: Option<String>,
    ports: Vec<PortMapping>,
    /// As its stage1 applied it at the last start (null: never started,
    /// or a stage1 that does not record it).
    landlock: Option<LandlockState>,
    /// `--security-label`, as given.
    security_label: Option<String>,
    spec: PodSpec,
}

pub fn inspect(store: &store::Store, a: InspectArgs) -> Result<i32> {
    if a.format != "text" && a.format != "json" {
        bail!("invalid --format {:?}: expected text or json", a.format);
    }
    let pod = store.existing(&a.name)?;
    let spec = PodSpec::load(&pod).with_context(|| format!("pod {}", a.name))?;
    let status = store::state(&pod);
    let p = spec.network.private.as_ref();
    let i = Inspect {
        name: a.name.clone(),
        stage1: stage1::of_pod(&pod).map(|s| super::list::stage1_label(&s)),
        pid: (status == store::PodState::Running)
            .then(|| store::pid(&pod))
            .flatten(),
        exit_reason: (status != store::PodState::Running)
            .then(|| store::exit_reason(&pod))
            .flatten(),
        status,
        network: spec.network.mode.as_str(),
        address: p.map(|p| p.address.to_string()),
        gateway: p.map(|p| p.gateway.to_string()),
        bridge: p.map(|p| p.bridge.clone()),
        host_interface: p.map(|p| p.host_ifname.clone()),
        ports: p.map(|p| p.ports.clone()).unwrap_or_default(),
        landlock: LandlockState::recorded(&pod)
            .or((spec.security.landlock == berth_spec::LandlockMode::Off)
                .then_some(LandlockState::Off)),
        security_label: spec.security.label.as_ref().map(|l| l.to_string()),
        spec: spec.clone(),
    };
    if a.format == "json" {
        println!("{}", serde_json::to_string_pretty(&i)?);
        return Ok(0);
    }
    let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    println!("name:      {}", i.name);
    println!("uuid:      {}", spec.uuid);
    println!("stage1:    {}", dash(&i.stage1));
    match &i.exit_reason {
        Some(r) => println!("status:    {} ({r})", i.status),
        None => println!("status:    {}", i.status),
    }
    println!("pid:       {}", i.pid.map_or("-".into(), |p| p.to_string()));
    println!("command:   {}", spec.app.argv.join(" "));
    println!("rootfs:    {}", spec.rootfs.image.display());
    println!(
        "landlock:  {}",
        i.landlock
            .as_ref()
            .map_or("- (not started yet)".into(), LandlockState::describe)
    );
    println!("label:     {}", dash(&i.security_label));
    println!("network:   {}", i.network);
    if let Some(p) = p {
        println!("address:   {}/{}", p.address, p.prefix_len);
        println!("gateway:   {} (bridge {})", p.gateway, p.bridge);
        println!(
            "interface: {} (host side {}, mac {})",
            p.ifname, p.host_ifname, p.mac
        );
        let ports: Vec<String> = p.ports.iter().map(|m| m.to_string()).collect();
        println!(
            "ports:     {}",
            if ports.is_empty() {
                "-".into()
            } else {
                ports.join(", ")
            }
        );
    }
    Ok(0)
}
