//! `berth list [--format table|json]`

use crate::stage0::{stage1, store};
use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

#[derive(Args)]
pub struct ListArgs {
    /// Output format: table or json.
    #[arg(long, default_value = "table")]
    pub format: String,
}

#[derive(Serialize)]
struct Row {
    name: String,
    uuid: Option<String>,
    stage1: Option<String>,
    #[serde(flatten)]
    state: store::PodState,
    pid: Option<i32>,
    command: Vec<String>,
    /// A service pod's units (empty for a command pod).
    units: Vec<String>,
    rootfs: Option<String>,
    /// The pod's IPv4 address (`--net private`, while it runs).
    address: Option<String>,
    /// Why it ended, when not by its own doing (`oom-killed`).
    exit_reason: Option<String>,
}

pub fn list(store: &store::Store, a: ListArgs) -> Result<i32> {
    if a.format != "table" && a.format != "json" {
        bail!("invalid --format {:?}: expected table or json", a.format);
    }
    let rows: Vec<Row> = store
        .list()
        .iter()
        .map(|pod| {
            let spec = store::spec(pod);
            let state = store::state(pod);
            let running = state == store::PodState::Running;
            Row {
                name: crate::stage0::pod_name(pod),
                uuid: spec.as_ref().map(|s| s.uuid.clone()),
                stage1: stage1::of_pod(pod).map(|p| stage1_label(&p)),
                pid: (state == store::PodState::Running)
                    .then(|| store::pid(pod))
                    .flatten(),
                state,
                command: spec
                    .as_ref()
                    .map(|s| s.app.argv.clone())
                    .unwrap_or_default(),
                units: spec
                    .as_ref()
                    .and_then(|s| s.service.as_ref())
                    .map(|v| v.units.clone())
                    .unwrap_or_default(),
                rootfs: spec.as_ref().map(|s| s.rootfs.image.display().to_string()),
                // A stopped pod's lease is gone: its old address means nothing.
                address: running
                    .then(|| spec.as_ref().and_then(|s| s.network.address()))
                    .flatten()
                    .map(|a| a.to_string()),
                exit_reason: store::exit_reason(pod),
            }
        })
        .collect();
    if a.format == "json" {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    println!(
        "{:<24} {:<6} {:<12} {:<8} {:<15} COMMAND / UNITS",
        "NAME", "STAGE1", "STATE", "PID", "ADDRESS"
    );
    for r in rows {
        let what = if r.units.is_empty() {
            r.command.join(" ")
        } else {
            format!("units: {}", r.units.join(" "))
        };
        let state = match &r.exit_reason {
            Some(why) if r.state != store::PodState::Running => format!("{} {why}", r.state),
            _ => r.state.to_string(),
        };
        println!(
            "{:<24} {:<6} {:<12} {:<8} {:<15} {}",
            r.name,
            r.stage1.unwrap_or_else(|| "-".into()),
            state,
            r.pid.map_or("-".into(), |p| p.to_string()),
            r.address.unwrap_or_else(|| "-".into()),
            what
        );
    }
    Ok(0)
}

/// `ns`/`kvm` for the built-in stage1s, the path otherwise.
pub fn stage1_label(p: &std::path::Path) -> String {
    match p.file_name().and_then(|n| n.to_str()) {
        Some("berth-stage1-ns") => "ns".into(),
        Some("berth-stage1-kvm") => "kvm".into(),
        _ => p.display().to_string(),
    }
}
