//! Helpers shared by the unit tests.

use berth_spec::*;

/// A minimal valid spec.
pub fn spec() -> PodSpec {
    PodSpec {
        version: SPEC_VERSION,
        name: "p".into(),
        uuid: "0b9f3c2e-6a1d-4c8e-9f00-1234567890ab".into(),
        machine_id: "0b9f3c2e6a1d4c8e9f001234567890ab".into(),
        app: App {
            argv: vec!["/bin/true".into()],
            env: vec![],
            cwd: "/".into(),
            user: User { uid: 0, gid: 0 },
        },
        hostname: "p".into(),
        rootfs: Rootfs {
            image: "/img".into(),
        },
        mounts: vec![],
        network: Network::none(),
        resources: Resources::default(),
        security: Security::default(),
        stdio: Stdio::default(),
        kvm: None,
    }
}
