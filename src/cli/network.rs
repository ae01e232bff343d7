//! `berth network ls|inspect|rm`: the host side of `--net private` — the
//! bridge, berth's nftables tables (families ip and bridge) and the address
//! leases. The bridge and tables are created by the first `run` that needs
//! them and kept; `network rm` removes them.

use crate::stage0::store::Store;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct NetworkArgs {
    #[command(subcommand)]
    pub cmd: NetworkCmd,
}

#[derive(Subcommand)]
pub enum NetworkCmd {
    /// Show the bridge, subnet, table and the number of leases.
    Ls(FormatArg),
    /// Show the network in full: what exists on the host and every lease.
    Inspect(FormatArg),
    /// Remove the bridge, both nft tables and their record. Refused while
    /// any pod holds a lease.
    Rm(RmArgs),
}

#[derive(Args)]
pub struct FormatArg {
    /// Output format: text or json.
    #[arg(long, default_value = "text")]
    pub format: String,
}

#[derive(Args)]
pub struct RmArgs {
    /// First collect the leases of pods that no longer run (running pods
    /// still refuse the removal).
    #[arg(long, short = 'f')]
    pub force: bool,
}

fn check_format(f: &str) -> Result<()> {
    if f != "text" && f != "json" {
        bail!("invalid --format {f:?}: expected text or json");
    }
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "present"
    } else {
        "absent"
    }
}

pub fn network(store: &Store, a: NetworkArgs) -> Result<i32> {
    let cfg = berth_net::HostConfig::load(store.root())?;
    match a.cmd {
        NetworkCmd::Ls(f) => {
            check_format(&f.format)?;
            let i = berth_net::inspect(store.root(), &cfg)?;
            if f.format == "json" {
                println!("{}", serde_json::to_string_pretty(&[&i])?);
                return Ok(0);
            }
            println!(
                "{:<15} {:<18} {:<20} {:<14} LEASES",
                "BRIDGE", "SUBNET", "NFT TABLE", "STATE"
            );
            println!(
                "{:<15} {:<18} {:<20} {:<14} {}",
                i.bridge,
                i.subnet,
                i.nft_table,
                i.state,
                i.leases.len()
            );
        }
        NetworkCmd::Inspect(f) => {
            check_format(&f.format)?;
            let i = berth_net::inspect(store.root(), &cfg)?;
            if f.format == "json" {
                println!("{}", serde_json::to_string_pretty(&i)?);
                return Ok(0);
            }
            println!("state:        {}", i.state);
            println!("bridge:       {} ({})", i.bridge, yes_no(i.bridge_exists));
            println!(
                "subnet:       {} (gateway {})",
                i.subnet,
                i.gateway.map_or("-".into(), |g| g.to_string())
            );
            println!(
                "nft tables:   ip {} ({}), bridge {} ({})",
                i.nft_table,
                yes_no(i.ip_table_exists),
                i.nft_table,
                yes_no(i.bridge_table_exists)
            );
            if let Some(c) = &i.configured {
                println!(
                    "berth.toml:   bridge {}, subnet {}, table {} (replaces the above once no pod uses it)",
                    c.bridge, c.subnet, c.nft_table
                );
            }
            if let Some(p) = &i.config {
                println!("config file:  {}", p.display());
            }
            println!("leases:       {}", i.leases.len());
            for l in &i.leases {
                let ports: Vec<String> = l.ports.iter().map(|p| p.to_string()).collect();
                println!(
                    "  {:<15} {:<20} {} ports [{}]{}",
                    l.address.to_string(),
                    l.pod,
                    l.host_interface,
                    ports.join(", "),
                    if l.live { "" } else { " (not running)" }
                );
            }
        }
        NetworkCmd::Rm(r) => {
            for s in berth_net::remove(store.root(), &cfg, r.force)? {
                println!(
                    "removed bridge {} and nft tables ip/bridge {}",
                    s.bridge, s.nft_table
                );
            }
        }
    }
    Ok(0)
}
