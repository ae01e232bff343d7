//! `berth-stage1-kvm exec POD_DIR [options] -- CMD...`: run a command in a
//! running kvm pod over the control protocol (an exec connection to
//! guest-init through the VMM's vsock socket in the pod directory: no
//! network, no keys, no open port), relay its streams and signals, and exit
//! with its status.

use crate::control::{relayed_signals, Session, Start};
use anyhow::{bail, Context, Result};
use berth_spec::control::Process;
use berth_spec::stage1_cli::ExecOptions;
use berth_spec::stage1_cli::RawMode;
use berth_spec::{state, PodDir, PodSpec};

/// The process to start: the pod app's environment, user and directory
/// unless overridden (the ns stage1's rules).
pub fn process(mut spec: PodSpec, opts: ExecOptions) -> Process {
    if let Some(u) = opts.user {
        spec.app.user = u;
    }
    spec.app.env.extend(opts.env);
    Process {
        env: spec.effective_env(),
        cwd: opts.cwd.unwrap_or_else(|| spec.app.cwd.clone()),
        user: spec.app.user,
        argv: opts.argv,
        tty: opts.tty,
        stdin: opts.interactive,
    }
}

pub fn exec(pod: &PodDir, opts: ExecOptions) -> Result<i32> {
    let spec = PodSpec::load(pod).context("cannot load the pod spec")?;
    state::running_leader(pod)?;
    let (stdin, tty, escape) = (opts.interactive, opts.tty, opts.escape);
    let p = process(spec, opts);
    let sigs = relayed_signals();
    sigs.thread_block().context("cannot block signals")?;
    let mut s = Session::connect_exec(&pod.ctl_socket(), p)?;
    let _raw = if tty { RawMode::enter() } else { None };
    if let Start::Failed { message, .. } = s.start()? {
        eprintln!("berth: {message}");
    }
    match s.relay(stdin, tty, &sigs, None, escape)? {
        Some(code) => Ok(code),
        None => bail!("the pod stopped before the command finished"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_process_follows_the_pod_unless_overridden() {
        let spec = crate::test_spec();
        let p = process(
            spec.clone(),
            ExecOptions {
                argv: vec!["sh".into()],
                env: vec!["A=2".into()],
                cwd: None,
                user: None,
                interactive: true,
                tty: false,
                escape: None,
            },
        );
        assert_eq!(p.cwd, "/srv");
        assert_eq!(p.user, spec.app.user);
        assert_eq!(
            p.env
                .iter()
                .rev()
                .find(|e| e.starts_with("A="))
                .map(String::as_str),
            Some("A=2")
        );
        assert!(p.stdin && !p.tty);
        let p = process(
            spec,
            ExecOptions {
                argv: vec!["id".into()],
                env: vec![],
                cwd: Some("/tmp".into()),
                user: Some(berth_spec::User { uid: 7, gid: 8 }),
                interactive: false,
                tty: true,
                escape: None,
            },
        );
        assert_eq!((p.cwd.as_str(), p.user.uid, p.user.gid), ("/tmp", 7, 8));
    }
}
