//! `berth connect NAME`: an interactive root shell in a running pod, on a
//! pty of the pod's own (as virt-sandbox-service connect); ^] detaches
//! (the shell is hung up).

use crate::stage0::store::Store;
use anyhow::{bail, Result};
use clap::Args;

#[derive(Args)]
pub struct ConnectArgs {
    /// Pod name.
    pub name: String,
}

/// ^] (GS), telnet's and virsh console's escape.
const ESCAPE: u8 = 0x1d;

pub fn connect(store: &Store, a: ConnectArgs) -> Result<i32> {
    let r = super::exec::running(store, &a.name)?;
    // SAFETY: isatty only queries fd 0.
    if unsafe { libc::isatty(0) } != 1 {
        bail!("berth connect needs a terminal on stdin (use berth exec -i for a pipe)");
    }
    eprintln!("Connected to pod {}. Press ^] to detach.", a.name);
    let opts = vec![
        "--interactive".to_string(),
        "--tty".into(),
        "--user=0:0".into(),
        "--workdir=/".into(),
        format!("--escape-byte={ESCAPE}"),
    ];
    // The pod's login shell: bash where the image has it, else sh.
    let shell = "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi";
    r.exec(&opts, &["/bin/sh".into(), "-c".into(), shell.into()])
}
