//! stage0: everything berth does before and around a stage1.

pub mod build;
pub mod fds;
pub mod gc;
pub mod launch;
pub mod net;
pub mod parse;
pub mod pod;
pub mod service;
pub mod stage1;
pub mod store;
pub mod systemd;
pub mod users;
pub mod version;

pub use berth_spec::state::pod_name;
