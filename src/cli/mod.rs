//! One module per verb.

pub mod connect;
pub mod create;
pub mod docs;
pub mod exec;
pub mod gc;
pub mod inspect;
pub mod list;
pub mod logs;
pub mod network;
pub mod pod_args;
pub mod reload;
pub mod rm;
pub mod run;
pub mod start;
pub mod status;
pub mod stop;
