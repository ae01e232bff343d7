//! `berth status NAME [--format text|json]`: the pod's state, stage1,
//! address, and — for a service pod — each unit's state (read inside the
//! pod with `systemctl show`).

use crate::stage0::{stage1, store};
use anyhow::{bail, Result};
use berth_spec::service::{parse_show, show_args, UnitState};
use clap::Args;
use serde::Serialize;

#[derive(Args)]
pub struct StatusArgs {
    /// Output format: text or json.
    #[arg(long, default_value = "text")]
    pub format: String,
    /// Pod name.
    pub name: String,
}

#[derive(Serialize)]
struct Status {
    name: String,
    stage1: Option<String>,
    #[serde(flatten)]
    state: store::PodState,
    /// Why it ended, when not by its own doing (`oom-killed`).
    exit_reason: Option<String>,
    address: Option<String>,
    units: Vec<UnitState>,
}

pub fn status(store: &store::Store, a: StatusArgs) -> Result<i32> {
    if a.format != "text" && a.format != "json" {
        bail!("invalid --format {:?}: expected text or json", a.format);
    }
    let pod = store.existing(&a.name)?;
    let spec = store::spec(&pod);
    let state = store::state(&pod);
    let running = state == store::PodState::Running;
    let units = match (&spec, running) {
        (Some(s), true) if s.service.is_some() => {
            let names = s
                .service
                .as_ref()
                .map(|v| v.units.clone())
                .unwrap_or_default();
            let r = super::exec::running(store, &a.name)?;
            parse_show(&names, &r.capture(&show_args(&names))?)
        }
        (Some(s), _) => s
            .service
            .iter()
            .flat_map(|v| v.units.iter())
            .map(|u| UnitState {
                unit: u.clone(),
                load: String::new(),
                active: "inactive".into(),
                sub: "dead".into(),
                result: String::new(),
            })
            .collect(),
        (None, _) => Vec::new(),
    };
    let st = Status {
        name: a.name.clone(),
        stage1: stage1::of_pod(&pod).map(|p| super::list::stage1_label(&p)),
        state,
        exit_reason: store::exit_reason(&pod),
        address: running
            .then(|| spec.as_ref().and_then(|s| s.network.address()))
            .flatten()
            .map(|a| a.to_string()),
        units,
    };
    if a.format == "json" {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(0);
    }
    let reason = st
        .exit_reason
        .as_ref()
        .map(|r| format!(", {r}"))
        .unwrap_or_default();
    println!("pod:     {}", st.name);
    println!("state:   {}{reason}", st.state);
    println!("stage1:  {}", st.stage1.as_deref().unwrap_or("-"));
    println!("address: {}", st.address.as_deref().unwrap_or("-"));
    for u in &st.units {
        println!("unit:    {}", u.describe());
    }
    Ok(0)
}
