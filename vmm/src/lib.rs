//! berth's KVM virtual machine monitor (built out in the kvm stage1 issues).
