//! One module per verb.

pub mod create;
pub mod exec;
pub mod gc;
pub mod inspect;
pub mod list;
pub mod pod_args;
pub mod rm;
pub mod run;
pub mod start;
pub mod stop;
