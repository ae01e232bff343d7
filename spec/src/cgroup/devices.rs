//! The pod's device policy: exactly the devices berth creates in the pod's
//! /dev (null, zero, full, random, urandom, tty, ptmx and the devpts ptys)
//! plus the ones given with `--device` are usable; making or opening any
//! other node is refused. Not the host's console (c 5:1): a pod's
//! `/dev/console`, where it has one (service pods), is a pty of its own
//! (major 136), and a node made for 5:1 would open the host's console.
//!
//! cgroup v1: the `devices` controller (`devices.deny a`, then one
//! `devices.allow` line per entry). cgroup v2 (and the unified hierarchy of a
//! hybrid host, which the kernel consults too): a `BPF_PROG_TYPE_CGROUP_DEVICE`
//! program, as runc and crun attach, built here from the same list.

use crate::{Device, DeviceKind};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// One allowed device: `None` major/minor = any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub kind: DeviceKind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// Subset of `rwm`.
    pub access: String,
}

impl Rule {
    fn char(major: u32, minor: Option<u32>) -> Rule {
        Rule {
            kind: DeviceKind::Char,
            major: Some(major),
            minor,
            access: "rwm".into(),
        }
    }

    /// The v1 `devices.allow` line, e.g. `c 1:3 rwm`, `c 136:* rwm`.
    pub fn v1_line(&self) -> String {
        let n = |v: Option<u32>| v.map_or("*".to_string(), |v| v.to_string());
        format!(
            "{} {}:{} {}",
            self.kind.letter(),
            n(self.major),
            n(self.minor),
            self.access
        )
    }
}

/// The devices every pod has: the nodes berth makes in its /dev, ptmx,
/// and the pod's ptys (major 136: its private devpts; a service pod's
/// /dev/console is one of them).
pub fn builtin_rules() -> Vec<Rule> {
    vec![
        Rule::char(1, Some(3)), // null
        Rule::char(1, Some(5)), // zero
        Rule::char(1, Some(7)), // full
        Rule::char(1, Some(8)), // random
        Rule::char(1, Some(9)), // urandom
        Rule::char(5, Some(0)), // tty
        Rule::char(5, Some(2)), // ptmx
        Rule::char(136, None),  // pts/*
    ]
}

/// The pod's whole allow-list.
pub fn rules(devices: &[Device]) -> Vec<Rule> {
    let mut v = builtin_rules();
    v.extend(devices.iter().map(|d| Rule {
        kind: d.kind,
        major: Some(d.major),
        minor: Some(d.minor),
        access: d.access.clone(),
    }));
    v
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open cgroup {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load the device policy program (bpf BPF_PROG_LOAD)")]
    Load(#[source] std::io::Error),
    #[error("cannot attach the device policy program to cgroup {path} (bpf BPF_PROG_ATTACH)")]
    Attach {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// cgroup v1: replace the controller's list (`a` denied, then each rule).
pub fn apply_v1(dir: &Path, rules: &[Rule]) -> Result<(), DeviceError> {
    let write = |file: &str, line: &str| {
        let path = dir.join(file);
        std::fs::write(&path, line).map_err(|source| DeviceError::Write {
            path: path.display().to_string(),
            source,
        })
    };
    write("devices.deny", "a")?;
    for r in rules {
        write("devices.allow", &r.v1_line())?;
    }
    Ok(())
}

// ---------------------------------------------------------------- BPF --
//
// The program, for the context `struct bpf_cgroup_dev_ctx { u32
// access_type; u32 major; u32 minor; }` where access_type = (access << 16)
// | type, access bits MKNOD=1 READ=2 WRITE=4, type BLOCK=1 CHAR=2:
//
//     r2 = ctx->access_type & 0xffff      ; type
//     r3 = ctx->access_type >> 16         ; requested access
//     r4 = ctx->major ; r5 = ctx->minor
//     for each rule:
//         if r2 != TYPE goto next
//         r1 = r3 ; r1 &= ~ALLOWED ; if r1 != 0 goto next
//         if r4 != MAJOR goto next        (omitted for *)
//         if r5 != MINOR goto next        (omitted for *)
//         r0 = 1 ; exit
//     next: ...
//     r0 = 0 ; exit

const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;

/// One eBPF instruction.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

// Opcode parts (linux/bpf_common.h, linux/bpf.h).
const BPF_LDX: u8 = 0x01;
const BPF_JMP: u8 = 0x05;
const BPF_ALU: u8 = 0x04;
const BPF_ALU64: u8 = 0x07;
const BPF_W: u8 = 0x00;
const BPF_MEM: u8 = 0x60;
const BPF_K: u8 = 0x00;
const BPF_X: u8 = 0x08;
const BPF_AND: u8 = 0x50;
const BPF_RSH: u8 = 0x70;
const BPF_MOV: u8 = 0xb0;
const BPF_JNE: u8 = 0x50;
const BPF_EXIT: u8 = 0x90;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}
fn ldx_w(dst: u8, src: u8, off: i16) -> Insn {
    insn(BPF_LDX | BPF_W | BPF_MEM, dst, src, off, 0)
}
fn alu32_k(op: u8, dst: u8, imm: i32) -> Insn {
    insn(BPF_ALU | op | BPF_K, dst, 0, 0, imm)
}
fn mov64_x(dst: u8, src: u8) -> Insn {
    insn(BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0)
}
fn mov64_k(dst: u8, imm: i32) -> Insn {
    insn(BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, imm)
}
fn jne_k(dst: u8, imm: i32, off: i16) -> Insn {
    insn(BPF_JMP | BPF_JNE | BPF_K, dst, 0, off, imm)
}
fn exit() -> Insn {
    insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)
}

fn access_bits(access: &str) -> i32 {
    access.chars().fold(0, |b, c| {
        b | match c {
            'm' => 1,
            'r' => 2,
            'w' => 4,
            _ => 0,
        }
    })
}

/// The device program for `rules` (see the listing above).
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        ldx_w(2, 1, 0),
        alu32_k(BPF_AND, 2, 0xffff),
        ldx_w(3, 1, 0),
        alu32_k(BPF_RSH, 3, 16),
        ldx_w(4, 1, 4),
        ldx_w(5, 1, 8),
    ];
    for r in rules {
        let ty = match r.kind {
            DeviceKind::Block => 1,
            DeviceKind::Char => 2,
        };
        let mut body = vec![
            mov64_x(1, 3),
            alu32_k(BPF_AND, 1, !access_bits(&r.access)),
            jne_k(1, 0, 0),
        ];
        if let Some(m) = r.major {
            body.push(jne_k(4, m as i32, 0));
        }
        if let Some(m) = r.minor {
            body.push(jne_k(5, m as i32, 0));
        }
        body.push(mov64_k(0, 1));
        body.push(exit());
        // Every jump goes past this rule's end: the type test plus `body`.
        let len = body.len() as i16 + 1;
        p.push(jne_k(2, ty, len - 1));
        let n = body.len();
        for (i, ins) in body.into_iter().enumerate() {
            let mut ins = ins;
            if ins.code == BPF_JMP | BPF_JNE | BPF_K {
                ins.off = (n - 1 - i) as i16;
            }
            p.push(ins);
        }
    }
    p.push(mov64_k(0, 0));
    p.push(exit());
    p
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<i64> {
    // SAFETY: bpf(2) reads `size_of::<T>()` bytes of the attr struct we pass
    // (a prefix of `union bpf_attr`, zero-padded by Default), which lives
    // across the call; the pointers inside point at live buffers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>(),
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Load the program for `rules` and attach it to the cgroup v2 directory
/// `dir` (allowing programs of nested cgroups, e.g. a systemd inside the
/// pod, to add their own restrictions). The program stays attached for the
/// cgroup's life.
pub fn apply_bpf(dir: &Path, rules: &[Rule]) -> Result<(), DeviceError> {
    let insns = program(rules);
    let license = c"Apache-2.0";
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    let fd = bpf(BPF_PROG_LOAD, &attr).map_err(DeviceError::Load)?;
    // SAFETY: BPF_PROG_LOAD returned a new descriptor that we alone own.
    let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let cg = std::fs::File::open(dir).map_err(|source| DeviceError::Open {
        path: dir.display().to_string(),
        source,
    })?;
    let attach = ProgAttachAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    bpf(BPF_PROG_ATTACH, &attach).map_err(|source| DeviceError::Attach {
        path: dir.display().to_string(),
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny interpreter for the instructions `program` emits.
    fn run(p: &[Insn], ty: u32, access: u32, major: u32, minor: u32) -> u64 {
        let ctx = [(access << 16) | ty, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                c if c == BPF_LDX | BPF_W | BPF_MEM => {
                    assert_eq!(src, 1);
                    r[dst] = u64::from(ctx[i.off as usize / 4]);
                }
                c if c == BPF_ALU | BPF_AND | BPF_K => {
                    r[dst] = (r[dst] as u32 & i.imm as u32) as u64
                }
                c if c == BPF_ALU | BPF_RSH | BPF_K => r[dst] = ((r[dst] as u32) >> i.imm) as u64,
                c if c == BPF_ALU64 | BPF_MOV | BPF_X => r[dst] = r[src],
                c if c == BPF_ALU64 | BPF_MOV | BPF_K => r[dst] = i.imm as i64 as u64,
                c if c == BPF_JMP | BPF_JNE | BPF_K => {
                    if r[dst] != i.imm as i64 as u64 {
                        pc += i.off as usize;
                    }
                }
                c if c == BPF_JMP | BPF_EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn program_allows_exactly_the_rules() {
        let extra = Device {
            path: "/dev/fuse".into(),
            kind: DeviceKind::Char,
            major: 10,
            minor: 229,
            access: "rw".into(),
            mode: 0o666,
            uid: 0,
            gid: 0,
        };
        let p = program(&rules(&[extra]));
        let (c, b) = (2, 1);
        let (m, rd, wr) = (1, 2, 4);
        assert_eq!(run(&p, c, rd | wr, 1, 3), 1, "null rw");
        assert_eq!(run(&p, c, m, 1, 3), 1, "null mknod");
        assert_eq!(run(&p, c, rd, 136, 42), 1, "any pty");
        assert_eq!(run(&p, c, rd | wr, 10, 229), 1, "--device fuse rw");
        assert_eq!(run(&p, c, m, 10, 229), 0, "--device fuse without m");
        assert_eq!(run(&p, c, rd | wr, 10, 232), 0, "kvm");
        assert_eq!(run(&p, c, m, 10, 237), 0, "loop-control mknod");
        assert_eq!(run(&p, c, wr, 1, 11), 0, "kmsg");
        assert_eq!(run(&p, c, rd | wr, 5, 1), 0, "the host's console");
        assert_eq!(run(&p, c, m, 5, 1), 0, "the host's console, mknod");
        assert_eq!(run(&p, b, rd, 7, 0), 0, "a block device");
        assert_eq!(run(&p, b, rd, 1, 3), 0, "block 1:3 is not null");
        assert_eq!(run(&p, c, rd, 10, 200), 0, "tun is not given by default");
    }

    #[test]
    fn v1_lines() {
        let r = builtin_rules();
        assert_eq!(r[0].v1_line(), "c 1:3 rwm");
        assert_eq!(r.last().map(Rule::v1_line).as_deref(), Some("c 136:* rwm"));
    }
}
