//! `berth completion SHELL` (a completion script on stdout) and the hidden
//! `berth generate-manpages DIR` (berth(1) and berth-VERB(1) for each verb):
//! both from the clap definitions, so they never drift from the CLI.
//! `make setup` installs them where the distribution looks.

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};
use std::path::PathBuf;

#[derive(Args)]
pub struct CompletionArgs {
    /// bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
}

#[derive(Args)]
pub struct ManArgs {
    /// Directory for berth.1 and berth-VERB.1.
    pub dir: PathBuf,
}

pub fn completion(a: CompletionArgs) -> Result<i32> {
    use std::io::Write;
    let mut cmd = crate::Cli::command();
    // Into a buffer first: clap_complete panics on a failed write (a closed
    // pipe), we report it.
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "berth", &mut out);
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&out).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(e).context("cannot write the completion script"),
    }
}

pub fn manpages(a: ManArgs) -> Result<i32> {
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    let cmd = crate::Cli::command();
    let write = |name: String, c: clap::Command| -> Result<()> {
        let path = a.dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(c.name(name.clone()))
            .render(&mut out)
            .with_context(|| format!("cannot render {name}(1)"))?;
        std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write(format!("berth-{}", sub.get_name()), sub.clone())?;
    }
    write("berth".into(), cmd)?;
    Ok(0)
}
