//! The seccomp filter of SSH sessions (classic BPF, as `bwrap --seccomp FD` takes it).
//!
//! Root in a session keeps the capabilities customization needs, so the kernel interfaces that
//! would let it reach the host are refused with `EPERM` (measured in docs/research/job-sandbox.md):
//! user namespaces (`unshare`/`clone` with `CLONE_NEWUSER`), keyrings (host root's keys are
//! readable otherwise), mounts and the new mount API, `setns`, `pivot_root`, module loading,
//! `kexec`, `bpf`, `perf_event_open`, `userfaultfd`, `open_by_handle_at`, `io_uring`, `acct`,
//! swap, `reboot`, `syslog`, `quotactl`. `clone3` answers `ENOSYS`, so the C library falls back to
//! `clone`, whose flags the filter can see. Other architectures' system calls (and x32 on x86_64)
//! kill the process. Everything else is allowed.

/// `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;
const CLONE_NEWUSER: u32 = 0x1000_0000;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// Low 32 bits of `args[0]` (little-endian).
const OFF_ARG0: u32 = 16;

/// One architecture's numbers.
struct Arch {
    audit: u32,
    x32_check: bool,
    denied: &'static [u32],
    unshare: u32,
    clone: u32,
    clone3: u32,
}

// keyctl add_key request_key bpf perf_event_open userfaultfd kexec_load kexec_file_load
// init_module finit_module delete_module open_by_handle_at acct swapon swapoff reboot syslog
// mount umount2 pivot_root fsopen fsconfig fsmount fspick move_mount open_tree mount_setattr
// setns io_uring_setup io_uring_enter io_uring_register quotactl quotactl_fd
const X86_64: Arch = Arch {
    audit: 0xc000_003e,
    x32_check: true,
    denied: &[
        250, 248, 249, 321, 298, 323, 246, 320, 175, 313, 176, 304, 163, 167, 168, 169, 103, 165,
        166, 155, 430, 431, 432, 433, 429, 428, 442, 308, 425, 426, 427, 179, 443,
    ],
    unshare: 272,
    clone: 56,
    clone3: 435,
};

const AARCH64: Arch = Arch {
    audit: 0xc000_00b7,
    x32_check: false,
    denied: &[
        219, 217, 218, 280, 241, 282, 104, 294, 105, 273, 106, 265, 89, 224, 225, 142, 116, 40, 39,
        41, 430, 431, 432, 433, 429, 428, 442, 268, 425, 426, 427, 60, 443,
    ],
    unshare: 97,
    clone: 220,
    clone3: 435,
};

/// Jump targets, resolved after layout.
#[derive(Clone, Copy)]
enum To {
    Next,
    Eperm,
    Enosys,
    Kill,
    CheckNewUser,
}

enum Op {
    Ld(u32),
    Jeq(u32, To, To),
    Jset(u32, To, To),
    Ret(u32),
    Label(To),
}

/// The filter for the machine this runs on; `None` on an architecture it does not know.
pub fn filter() -> Option<Vec<u8>> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => &X86_64,
        "aarch64" => &AARCH64,
        _ => return None,
    };
    Some(encode(&program(arch)))
}

fn program(a: &Arch) -> Vec<Insn> {
    let mut ops = vec![
        Op::Ld(OFF_ARCH),
        Op::Jeq(a.audit, To::Next, To::Kill),
        Op::Ld(OFF_NR),
    ];
    if a.x32_check {
        ops.push(Op::Jset(X32_SYSCALL_BIT, To::Kill, To::Next));
    }
    for nr in a.denied {
        ops.push(Op::Jeq(*nr, To::Eperm, To::Next));
    }
    ops.push(Op::Jeq(a.clone3, To::Enosys, To::Next));
    ops.push(Op::Jeq(a.unshare, To::CheckNewUser, To::Next));
    ops.push(Op::Jeq(a.clone, To::CheckNewUser, To::Next));
    ops.push(Op::Ret(RET_ALLOW));
    ops.push(Op::Label(To::CheckNewUser));
    ops.push(Op::Ld(OFF_ARG0));
    ops.push(Op::Jset(CLONE_NEWUSER, To::Eperm, To::Next));
    ops.push(Op::Ret(RET_ALLOW));
    ops.push(Op::Label(To::Eperm));
    ops.push(Op::Ret(RET_ERRNO | EPERM));
    ops.push(Op::Label(To::Enosys));
    ops.push(Op::Ret(RET_ERRNO | ENOSYS));
    ops.push(Op::Label(To::Kill));
    ops.push(Op::Ret(RET_KILL_PROCESS));
    assemble(&ops)
}

fn assemble(ops: &[Op]) -> Vec<Insn> {
    // Instruction index of each label.
    let mut idx = 0usize;
    let mut labels: Vec<(u8, usize)> = vec![];
    for op in ops {
        match op {
            Op::Label(t) => labels.push((*t as u8, idx)),
            _ => idx += 1,
        }
    }
    let at = |t: To| labels.iter().find(|(l, _)| *l == t as u8).map(|(_, i)| *i);
    let mut out = vec![];
    for op in ops {
        let here = out.len();
        let rel = |t: To| -> u8 {
            match t {
                To::Next => 0,
                t => {
                    let target = at(t).unwrap_or_else(|| unreachable!("every target is placed"));
                    // Forward jumps only, relative to the next instruction; the program is short.
                    u8::try_from(target - here - 1)
                        .unwrap_or_else(|_| unreachable!("jump too long"))
                }
            }
        };
        match op {
            Op::Label(_) => {}
            Op::Ld(off) => out.push(Insn {
                code: LD_W_ABS,
                jt: 0,
                jf: 0,
                k: *off,
            }),
            Op::Jeq(k, t, f) => out.push(Insn {
                code: JEQ_K,
                jt: rel(*t),
                jf: rel(*f),
                k: *k,
            }),
            Op::Jset(k, t, f) => out.push(Insn {
                code: JSET_K,
                jt: rel(*t),
                jf: rel(*f),
                k: *k,
            }),
            Op::Ret(k) => out.push(Insn {
                code: RET_K,
                jt: 0,
                jf: 0,
                k: *k,
            }),
        }
    }
    out
}

fn encode(p: &[Insn]) -> Vec<u8> {
    let mut b = Vec::with_capacity(p.len() * 8);
    for i in p {
        b.extend_from_slice(&i.code.to_ne_bytes());
        b.push(i.jt);
        b.push(i.jf);
        b.extend_from_slice(&i.k.to_ne_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny interpreter of the instructions used, to check the program's decisions.
    fn decide(p: &[Insn], arch: u32, nr: u32, arg0: u32) -> u32 {
        let mut pc = 0;
        let mut acc = 0u32;
        loop {
            let i = p[pc];
            match i.code {
                LD_W_ABS => {
                    acc = match i.k {
                        OFF_NR => nr,
                        OFF_ARCH => arch,
                        OFF_ARG0 => arg0,
                        _ => panic!("load of {}", i.k),
                    };
                    pc += 1;
                }
                JEQ_K => pc += 1 + if acc == i.k { i.jt } else { i.jf } as usize,
                JSET_K => pc += 1 + if acc & i.k != 0 { i.jt } else { i.jf } as usize,
                RET_K => return i.k,
                c => panic!("code {c:#x}"),
            }
        }
    }

    #[test]
    fn decisions() {
        let a = &X86_64;
        let p = program(a);
        let eperm = RET_ERRNO | EPERM;
        assert_eq!(decide(&p, a.audit, 0, 0), RET_ALLOW, "read");
        assert_eq!(decide(&p, a.audit, 250, 0), eperm, "keyctl");
        assert_eq!(decide(&p, a.audit, 165, 0), eperm, "mount");
        assert_eq!(decide(&p, a.audit, 443, 0), eperm, "quotactl_fd (last)");
        assert_eq!(decide(&p, a.audit, 435, 0), RET_ERRNO | ENOSYS, "clone3");
        assert_eq!(
            decide(&p, a.audit, 272, CLONE_NEWUSER),
            eperm,
            "unshare(NEWUSER)"
        );
        assert_eq!(
            decide(&p, a.audit, 272, 0x0002_0000),
            RET_ALLOW,
            "unshare(NEWNS)"
        );
        assert_eq!(
            decide(&p, a.audit, 56, CLONE_NEWUSER | 0x11),
            eperm,
            "clone(NEWUSER)"
        );
        assert_eq!(
            decide(&p, a.audit, 56, 0x0120_0011),
            RET_ALLOW,
            "fork-like clone"
        );
        assert_eq!(decide(&p, a.audit, 0x4000_0000, 0), RET_KILL_PROCESS, "x32");
        assert_eq!(decide(&p, 0x4000_0003, 0, 0), RET_KILL_PROCESS, "i386");
        let b = &AARCH64;
        let q = program(b);
        assert_eq!(decide(&q, b.audit, 219, 0), eperm, "keyctl on aarch64");
        assert_eq!(decide(&q, b.audit, 63, 0), RET_ALLOW, "read on aarch64");
        assert_eq!(decide(&q, a.audit, 63, 0), RET_KILL_PROCESS, "foreign arch");
        assert_eq!(encode(&p).len(), p.len() * 8);
    }
}
