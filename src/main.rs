//! berth: run a service in a sandbox — Linux namespaces or a KVM microVM.
//!
//! This binary is stage0: it parses the command line, prepares the pod
//! directory (`pod.json` + rootfs mount point) and hands it to a stage1.

mod cli;
mod stage0;

use berth_spec::EXIT_BERTH_FAILED;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    long_version = stage0::version::long(),
    about = "Run a command or service in a sandbox: Linux namespaces (--stage1=ns) or a KVM microVM (--stage1=kvm)"
)]
pub struct Cli {
    /// State directory holding the pods.
    #[arg(
        long,
        global = true,
        env = "BERTH_ROOT",
        default_value = "/var/lib/berth"
    )]
    root: PathBuf,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, global = true, default_value = "warn")]
    log_level: String,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a pod and run a command in it.
    Run(Box<cli::run::RunArgs>),
    /// Create a service pod: systemd inside, running only the given units.
    Create(Box<cli::create::CreateArgs>),
    /// Start a created (or stopped) pod in the background.
    Start(cli::start::StartArgs),
    /// A pod's state and, for a service pod, its units' states.
    Status(cli::status::StatusArgs),
    /// A service pod's journal (-u: one unit's), or a command pod's output.
    Logs(cli::logs::LogsArgs),
    /// An interactive root shell in a running pod (^] detaches).
    Connect(cli::connect::ConnectArgs),
    /// Reload a running service pod's units.
    Reload(cli::reload::ReloadArgs),
    /// Print a shell completion script (bash, zsh, fish...).
    Completion(cli::docs::CompletionArgs),
    /// Write the man pages (berth.1, berth-VERB.1) into DIR.
    #[command(hide = true)]
    GenerateManpages(cli::docs::ManArgs),
    /// Run a command inside a running pod.
    Exec(cli::exec::ExecArgs),
    /// Stop a running pod.
    Stop(cli::stop::StopArgs),
    /// List pods.
    List(cli::list::ListArgs),
    /// Show a pod's full state: spec, pid, address, ports, status.
    Inspect(cli::inspect::InspectArgs),
    /// Remove pods.
    Rm(cli::rm::RmArgs),
    /// Remove the state of pods that are no longer running.
    Gc,
    /// The host network of --net private: bridge, nft tables, leases.
    Network(cli::network::NetworkArgs),
}

fn main() {
    // Before anything else: no inherited descriptor may reach a child of
    // ours unless the user passes it (socket activation, --preserve-fds).
    let listen = stage0::fds::sanitize();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
                _ => EXIT_BERTH_FAILED,
            };
            if code == 0 {
                let _ = e.print();
            } else {
                // One line naming the offending value, like every other error.
                let text = e.render().to_string();
                let first = text.lines().next().unwrap_or("invalid arguments");
                eprintln!("berth: {}", first.trim_start_matches("error: "));
            }
            std::process::exit(code);
        }
    };
    let level = cli.log_level.to_ascii_lowercase();
    if !matches!(
        level.as_str(),
        "error" | "warn" | "info" | "debug" | "trace" | "off"
    ) {
        eprintln!(
            "berth: invalid --log-level {:?}: expected error, warn, info, debug or trace",
            cli.log_level
        );
        std::process::exit(EXIT_BERTH_FAILED);
    }
    // stage1 reads the same variable.
    std::env::set_var("BERTH_LOG", &level);
    env_logger::Builder::new()
        .parse_filters(&level)
        .format_timestamp(None)
        .init();
    let store = stage0::store::Store::new(&cli.root);
    let result = match cli.cmd {
        Command::Run(a) => cli::run::run(&store, *a, &listen),
        Command::Create(a) => cli::create::create(&store, *a),
        Command::Start(a) => cli::start::start(&store, a),
        Command::Status(a) => cli::status::status(&store, a),
        Command::Logs(a) => cli::logs::logs(&store, a),
        Command::Connect(a) => cli::connect::connect(&store, a),
        Command::Reload(a) => cli::reload::reload(&store, a),
        Command::Completion(a) => cli::docs::completion(a),
        Command::GenerateManpages(a) => cli::docs::manpages(a),
        Command::Exec(a) => cli::exec::exec(&store, a),
        Command::Stop(a) => cli::stop::stop(&store, a),
        Command::List(a) => cli::list::list(&store, a),
        Command::Inspect(a) => cli::inspect::inspect(&store, a),
        Command::Rm(a) => cli::rm::rm(&store, a),
        Command::Gc => cli::gc::gc(&store),
        Command::Network(a) => cli::network::network(&store, a),
    };
    berth_spec::exit_with(result)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
