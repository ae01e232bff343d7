//! A bundle's `config.json` → a berth [`PodSpec`] with its `oci` section.
//!
//! The config is parsed with the `oci-spec` crate (so a malformed config is
//! refused with its message), then read field by field. Every field berth
//! cannot honour fails the create with an error naming it; the few that are
//! accepted and not applied are listed in docs/oci.md.

use berth_spec::oci::{
    Hook, NsChoice, OciMount, OciSettings, Rlimit, SeccompAction, SeccompArg, SeccompOp,
    SeccompRules, StageHooks, SyscallRule, RLIMIT_NAMES,
};
use berth_spec::{
    App, Device, DeviceKind, KvmSettings, Network, NetworkMode, PodSpec, Resources, Rootfs,
    Security, Stdio, User, SPEC_VERSION,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The annotation choosing the stage1.
pub const STAGE1_ANNOTATION: &str = "run.berth.stage1";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("{field}: {why}")]
    Unsupported { field: String, why: String },
    #[error("{field}: {why}")]
    Invalid { field: String, why: String },
}

fn unsupported(field: &str, why: impl Into<String>) -> BundleError {
    BundleError::Unsupported {
        field: field.into(),
        why: why.into(),
    }
}

fn invalid(field: &str, why: impl Into<String>) -> BundleError {
    BundleError::Invalid {
        field: field.into(),
        why: why.into(),
    }
}

/// Which stage1 runs the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage1 {
    Ns,
    Kvm,
}

impl Stage1 {
    pub fn exe(self) -> &'static str {
        match self {
            Stage1::Ns => "berth-stage1-ns",
            Stage1::Kvm => "berth-stage1-kvm",
        }
    }
}

/// What `create` learns from the bundle.
pub struct Translated {
    pub spec: PodSpec,
    pub stage1: Stage1,
    /// The hooks run by berth-oci itself.
    pub poststart: Vec<Hook>,
    pub poststop: Vec<Hook>,
}

/// Read `BUNDLE/config.json`.
pub fn load(bundle: &Path) -> Result<Value, BundleError> {
    let path = bundle.join("config.json");
    let spec = oci_spec::runtime::Spec::load(&path).map_err(|source| BundleError::Read {
        path: path.clone(),
        source,
    })?;
    serde_json::to_value(&spec).map_err(|e| invalid("config.json", e.to_string()))
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn u32_of(v: &Value, field: &str) -> Result<u32, BundleError> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| invalid(field, format!("{v} is not a 32-bit number")))
}

/// The stage1 an annotation asks for.
pub fn stage1_of(config: &Value) -> Result<Stage1, BundleError> {
    match config["annotations"][STAGE1_ANNOTATION].as_str() {
        None | Some("ns") => Ok(Stage1::Ns),
        Some("kvm") => Ok(Stage1::Kvm),
        Some(other) => Err(invalid(
            &format!("annotations[{STAGE1_ANNOTATION}]"),
            format!("{other:?} is not ns or kvm"),
        )),
    }
}

/// Translate the config. `id` is the container id, `pod_dir` its state
/// directory, `console_socket` the `--console-socket`.
pub fn translate(
    config: &Value,
    bundle: &Path,
    id: &str,
    uuid: &str,
    pod_dir: &Path,
    console_socket: Option<&Path>,
) -> Result<Translated, BundleError> {
    let stage1 = stage1_of(config)?;
    let kvm = stage1 == Stage1::Kvm;
    let process = &config["process"];
    if process.is_null() {
        return Err(invalid("process", "a container needs a process"));
    }
    let argv = strs(&process["args"]);
    if argv.is_empty() || argv[0].is_empty() {
        return Err(invalid("process.args", "must name a command"));
    }
    if !process["commandLine"].is_null() {
        return Err(unsupported("process.commandLine", "Windows only"));
    }
    let cwd = process["cwd"].as_str().unwrap_or("/").to_string();
    if !cwd.starts_with('/') {
        return Err(invalid("process.cwd", format!("{cwd:?} is not absolute")));
    }
    let user = &process["user"];
    let uid = u32_of(&user["uid"], "process.user.uid")?;
    let gid = u32_of(&user["gid"], "process.user.gid")?;
    let additional_gids = user["additionalGids"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|g| u32_of(g, "process.user.additionalGids"))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    let tty = process["terminal"].as_bool().unwrap_or(false);
    if tty && console_socket.is_none() {
        return Err(invalid(
            "process.terminal",
            "a terminal needs --console-socket",
        ));
    }

    let caps = &process["capabilities"];
    // For root, ambient capabilities change nothing (an exec by root
    // gets its bounding set anyway); for other users berth keeps none.
    if uid != 0 && !strs(&caps["ambient"]).is_empty() {
        return Err(unsupported(
            "process.capabilities.ambient",
            "berth gives a non-root process no capabilities",
        ));
    }
    let mut capabilities: Vec<String> = strs(&caps["bounding"]);
    if caps["bounding"].is_null() {
        capabilities = strs(&caps["permitted"]);
    }
    let capabilities: Vec<String> = capabilities
        .iter()
        .map(|c| {
            c.strip_prefix("CAP_")
                .map(str::to_ascii_lowercase)
                .ok_or_else(|| invalid("process.capabilities", format!("{c:?} is not CAP_*")))
        })
        .collect::<Result<_, _>>()?;
    if process["apparmorProfile"]
        .as_str()
        .is_some_and(|p| !p.is_empty())
        && apparmor_enabled()
    {
        return Err(unsupported(
            "process.apparmorProfile",
            "berth does not apply AppArmor profiles",
        ));
    }
    if process["selinuxLabel"]
        .as_str()
        .is_some_and(|p| !p.is_empty())
        && selinux_enabled()
    {
        return Err(unsupported(
            "process.selinuxLabel",
            "berth does not apply SELinux labels",
        ));
    }
    let mut rlimits = Vec::new();
    for r in process["rlimits"].as_array().into_iter().flatten() {
        let name = r["type"].as_str().unwrap_or("");
        let resource = RLIMIT_NAMES
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| invalid("process.rlimits", format!("unknown type {name:?}")))?;
        rlimits.push(Rlimit {
            resource: resource as u32,
            soft: r["soft"].as_u64().unwrap_or(0),
            hard: r["hard"].as_u64().unwrap_or(0),
        });
    }

    let root = &config["root"];
    let root_path = root["path"]
        .as_str()
        .ok_or_else(|| invalid("root.path", "missing"))?;
    let image = absolute(bundle, root_path);
    if !image.is_dir() {
        return Err(invalid(
            "root.path",
            format!("{} is not a directory", image.display()),
        ));
    }

    let linux = &config["linux"];
    if linux.is_null() {
        return Err(invalid("linux", "berth runs Linux containers only"));
    }
    let mut namespaces = berth_spec::oci::Namespaces {
        net: NsChoice::Host,
        ipc: NsChoice::Host,
        uts: NsChoice::Host,
        cgroup: false,
    };
    let (mut pid, mut mnt) = (false, false);
    for ns in linux["namespaces"].as_array().into_iter().flatten() {
        let kind = ns["type"].as_str().unwrap_or("");
        let path = ns["path"].as_str().filter(|p| !p.is_empty());
        let choice = match path {
            Some(p) => NsChoice::Join(PathBuf::from(p)),
            None => NsChoice::New,
        };
        let field = format!("linux.namespaces[{kind}]");
        match kind {
            "pid" if path.is_none() => pid = true,
            "pid" => {
                return Err(unsupported(
                    &field,
                    "berth's pod has its own pid namespace; joining one is not supported",
                ))
            }
            "mount" if path.is_none() => mnt = true,
            "mount" => return Err(unsupported(&field, "joining a mount namespace")),
            "network" => namespaces.net = choice,
            "ipc" => namespaces.ipc = choice,
            "uts" => namespaces.uts = choice,
            "cgroup" if path.is_none() => namespaces.cgroup = true,
            "cgroup" => return Err(unsupported(&field, "joining a cgroup namespace")),
            "user" => {
                return Err(unsupported(
                    &field,
                    "user namespaces (uidMappings/gidMappings) are not supported by berth-oci yet",
                ))
            }
            other => return Err(unsupported(&field, format!("namespace type {other:?}"))),
        }
    }
    if !pid {
        return Err(unsupported(
            "linux.namespaces",
            "a container without its own pid namespace (berth's pod init is its PID 1)",
        ));
    }
    if !mnt {
        return Err(unsupported(
            "linux.namespaces",
            "a container without its own mount namespace",
        ));
    }
    for f in ["uidMappings", "gidMappings"] {
        if linux[f].as_array().is_some_and(|a| !a.is_empty()) {
            return Err(unsupported(
                &format!("linux.{f}"),
                "user namespaces are not supported by berth-oci yet",
            ));
        }
    }
    for f in ["intelRdt", "personality", "timeOffsets"] {
        if !linux[f].is_null() {
            return Err(unsupported(&format!("linux.{f}"), "not supported by berth"));
        }
    }
    let network_mode = match (&namespaces.net, kvm) {
        (NsChoice::New, _) => NetworkMode::None,
        (NsChoice::Host, true) => {
            return Err(unsupported(
                "linux.namespaces[network]",
                "a VM (run.berth.stage1=kvm) cannot use the host's network namespace",
            ))
        }
        // kvm: the caller's namespace is bridged into the VM by stage1-kvm.
        (NsChoice::Join(_), true) => NetworkMode::None,
        (_, false) => NetworkMode::Host,
    };
    if kvm {
        for (what, ns) in [("ipc", &namespaces.ipc), ("uts", &namespaces.uts)] {
            if matches!(ns, NsChoice::Join(_)) {
                return Err(unsupported(
                    &format!("linux.namespaces[{what}]"),
                    "a VM cannot join a host namespace",
                ));
            }
        }
    }
    let hostname = match config["hostname"].as_str().filter(|h| !h.is_empty()) {
        Some(h) if berth_spec::valid_hostname(h) => h.to_string(),
        Some(h) => {
            return Err(invalid(
                "hostname",
                format!("{h:?} is not a valid hostname"),
            ))
        }
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| berth_spec::valid_hostname(h))
            .unwrap_or_else(|| "localhost".into()),
    };

    let mut mounts = Vec::new();
    for m in config["mounts"].as_array().into_iter().flatten() {
        let destination = m["destination"].as_str().unwrap_or("").to_string();
        let options = strs(&m["options"]);
        let mut kind = m["type"].as_str().unwrap_or("").to_string();
        if options.iter().any(|o| o == "bind" || o == "rbind") || kind.is_empty() || kind == "none"
        {
            kind = "bind".into();
        }
        let mut source = m["source"].as_str().unwrap_or("").to_string();
        if kind == "bind" && !source.starts_with('/') {
            source = absolute(bundle, &source).display().to_string();
        }
        if kvm && kind == "bind" && !Path::new(&source).is_dir() {
            // A VM shares directories; the files a caller binds (its
            // /etc/hosts, resolv.conf, hostname) are copied in by
            // stage1-kvm instead.
            if !Path::new(&source).is_file() {
                return Err(invalid(
                    "mounts",
                    format!("bind source {source} does not exist"),
                ));
            }
        }
        mounts.push(OciMount {
            destination,
            kind,
            source,
            options,
        });
    }

    let mut resources = Resources::default();
    let res = &linux["resources"];
    if let Some(limit) = res["memory"]["limit"].as_i64().filter(|l| *l > 0) {
        resources.memory = Some(limit as u64);
    }
    for f in ["kernel", "kernelTCP"] {
        if res["memory"][f].as_i64().is_some_and(|l| l > 0) {
            return Err(unsupported(
                &format!("linux.resources.memory.{f}"),
                "kernel memory limits",
            ));
        }
    }
    let cpu = &res["cpu"];
    if let Some(quota) = cpu["quota"].as_i64().filter(|q| *q > 0) {
        let period = cpu["period"].as_u64().filter(|p| *p > 0).unwrap_or(100_000);
        let millis = (quota as u64 * 1000).div_ceil(period);
        resources.cpu_millis = Some(u32::try_from(millis.max(1)).unwrap_or(u32::MAX));
    }
    for f in ["cpus", "mems", "realtimeRuntime", "realtimePeriod"] {
        let set = match &cpu[f] {
            Value::String(s) => !s.is_empty(),
            Value::Number(n) => n.as_i64() != Some(0),
            _ => false,
        };
        if set {
            return Err(unsupported(
                &format!("linux.resources.cpu.{f}"),
                "berth limits CPU by quota only",
            ));
        }
    }
    if let Some(p) = res["pids"]["limit"].as_i64().filter(|p| *p > 0) {
        resources.pids = Some(u32::try_from(p).unwrap_or(u32::MAX));
    }
    for f in ["blockIO", "hugepageLimits", "network", "rdma"] {
        let set = match &res[f] {
            Value::Null => false,
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            _ => true,
        };
        if set {
            return Err(unsupported(
                &format!("linux.resources.{f}"),
                "not supported by berth",
            ));
        }
    }
    if res["unified"].as_object().is_some_and(|o| !o.is_empty()) {
        return Err(unsupported(
            "linux.resources.unified",
            "not supported by berth",
        ));
    }
    let devices = devices(linux, kvm)?;
    check_device_rules(res, &devices)?;

    let seccomp = match &linux["seccomp"] {
        Value::Null => None,
        s => Some(seccomp(s)?),
    };
    let mut sysctl = BTreeMap::new();
    for (k, v) in linux["sysctl"].as_object().into_iter().flatten() {
        let namespaced = k.starts_with("kernel.msg")
            || k.starts_with("kernel.sem")
            || k.starts_with("kernel.shm")
            || k.starts_with("fs.mqueue.")
            || k.starts_with("net.");
        if !namespaced {
            return Err(unsupported(
                &format!("linux.sysctl[{k}]"),
                "not a namespaced sysctl",
            ));
        }
        if k.starts_with("net.") && namespaces.net == NsChoice::Host {
            return Err(unsupported(
                &format!("linux.sysctl[{k}]"),
                "the container uses the host's network namespace",
            ));
        }
        sysctl.insert(k.clone(), v.as_str().unwrap_or("").to_string());
    }

    let hooks_of = |name: &str| -> Result<Vec<Hook>, BundleError> {
        config["hooks"][name]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                let path = h["path"]
                    .as_str()
                    .filter(|p| p.starts_with('/'))
                    .ok_or_else(|| invalid(&format!("hooks.{name}"), "path must be absolute"))?;
                Ok(Hook {
                    path: PathBuf::from(path),
                    args: strs(&h["args"]),
                    env: strs(&h["env"]),
                    timeout: h["timeout"]
                        .as_u64()
                        .map(|t| t.min(u64::from(u32::MAX)) as u32),
                })
            })
            .collect()
    };
    let mut create_runtime = hooks_of("prestart")?;
    create_runtime.extend(hooks_of("createRuntime")?);
    let hooks = StageHooks {
        create_runtime,
        create_container: hooks_of("createContainer")?,
        start_container: hooks_of("startContainer")?,
    };
    if kvm && !(hooks.create_container.is_empty() && hooks.start_container.is_empty()) {
        return Err(unsupported(
            "hooks.createContainer/startContainer",
            "hooks cannot run inside a VM",
        ));
    }

    let annotations: BTreeMap<String, String> = config["annotations"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
        .collect();
    let oci = OciSettings {
        id: id.into(),
        bundle: bundle.to_path_buf(),
        annotations,
        start_fifo: pod_dir.join(crate::state::START_FIFO),
        console_socket: if kvm {
            None
        } else {
            console_socket.map(Path::to_path_buf)
        },
        namespaces,
        mounts,
        rlimits,
        additional_gids,
        umask: user["umask"].as_u64().map(|m| m as u32),
        oom_score_adj: process["oomScoreAdj"].as_i64().map(|a| a as i32),
        sysctl,
        hooks,
        readonly_root: root["readonly"].as_bool().unwrap_or(false),
        seccomp: seccomp.clone(),
        masked_paths: strs(&linux["maskedPaths"]),
        readonly_paths: strs(&linux["readonlyPaths"]),
        guest_net: None,
    };
    let name = pod_name(id);
    let spec = PodSpec {
        version: SPEC_VERSION,
        name,
        uuid: uuid.into(),
        machine_id: uuid.replace('-', ""),
        app: App {
            argv,
            env: strs(&process["env"]),
            cwd,
            user: User { uid, gid },
        },
        hostname,
        rootfs: Rootfs {
            image,
            layers: Vec::new(),
        },
        mounts: Vec::new(),
        devices,
        network: Network {
            mode: network_mode,
            ports: Vec::new(),
            private: None,
        },
        resources,
        security: Security {
            capabilities,
            seccomp: seccomp.is_some(),
            seccomp_profile: Default::default(),
            no_new_privileges: process["noNewPrivileges"].as_bool().unwrap_or(false),
            // A config asking for a user namespace is refused by name above.
            userns: None,
        },
        stdio: Stdio {
            interactive: true,
            tty,
        },
        kvm: kvm.then(KvmSettings::default),
        service: None,
        oci: Some(oci),
    };
    spec.validate()
        .map_err(|e| invalid("config.json", berth_spec::ErrorChain(&e).to_string()))?;
    Ok(Translated {
        spec,
        stage1,
        poststart: hooks_of("poststart")?,
        poststop: hooks_of("poststop")?,
    })
}

/// A berth pod name for a container id (ids are often 64 hex digits, pod
/// names at most 63 characters).
pub fn pod_name(id: &str) -> String {
    let clean: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    if berth_spec::valid_pod_name(&clean) {
        clean
    } else {
        format!("c{}", clean.chars().take(62).collect::<String>())
    }
}

fn absolute(bundle: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        bundle.join(p)
    }
}

fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y")
}

fn selinux_enabled() -> bool {
    Path::new("/sys/fs/selinux/enforce").exists()
}

/// `linux.devices`: nodes made in the pod's /dev (ns only).
fn devices(linux: &Value, kvm: bool) -> Result<Vec<Device>, BundleError> {
    let mut out = Vec::new();
    for d in linux["devices"].as_array().into_iter().flatten() {
        let path = d["path"].as_str().unwrap_or("").to_string();
        let field = format!("linux.devices[{path}]");
        if kvm {
            return Err(unsupported(&field, "host devices cannot be given to a VM"));
        }
        let kind = match d["type"].as_str() {
            Some("c") | Some("u") => DeviceKind::Char,
            Some("b") => DeviceKind::Block,
            other => return Err(unsupported(&field, format!("device type {other:?}"))),
        };
        out.push(Device {
            path,
            kind,
            major: u32_of(&d["major"], &field)?,
            minor: u32_of(&d["minor"], &field)?,
            access: "rwm".into(),
            mode: d["fileMode"].as_u64().map_or(0o666, |m| m as u32 & 0o7777),
            uid: d["uid"].as_u64().map_or(0, |u| u as u32),
            gid: d["gid"].as_u64().map_or(0, |g| g as u32),
        });
    }
    Ok(out)
}

/// `linux.resources.devices`: berth's device policy is fixed (its own
/// nodes plus `linux.devices`, everything else refused), so the config's
/// rules must not allow more than that: the usual deny-all followed by
/// allowances of standard nodes is accepted (and is what berth does);
/// `mknod`-only wildcards are dropped (no node can be opened that the
/// policy does not allow); allowing every device fails.
fn check_device_rules(res: &Value, devices: &[Device]) -> Result<(), BundleError> {
    let builtin = berth_spec::cgroup::devices::builtin_rules();
    for r in res["devices"].as_array().into_iter().flatten() {
        if !r["allow"].as_bool().unwrap_or(false) {
            continue;
        }
        let access = r["access"].as_str().unwrap_or("rwm");
        let kind = r["type"].as_str().unwrap_or("a");
        let (major, minor) = (r["major"].as_i64(), r["minor"].as_i64());
        if access.chars().all(|c| c == 'm') {
            continue;
        }
        if kind == "a" || (major.is_none() && minor.is_none()) {
            return Err(unsupported(
                "linux.resources.devices",
                "allowing every device (a privileged container)",
            ));
        }
        let covered = builtin.iter().any(|b| {
            b.kind.letter().to_string() == kind
                && b.major.map(i64::from) == major
                && (b.minor.is_none() || b.minor.map(i64::from) == minor)
        }) || devices.iter().any(|d| {
            d.kind.letter().to_string() == kind
                && Some(i64::from(d.major)) == major
                && Some(i64::from(d.minor)) == minor
        });
        if !covered {
            log::warn!(
                "berth-oci: linux.resources.devices: {kind} {}:{} is not one of the pod's devices; not allowed",
                major.map_or("*".into(), |m| m.to_string()),
                minor.map_or("*".into(), |m| m.to_string())
            );
        }
    }
    Ok(())
}

fn action(a: &str, field: &str) -> Result<SeccompAction, BundleError> {
    Ok(match a {
        "SCMP_ACT_ALLOW" => SeccompAction::Allow,
        "SCMP_ACT_ERRNO" => SeccompAction::Errno,
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => SeccompAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompAction::KillProcess,
        "SCMP_ACT_TRAP" => SeccompAction::Trap,
        "SCMP_ACT_LOG" => SeccompAction::Log,
        other => return Err(unsupported(field, format!("seccomp action {other}"))),
    })
}

/// `linux.seccomp` → berth's [`SeccompRules`].
fn seccomp(s: &Value) -> Result<SeccompRules, BundleError> {
    if s["listenerPath"].as_str().is_some_and(|p| !p.is_empty()) {
        return Err(unsupported(
            "linux.seccomp.listenerPath",
            "seccomp notification",
        ));
    }
    for a in strs(&s["architectures"]) {
        if !matches!(
            a.as_str(),
            "SCMP_ARCH_X86_64" | "SCMP_ARCH_X86" | "SCMP_ARCH_X32"
        ) {
            log::debug!("berth-oci: seccomp architecture {a} ignored (x86_64 only)");
        }
    }
    let default_action = action(
        s["defaultAction"].as_str().unwrap_or("SCMP_ACT_ALLOW"),
        "linux.seccomp.defaultAction",
    )?;
    let mut syscalls = Vec::new();
    for (i, r) in s["syscalls"].as_array().into_iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        let mut args = Vec::new();
        for a in r["args"].as_array().into_iter().flatten() {
            let op = match a["op"].as_str().unwrap_or("") {
                "SCMP_CMP_NE" => SeccompOp::Ne,
                "SCMP_CMP_LT" => SeccompOp::Lt,
                "SCMP_CMP_LE" => SeccompOp::Le,
                "SCMP_CMP_EQ" => SeccompOp::Eq,
                "SCMP_CMP_GE" => SeccompOp::Ge,
                "SCMP_CMP_GT" => SeccompOp::Gt,
                "SCMP_CMP_MASKED_EQ" => SeccompOp::MaskedEq,
                other => return Err(unsupported(&field, format!("operator {other:?}"))),
            };
            args.push(SeccompArg {
                index: a["index"].as_u64().unwrap_or(0).min(5) as u8,
                value: a["value"].as_u64().unwrap_or(0),
                value_two: a["valueTwo"].as_u64().unwrap_or(0),
                op,
            });
        }
        syscalls.push(SyscallRule {
            names: strs(&r["names"]),
            action: action(r["action"].as_str().unwrap_or(""), &field)?,
            errno: r["errnoRet"].as_u64().map(|e| e as u32),
            args,
        });
    }
    Ok(SeccompRules {
        default_action,
        default_errno: s["defaultErrnoRet"].as_u64().map(|e| e as u32),
        syscalls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle() -> (tempfile::TempDir, Value) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("rootfs")).unwrap();
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0, "additionalGids": [10]},
                "args": ["sh", "-c", "exit 3"],
                "env": ["PATH=/bin"],
                "cwd": "/",
                "capabilities": {"bounding": ["CAP_KILL", "CAP_CHOWN"]},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "box",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": "/tmp", "options": ["rbind", "ro"]}
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network", "path": "/run/netns/x"}, {"type": "uts"}],
                "resources": {"memory": {"limit": 67108864}, "cpu": {"quota": 50000, "period": 100000}, "pids": {"limit": 64},
                    "devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]},
                "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]},
                "maskedPaths": ["/proc/kcore"],
                "readonlyPaths": ["/proc/sys"]
            }
        });
        std::fs::write(d.path().join("config.json"), config.to_string()).unwrap();
        let v = load(d.path()).unwrap();
        (d, v)
    }

    const UUID: &str = "0b9f3c2e-6a1d-4c8e-9f00-1234567890ab";

    #[test]
    fn a_config_becomes_a_pod() {
        let (d, v) = bundle();
        let t = translate(&v, d.path(), "c1", UUID, Path::new("/run/b/c1"), None).unwrap();
        let s = t.spec;
        assert_eq!(t.stage1, Stage1::Ns);
        assert_eq!(s.app.argv, ["sh", "-c", "exit 3"]);
        assert_eq!(s.hostname, "box");
        assert_eq!(s.resources.memory, Some(64 << 20));
        assert_eq!(s.resources.cpu_millis, Some(500));
        assert_eq!(s.resources.pids, Some(64));
        assert_eq!(s.security.capabilities, ["kill", "chown"]);
        assert!(s.security.seccomp && s.security.no_new_privileges);
        assert_eq!(s.network.mode, NetworkMode::Host);
        let o = s.oci.unwrap();
        assert!(o.readonly_root);
        assert_eq!(o.namespaces.net, NsChoice::Join("/run/netns/x".into()));
        assert_eq!(o.namespaces.ipc, NsChoice::Host);
        assert_eq!(o.additional_gids, [10]);
        assert_eq!(o.rlimits[0].resource, 7);
        assert_eq!(o.mounts.len(), 2);
        assert_eq!(o.start_fifo, Path::new("/run/b/c1/start.fifo"));
    }

    #[test]
    fn unsupported_fields_are_named() {
        type M = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, M)> = vec![
            (
                "linux.namespaces[user]",
                Box::new(|v| {
                    v["linux"]["namespaces"]
                        .as_array_mut()
                        .unwrap()
                        .push(serde_json::json!({"type": "user"}))
                }),
            ),
            (
                "linux.namespaces",
                Box::new(|v| v["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}])),
            ),
            (
                "process.capabilities.ambient",
                Box::new(|v| {
                    v["process"]["capabilities"]["ambient"] = serde_json::json!(["CAP_KILL"]);
                    v["process"]["user"]["uid"] = 1000.into();
                }),
            ),
            (
                "linux.resources.devices",
                Box::new(|v| {
                    v["linux"]["resources"]["devices"] =
                        serde_json::json!([{"allow": true, "access": "rwm"}])
                }),
            ),
            (
                "linux.seccomp",
                Box::new(|v| v["linux"]["seccomp"]["defaultAction"] = "SCMP_ACT_NOTIFY".into()),
            ),
            (
                "linux.sysctl[kernel.hostname]",
                Box::new(|v| v["linux"]["sysctl"] = serde_json::json!({"kernel.hostname": "x"})),
            ),
            (
                "annotations[run.berth.stage1]",
                Box::new(|v| v["annotations"] = serde_json::json!({"run.berth.stage1": "xen"})),
            ),
            (
                "process.terminal",
                Box::new(|v| v["process"]["terminal"] = true.into()),
            ),
        ];
        for (field, m) in cases {
            let (d, mut v) = bundle();
            m(&mut v);
            let err = match translate(&v, d.path(), "c1", UUID, Path::new("/r/c1"), None) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{field}: accepted"),
            };
            assert!(err.contains(field), "{err} should name {field}");
        }
    }

    #[test]
    fn kvm_refuses_the_host_network() {
        let (d, mut v) = bundle();
        v["annotations"] = serde_json::json!({"run.berth.stage1": "kvm"});
        v["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "mount"}]);
        let e = translate(&v, d.path(), "c1", UUID, Path::new("/r/c1"), None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("linux.namespaces[network]"), "{e}");
    }

    #[test]
    fn long_ids_make_valid_pod_names() {
        let id = "a".repeat(64);
        assert!(berth_spec::valid_pod_name(&pod_name(&id)));
        assert!(berth_spec::valid_pod_name(&pod_name("-x")));
        assert_eq!(pod_name("web"), "web");
    }
}
