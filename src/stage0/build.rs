//! From command-line options to a checked [`PodSpec`]: every value is
//! validated (one-line errors naming it) before anything is created.

use super::{parse, pod};
use crate::cli::pod_args::PodArgs;
use anyhow::{bail, Result};
use berth_spec::{
    App, KvmSettings, Network, NetworkMode, PodSpec, PortMapping, Resources, Rootfs, Security,
    Stdio, User, SPEC_VERSION,
};
use std::path::PathBuf;

/// What the pod runs, beyond the shared options.
pub struct AppOptions {
    pub argv: Vec<String>,
    pub user: Option<String>,
    pub stdio: Stdio,
}

/// A checked spec, and the ports to publish when its network is private
/// (the address is leased when the pod starts).
pub struct Built {
    pub spec: PodSpec,
    pub ports: Option<Vec<PortMapping>>,
    pub stage1: PathBuf,
}

/// Turn the options into a spec. Creates nothing.
pub fn spec(a: &PodArgs, app: AppOptions) -> Result<Built> {
    let stage1 = super::stage1::resolve(&a.stage1)?;
    let is_kvm = super::stage1::is_kvm(&stage1);
    let Some(rootfs) = &a.rootfs else {
        bail!("--rootfs is required");
    };
    let image = parse::absolute(rootfs);
    if !image.is_dir() {
        bail!(
            "rootfs {} does not exist or is not a directory",
            rootfs.display()
        );
    }
    let uuid = pod::new_uuid()?;
    let name = match &a.name {
        Some(n) if berth_spec::valid_pod_name(n) => n.clone(),
        Some(n) => bail!("invalid pod name {n:?}: use letters, digits, '_', '.', '-' (at most 63, starting with a letter or digit)"),
        None => format!("berth-{}", &uuid[..8]),
    };
    let hostname = match &a.hostname {
        Some(h) if berth_spec::valid_hostname(h) => h.clone(),
        Some(h) => bail!("invalid hostname {h:?}"),
        None => pod::hostname_for(&name),
    };
    let mounts = a
        .volume
        .iter()
        .map(|v| parse::volume(v))
        .collect::<Result<Vec<_>, _>>()?;
    let env = a
        .env
        .iter()
        .map(|e| parse::env(e))
        .collect::<Result<Vec<_>, _>>()?;
    let (uid, gid) = match &app.user {
        Some(u) => parse::user(u, &image)?,
        None => (0, 0),
    };
    if !a.workdir.starts_with('/') {
        bail!("invalid workdir {:?}: must be an absolute path", a.workdir);
    }
    let (mode, ports) = network(a, is_kvm)?;
    let devices = a
        .device
        .iter()
        .map(|d| parse::device(d))
        .collect::<Result<Vec<_>, _>>()?;
    if is_kvm && !devices.is_empty() {
        bail!(
            "invalid --device {:?}: host devices cannot be given to a VM (--stage1=kvm)",
            a.device[0]
        );
    }
    let resources = resources(a, is_kvm)?;
    let spec = PodSpec {
        version: SPEC_VERSION,
        machine_id: uuid.replace('-', ""),
        uuid,
        name,
        app: App {
            argv: app.argv,
            env,
            cwd: a.workdir.clone(),
            user: User { uid, gid },
        },
        hostname,
        rootfs: Rootfs { image },
        mounts,
        devices,
        // The address is leased at start; until then a private pod has none.
        network: if mode == NetworkMode::Private {
            Network::none()
        } else {
            Network {
                mode,
                private: None,
            }
        },
        resources,
        security: security(a)?,
        stdio: app.stdio,
        kvm: is_kvm.then(KvmSettings::default),
    };
    spec.validate()?;
    Ok(Built {
        spec,
        ports: (mode == NetworkMode::Private).then_some(ports),
        stage1,
    })
}

fn network(a: &PodArgs, is_kvm: bool) -> Result<(NetworkMode, Vec<PortMapping>)> {
    let mode = match a.net.as_str() {
        "private" => NetworkMode::Private,
        "none" => NetworkMode::None,
        "host" => NetworkMode::Host,
        other => bail!("invalid --net {other:?}: expected private, none or host"),
    };
    if mode == NetworkMode::Host && is_kvm {
        bail!("--net host is impossible with --stage1=kvm: a VM cannot share the host's network namespace");
    }
    let ports = a
        .port
        .iter()
        .map(|p| parse::port(p))
        .collect::<Result<Vec<_>, _>>()?;
    if !ports.is_empty() && mode != NetworkMode::Private {
        bail!(
            "invalid --port {:?}: publishing ports needs --net private, not --net {}",
            a.port[0],
            mode.as_str()
        );
    }
    for (i, p) in ports.iter().enumerate() {
        if ports[..i]
            .iter()
            .any(|q| q.host_port == p.host_port && q.protocol == p.protocol)
        {
            bail!(
                "invalid --port {:?}: host port {}/{} is published twice",
                a.port[i],
                p.host_port,
                p.protocol.as_str()
            );
        }
    }
    Ok((mode, ports))
}

fn resources(a: &PodArgs, is_kvm: bool) -> Result<Resources> {
    let memory = a.memory.as_deref().map(parse::memory).transpose()?;
    if let Some(m) = memory {
        if is_kvm && m < berth_spec::KVM_MIN_MEMORY {
            bail!(
                "invalid --memory {:?}: a VM needs at least {} MiB",
                a.memory.as_deref().unwrap_or_default(),
                berth_spec::KVM_MIN_MEMORY >> 20
            );
        }
        let total = parse::host_memory();
        if total.is_some_and(|t| m > t) {
            bail!(
                "invalid --memory {:?}: more than this host's {} MiB of RAM",
                a.memory.as_deref().unwrap_or_default(),
                total.unwrap_or(0) >> 20
            );
        }
    }
    let cpu_millis = a.cpus.as_deref().map(parse::cpus).transpose()?;
    if let (true, Some(m)) = (is_kvm, cpu_millis) {
        let vcpus = m.div_ceil(1000);
        if vcpus > 254 {
            bail!(
                "invalid --cpus {:?}: a VM has at most 254 vCPUs",
                a.cpus.as_deref().unwrap_or_default()
            );
        }
    }
    Ok(Resources {
        memory,
        cpu_millis,
        pids: a.pids.as_deref().map(parse::pids).transpose()?,
        disk: a.disk.as_deref().map(parse::disk).transpose()?,
    })
}

fn security(a: &PodArgs) -> Result<Security> {
    let mut security = Security::default();
    for c in &a.cap_drop {
        let drop = parse::capability(c)?;
        security.capabilities.retain(|k| !drop.contains(k));
    }
    for c in &a.cap_add {
        for cap in parse::capability(c)? {
            if !security.capabilities.contains(&cap) {
                security.capabilities.push(cap);
            }
        }
    }
    Ok(security)
}
