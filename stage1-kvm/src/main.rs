//! berth-stage1-kvm (built out in the kvm stage1 issue).
fn main() {
    eprintln!("berth: stage1 kvm is not built yet");
    std::process::exit(berth_spec::EXIT_BERTH_FAILED);
}
