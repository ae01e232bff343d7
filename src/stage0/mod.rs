//! stage0: everything berth does before and around a stage1.

pub mod parse;
pub mod pod;
pub mod stage1;
pub mod store;

/// A pod's name: the last component of its directory.
pub fn pod_name(pod: &berth_spec::PodDir) -> String {
    pod.path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
