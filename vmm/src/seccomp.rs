//! seccomp filters, one per kind of thread, built with `seccompiler`.
//!
//! Every thread that can meet guest- or client-controlled data runs under a
//! default-deny filter listing the system calls its kind needs:
//!
//! - `vcpu`: `KVM_RUN` and the port and MMIO exits it serves (device
//!   activation included);
//! - `device`: the virtio queue workers (disk I/O, TAP, vsock's Unix sockets,
//!   balloon madvise, getrandom), started by one spawner thread that holds
//!   the same filter, so the workers inherit exactly it;
//! - `vmm`: the main loop (API requests handed over, pause, snapshots, exit);
//! - `api`: the HTTP server and its connection threads.
//!
//! A call outside the list raises SIGSYS; the handler prints one line naming
//! the thread kind and the system call number and exits with status
//! [`EXIT_BAD_SYSCALL`] (Firecracker's 148). Level 2 (the default) also
//! checks arguments: ioctls by type (KVM, TTY/TUN, block), sockets Unix
//! only, `clone` threads only; level 1 checks system call numbers only;
//! level 0 installs nothing (for debugging).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Once, OnceLock};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule,
};

/// The exit status after a forbidden system call.
pub const EXIT_BAD_SYSCALL: i32 = 148;

/// What a thread does, and so which system calls it may make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    Vmm,
    Vcpu,
    Device,
    Api,
}

impl ThreadKind {
    fn name(self) -> &'static str {
        match self {
            Self::Vmm => "vmm",
            Self::Vcpu => "vcpu",
            Self::Device => "device",
            Self::Api => "api",
        }
    }
}

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp: cannot build the {0} filter: {1}")]
    Build(&'static str, String),
    #[error("seccomp: cannot install the {0} filter: {1}")]
    Install(&'static str, String),
}

static LEVEL: AtomicU8 = AtomicU8::new(2);

/// Sets the filtering level for every thread started from now on: 0 (none),
/// 1 (system call numbers) or 2 (numbers and arguments).
pub fn set_level(level: u8) {
    LEVEL.store(level.min(2), Ordering::Release);
    // glibc's extra malloc arenas open files: /sys/devices/system/cpu/
    // online when a thread first needs one, /proc/sys/vm/overcommit_memory
    // when one shrinks (both seen refused under the filters; a jail has
    // neither file). With the main arena only, neither happens; it also
    // keeps the VMM small, and its threads allocate little once running.
    // SAFETY: mallopt only sets a malloc tunable.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

/// Names the calling thread's kind for the SIGSYS report (threads started
/// by a filtered thread inherit its filter, not this name).
pub fn mark_thread(kind: ThreadKind) {
    KIND.with(|k| k.set(kind.name()));
}

/// The current level.
pub fn level() -> u8 {
    LEVEL.load(Ordering::Acquire)
}

thread_local! {
    // Read by the SIGSYS handler: a const-initialised Cell needs no
    // allocation or lock.
    static KIND: Cell<&'static str> = const { Cell::new("") };
}

/// The compiled filter for `kind` at the current level; None at level 0.
/// Each kind is compiled once per process (see [`compile_ahead`]).
pub fn filter(kind: ThreadKind) -> Result<Option<BpfProgram>, SeccompError> {
    let level = level();
    let (at, built) = COMPILED[kind as usize].get_or_init(|| {
        let r = filter_at(kind, level).map_err(|e| e.to_string());
        (level, r)
    });
    if *at != level {
        // The level changed after the filter was compiled (tests do).
        return filter_at(kind, level);
    }
    built
        .clone()
        .map_err(|e| SeccompError::Build(kind.name(), e))
}

/// Each kind's compiled filter, with the level it was compiled at.
#[allow(clippy::type_complexity)]
static COMPILED: [OnceLock<(u8, Result<Option<BpfProgram>, String>)>; 4] =
    [const { OnceLock::new() }; 4];

/// Compiles the filters of the threads a VM starts (vCPUs, devices, the
/// VMM thread) now, so that building the VM later does not wait for them
/// (compiling one costs about as much as creating a vCPU). Call it once
/// the level is set.
pub fn compile_ahead() {
    for kind in [ThreadKind::Vcpu, ThreadKind::Device, ThreadKind::Vmm] {
        let _ = filter(kind);
    }
}

fn filter_at(kind: ThreadKind, level: u8) -> Result<Option<BpfProgram>, SeccompError> {
    if level == 0 {
        return Ok(None);
    }
    let err = |e: seccompiler::BackendError| SeccompError::Build(kind.name(), e.to_string());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, conds) in syscalls(kind) {
        let mut rs = Vec::new();
        if level >= 2 {
            for c in conds {
                rs.push(SeccompRule::new(vec![c.condition().map_err(err)?]).map_err(err)?);
            }
        }
        rules.entry(nr).or_default().extend(rs);
    }
    let arch = std::env::consts::ARCH.try_into().map_err(err)?;
    let f =
        SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch).map_err(err)?;
    let prog: BpfProgram = f.try_into().map_err(err)?;
    Ok(Some(prog))
}

/// Installs `prog` (from [`filter`]) on the calling thread, which from then
/// on is reported as a `kind` thread if it breaks it.
pub fn apply(kind: ThreadKind, prog: Option<&BpfProgram>) -> Result<(), SeccompError> {
    let Some(prog) = prog else { return Ok(()) };
    install_sigsys_handler();
    mark_thread(kind);
    seccompiler::apply_filter(prog).map_err(|e| SeccompError::Install(kind.name(), e.to_string()))
}

/// Builds and installs the `kind` filter on the calling thread.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    apply(kind, filter(kind)?.as_ref())
}

/// Spawns thread `name` that runs under the `kind` filter before `f` runs;
/// returns once the filter is in place (or could not be).
pub fn spawn<T: Send + 'static>(
    name: String,
    kind: ThreadKind,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<Option<T>>> {
    let prog = filter(kind).map_err(std::io::Error::other)?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name(name)
        .stack_size(256 << 10)
        .spawn(move || {
            let r = apply(kind, prog.as_ref());
            let ok = r.is_ok();
            let _ = tx.send(r);
            ok.then(f)
        })?;
    match rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(std::io::Error::other(e)),
        Err(_) => Err(std::io::Error::other(
            "the thread ended before its filter was in place",
        )),
    }
}

/// A thread started ahead under its filter, waiting for its work.
pub struct Parked {
    job: std::sync::mpsc::SyncSender<Box<dyn FnOnce() + Send>>,
    handle: std::thread::JoinHandle<Option<()>>,
}

/// Starts thread `name` under the `kind` filter, parked until
/// [`Parked::run`] gives it its work; dropped unused, it ends. Work handed
/// to a parked thread starts without a thread to create or a filter to
/// load on the way.
pub fn park(name: String, kind: ThreadKind) -> std::io::Result<Parked> {
    let (job, waiting) = std::sync::mpsc::sync_channel::<Box<dyn FnOnce() + Send>>(1);
    let handle = spawn(name, kind, move || {
        if let Ok(f) = waiting.recv() {
            f();
        }
    })?;
    Ok(Parked { job, handle })
}

impl Parked {
    /// Runs `f` on the parked thread; its handle, as [`spawn`] gives.
    pub fn run(
        self,
        f: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<std::thread::JoinHandle<Option<()>>> {
        self.job
            .send(Box::new(f))
            .map_err(|_| std::io::Error::other("the parked thread has ended"))?;
        Ok(self.handle)
    }
}

fn install_sigsys_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a plain sigaction with an async-signal-safe handler.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = sigsys_handler as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut());
        }
    });
}

/// Offset of `si_syscall` in a SIGSYS siginfo_t (after signo, errno, code
/// and padding to 16, then the call address).
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers;
    // si_syscall is an int at a fixed offset for SIGSYS.
    let nr =
        unsafe { std::ptr::read_unaligned(info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<i32>()) };
    let kind = KIND.with(|k| k.get());
    let mut buf = [0u8; 256];
    let mut n = 0;
    for part in [
        "condo: error: seccomp: the ".as_bytes(),
        kind.as_bytes(),
        b" thread made a forbidden system call (number ",
    ] {
        n += copy(&mut buf[n..], part);
    }
    n += write_decimal(&mut buf[n..], nr);
    // For open and openat, the path too: what a thread tried to open is
    // what one needs to know.
    let path_reg = match i64::from(nr) {
        libc::SYS_open => Some(libc::REG_RDI),
        libc::SYS_openat => Some(libc::REG_RSI),
        _ => None,
    };
    if let (Some(reg), false) = (path_reg, ctx.is_null()) {
        // SAFETY: the kernel passes the interrupted context; the register
        // holds the path pointer the thread passed to open(at), which
        // points into its own memory (the call was refused, not run).
        let p = unsafe { (*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs[reg as usize] }
            as *const u8;
        if !p.is_null() {
            n += copy(&mut buf[n..], b", path ");
            let mut i = 0;
            while i < 64 && n < buf.len() - 32 {
                // SAFETY: as above; at most 64 bytes, up to the NUL.
                let c = unsafe { *p.add(i) };
                if c == 0 {
                    break;
                }
                buf[n] = c;
                n += 1;
                i += 1;
            }
        }
    }
    n += copy(&mut buf[n..], b"); stopping the VM\n");
    // SAFETY: write and _exit are async-signal-safe and in every filter.
    unsafe {
        libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), n);
        libc::_exit(EXIT_BAD_SYSCALL);
    }
}

fn copy(dst: &mut [u8], src: &[u8]) -> usize {
    let n = src.len().min(dst.len());
    dst[..n].copy_from_slice(&src[..n]);
    n
}

fn write_decimal(dst: &mut [u8], v: i32) -> usize {
    let mut digits = [0u8; 12];
    let mut i = digits.len();
    let mut u = v.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (u % 10) as u8;
        u /= 10;
        if u == 0 {
            break;
        }
    }
    if v < 0 {
        i -= 1;
        digits[i] = b'-';
    }
    copy(dst, &digits[i..])
}

/// One allowed form of a system call: its argument `arg` compared with
/// `value` (under `mask` when given).
#[derive(Clone, Copy)]
struct Cond {
    arg: u8,
    mask: Option<u64>,
    value: u64,
}

impl Cond {
    fn condition(self) -> Result<SeccompCondition, seccompiler::BackendError> {
        let op = match self.mask {
            Some(m) => Op::MaskedEq(m),
            None => Op::Eq,
        };
        SeccompCondition::new(self.arg, Len::Qword, op, self.value)
    }
}

/// An ioctl whose request is of type `ty` (bits 8..16: KVM is 0xAE).
const fn ioctl_type(ty: u64) -> Cond {
    Cond {
        arg: 1,
        mask: Some(0xff00),
        value: ty << 8,
    }
}
const KVM: Cond = ioctl_type(0xAE);
/// Terminal and TUN ioctls share type 'T'.
const TTY_TUN: Cond = ioctl_type(b'T' as u64);
/// Block device ioctls (BLKGETSIZE64, BLKDISCARD...).
const BLK: Cond = ioctl_type(0x12);
const UNIX_SOCKETS: Cond = Cond {
    arg: 0,
    mask: None,
    value: libc::AF_UNIX as u64,
};
/// Sockets a live migration's source opens: TCP or Unix.
const INET_SOCKETS: Cond = Cond {
    arg: 0,
    mask: None,
    value: libc::AF_INET as u64,
};
const INET6_SOCKETS: Cond = Cond {
    arg: 0,
    mask: None,
    value: libc::AF_INET6 as u64,
};
const THREADS_ONLY: Cond = Cond {
    arg: 0,
    mask: Some(libc::CLONE_THREAD as u64),
    value: libc::CLONE_THREAD as u64,
};

/// What any Rust thread needs: memory, locks, signals, time, exit.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_eventfd2,
];

/// Starting threads (glibc: clone3, falling back to clone).
const THREAD_START: &[i64] = &[
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_sched_getaffinity,
];

const EPOLL: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
];

const TIMERS: &[i64] = &[
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
];

const FILE_IO: &[i64] = &[
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_ftruncate,
];

const UNIX_SOCKET_IO: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

/// The system calls `kind` may make; a call with argument conditions is
/// allowed (at level 2) when any of them holds.
fn syscalls(kind: ThreadKind) -> Vec<(i64, Vec<Cond>)> {
    let mut v: Vec<(i64, Vec<Cond>)> = COMMON.iter().map(|&nr| (nr, vec![])).collect();
    let mut add = |list: &[i64]| v.extend(list.iter().map(|&nr| (nr, vec![])));
    match kind {
        ThreadKind::Vcpu => {
            // Device activation (on a register write) sets up the worker's
            // epoll, eventfds and timers; the worker itself is started by
            // the device spawner thread.
            add(EPOLL);
            add(TIMERS);
            add(&[libc::SYS_tgkill, libc::SYS_rt_sigaction]);
            v.push((libc::SYS_ioctl, vec![KVM, TTY_TUN]));
        }
        ThreadKind::Device => {
            add(THREAD_START);
            add(EPOLL);
            add(TIMERS);
            add(FILE_IO);
            add(UNIX_SOCKET_IO);
            v.push((libc::SYS_clone, vec![THREADS_ONLY]));
            v.push((libc::SYS_socket, vec![UNIX_SOCKETS]));
            v.push((libc::SYS_ioctl, vec![TTY_TUN, BLK]));
        }
        ThreadKind::Api => {
            add(THREAD_START);
            add(UNIX_SOCKET_IO);
            add(EPOLL);
            v.push((libc::SYS_clone, vec![THREADS_ONLY]));
        }
        ThreadKind::Vmm => {
            add(EPOLL);
            add(TIMERS);
            add(FILE_IO);
            add(&[
                libc::SYS_openat,
                libc::SYS_open,
                libc::SYS_unlink,
                libc::SYS_unlinkat,
                libc::SYS_rename,
                libc::SYS_renameat,
                libc::SYS_renameat2,
                libc::SYS_mincore,
                libc::SYS_copy_file_range,
                libc::SYS_sendfile,
                libc::SYS_tgkill,
                libc::SYS_rt_sigaction,
                libc::SYS_recvfrom,
                libc::SYS_sendto,
                libc::SYS_shutdown,
                // A live migration's stream.
                libc::SYS_connect,
                libc::SYS_setsockopt,
                libc::SYS_getsockopt,
                libc::SYS_getsockname,
                libc::SYS_getpeername,
                libc::SYS_poll,
                libc::SYS_ppoll,
            ]);
            v.push((
                libc::SYS_socket,
                vec![UNIX_SOCKETS, INET_SOCKETS, INET6_SOCKETS],
            ));
            v.push((libc::SYS_ioctl, vec![KVM, TTY_TUN]));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_compiles_at_every_level() {
        for level in [1, 2] {
            for kind in [
                ThreadKind::Vmm,
                ThreadKind::Vcpu,
                ThreadKind::Device,
                ThreadKind::Api,
            ] {
                let prog = filter_at(kind, level).unwrap().unwrap();
                assert!(prog.len() > 20, "{kind:?} filter too short");
            }
        }
        assert!(filter_at(ThreadKind::Vcpu, 0).unwrap().is_none());
    }

    #[test]
    fn decimal_formatting() {
        let mut b = [0u8; 12];
        let n = write_decimal(&mut b, 41);
        assert_eq!(&b[..n], b"41");
        let n = write_decimal(&mut b, -7);
        assert_eq!(&b[..n], b"-7");
        let n = write_decimal(&mut b, 0);
        assert_eq!(&b[..n], b"0");
    }

    /// Forks a child that installs the `kind` filter and runs `body`
    /// (system calls only: no allocation after a fork), then exits 0;
    /// returns its exit status and what it wrote to stderr.
    fn filtered_child(kind: ThreadKind, body: fn()) -> (i32, String) {
        let prog = filter_at(kind, 2).unwrap().unwrap();
        let mut fds = [0; 2];
        let mut out = vec![0u8; 256];
        let mut status = 0;
        // SAFETY: plain system calls on descriptors this function owns; the
        // child only makes system calls (the filter was compiled before the
        // fork) and ends with _exit.
        let n = unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                libc::dup2(fds[1], libc::STDERR_FILENO);
                if apply(kind, Some(&prog)).is_err() {
                    libc::_exit(10);
                }
                body();
                libc::_exit(0);
            }
            libc::close(fds[1]);
            libc::waitpid(pid, &mut status, 0);
            let n = libc::read(fds[0], out.as_mut_ptr().cast(), out.len());
            libc::close(fds[0]);
            n
        };
        assert!(libc::WIFEXITED(status), "child status {status}");
        let msg = String::from_utf8_lossy(&out[..n.max(0) as usize]).into_owned();
        (libc::WEXITSTATUS(status), msg)
    }

    /// A forbidden call in a filtered process is refused: the process ends
    /// with [`EXIT_BAD_SYSCALL`] and one line naming the call.
    #[test]
    fn forbidden_system_call_stops_the_process() {
        // A vCPU thread has no business opening sockets.
        // SAFETY: a system call with no pointers.
        let (status, msg) = filtered_child(ThreadKind::Vcpu, || unsafe {
            libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        });
        assert_eq!(status, EXIT_BAD_SYSCALL, "{msg}");
        assert_eq!(
            msg,
            format!(
                "condo: error: seccomp: the vcpu thread made a forbidden system call (number {}); stopping the VM\n",
                libc::SYS_socket
            )
        );
        // The same call is fine where it belongs (vsock's Unix sockets)...
        // SAFETY: as above.
        let (status, msg) = filtered_child(ThreadKind::Device, || unsafe {
            libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
        });
        assert_eq!(status, 0, "{msg}");
        // ...but not for other address families.
        // SAFETY: as above.
        let (status, _) = filtered_child(ThreadKind::Device, || unsafe {
            libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        });
        assert_eq!(status, EXIT_BAD_SYSCALL);
    }

    /// A refused open names the file.
    #[test]
    fn forbidden_open_names_its_path() {
        // SAFETY: a NUL-terminated path.
        let (status, msg) = filtered_child(ThreadKind::Api, || unsafe {
            libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY);
        });
        assert_eq!(status, EXIT_BAD_SYSCALL, "{msg}");
        assert!(
            msg.ends_with(", path /etc/hostname); stopping the VM\n"),
            "{msg}"
        );
    }

    /// ioctls are allowed by type at level 2.
    #[test]
    fn ioctl_of_another_type_is_refused() {
        // SAFETY: ioctls without pointer arguments on a descriptor the
        // child owns (fd 0 of the child may be anything; both calls fail
        // or succeed harmlessly).
        let (status, msg) = filtered_child(ThreadKind::Vcpu, || unsafe {
            // A KVM ioctl on a non-KVM fd: allowed (fails with ENOTTY).
            libc::ioctl(libc::STDERR_FILENO, 0xAE01);
        });
        assert_eq!(status, 0, "{msg}");
        // SAFETY: as above.
        let (status, _) = filtered_child(ThreadKind::Vcpu, || unsafe {
            // BLKGETSIZE64 (type 0x12) is not for vCPU threads.
            libc::ioctl(libc::STDERR_FILENO, 0x8008_1272);
        });
        assert_eq!(status, EXIT_BAD_SYSCALL);
    }
}
