//! One module per verb.

pub mod exec;
pub mod gc;
pub mod inspect;
pub mod list;
pub mod network;
pub mod rm;
pub mod run;
pub mod stop;
