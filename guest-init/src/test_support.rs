//! Helpers shared by the unit tests.

use berth_spec::*;

/// A minimal valid spec.
pub fn spec() -> PodSpec {
    PodSpec::new(
        "p",
        "0b9f3c2e-6a1d-4c8e-9f00-1234567890ab",
        vec!["/bin/true".into()],
        "/img",
    )
}
