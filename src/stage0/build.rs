//! From command-line options to a checked [`PodSpec`]: every value is
//! validated (one-line errors naming it) before anything is created.

use super::{parse, pod, service, store::Store};
use crate::cli::pod_args::PodArgs;
use anyhow::{bail, Result};
use berth_spec::{
    App, KvmSettings, Network, NetworkMode, PodSpec, PortMapping, Resources, Rootfs, Security,
    Service, Stdio, User, SPEC_VERSION,
};
use std::path::PathBuf;

/// What the pod runs, beyond the shared options.
pub struct AppOptions {
    /// The command (ignored for a service pod: systemd is found in the image).
    pub argv: Vec<String>,
    pub user: Option<String>,
    pub stdio: Stdio,
    /// A service pod's units.
    pub service: Option<Service>,
    /// `--host-share`: the host's /usr instead of a `--rootfs` image.
    pub host_share: bool,
}

/// A checked spec and its stage1.
pub struct Built {
    pub spec: PodSpec,
    pub stage1: PathBuf,
}

/// Turn the options into a spec. Creates nothing (a host-share pod's
/// private tree is made by [`service::build_host_share`] once the name is
/// claimed).
pub fn spec(store: &Store, a: &PodArgs, app: AppOptions) -> Result<Built> {
    let stage1 = super::stage1::resolve(&a.stage1)?;
    let is_kvm = super::stage1::is_kvm(&stage1);
    let uuid = pod::new_uuid()?;
    let name = match &a.name {
        Some(n) if berth_spec::valid_pod_name(n) => n.clone(),
        Some(n) => bail!("invalid pod name {n:?}: use letters, digits, '_', '.', '-' (at most 63, starting with a letter or digit)"),
        None => format!("berth-{}", &uuid[..8]),
    };
    // The tree systemd and the units are looked up in: the image, or the
    // host's own for --host-share.
    let (image, lookup_root, mut mounts) = match (&a.rootfs, app.host_share) {
        (Some(_), true) => bail!("--rootfs and --host-share exclude each other"),
        (None, true) => (
            store.pod(&name).host_share_tree(),
            PathBuf::from("/"),
            service::host_share_mounts()?,
        ),
        (None, false) if app.service.is_some() => {
            bail!("a service pod needs --rootfs DIR or --host-share")
        }
        (None, false) => bail!("--rootfs is required"),
        (Some(rootfs), false) => {
            let image = parse::absolute(rootfs);
            if !image.is_dir() {
                bail!(
                    "rootfs {} does not exist or is not a directory",
                    rootfs.display()
                );
            }
            (image.clone(), image, Vec::new())
        }
    };
    let mut argv = app.argv;
    if let Some(svc) = &app.service {
        let systemd = service::find_systemd(&lookup_root)?;
        for u in &svc.units {
            service::check_unit(&lookup_root, u)?;
        }
        argv = berth_spec::service::systemd_argv(&systemd);
    }
    let hostname = match &a.hostname {
        Some(h) if berth_spec::valid_hostname(h) => h.clone(),
        Some(h) => bail!("invalid hostname {h:?}"),
        None => pod::hostname_for(&name),
    };
    for v in &a.volume {
        mounts.push(parse::volume(v)?);
    }
    let env = a
        .env
        .iter()
        .map(|e| parse::env(e))
        .collect::<Result<Vec<_>, _>>()?;
    let (uid, gid) = match &app.user {
        Some(u) => parse::user(u, &lookup_root)?,
        None => (0, 0),
    };
    if !a.workdir.starts_with('/') {
        bail!("invalid workdir {:?}: must be an absolute path", a.workdir);
    }
    let (mode, ports) = network(a, is_kvm)?;
    if a.disk.is_some() && (a.user_remap.is_some() || a.private_users) {
        bail!("--disk cannot be combined with a user namespace yet: the kernel mounts its ext4 only for the host's root");
    }
    if mode == NetworkMode::Host && (a.user_remap.is_some() || a.private_users) {
        bail!("--net host cannot be combined with a user namespace (--user-remap, --private-users): the host's network belongs to the host's users");
    }
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
            argv,
            env,
            cwd: a.workdir.clone(),
            user: User { uid, gid },
        },
        hostname,
        rootfs: Rootfs {
            image,
            layers: Vec::new(),
        },
        mounts,
        devices,
        // The address is leased at each start.
        network: Network {
            mode,
            ports,
            private: None,
        },
        resources,
        security: security(
            a,
            if app.service.is_some() {
                Security::service()
            } else {
                Security::default()
            },
        )?,
        stdio: app.stdio,
        kvm: is_kvm.then(KvmSettings::default),
        service: app.service,
        oci: None,
    };
    spec.validate()?;
    Ok(Built { spec, stage1 })
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

fn security(a: &PodArgs, mut security: Security) -> Result<Security> {
    if let Some(r) = &a.user_remap {
        security.userns = Some(super::users::parse_remap(r)?);
    }
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
