//! What the daemon reads about processes from /proc: whether a recorded
//! process is still the one it started (PID and start time), the VMM
//! under a jail process, resident memory, the guest RAM a VMM has touched,
//! and the `condo jail` processes of this daemon's state directory (to
//! find one a killed daemon left unrecorded).

use std::fs;
use std::path::Path;

/// The start time of `pid` (clock ticks after boot, /proc/PID/stat field
/// 22), or None when there is no such process.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: the
    // fields after it follow the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split(' ').nth(19)?.parse().ok()
}

/// Whether `pid` is alive, is not a zombie, and started at `start`.
pub fn is_same(pid: i32, start: u64) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(i) = stat.rfind(')') else {
        return false;
    };
    let Some(rest) = stat.get(i + 2..) else {
        return false;
    };
    let mut f = rest.split(' ');
    let state = f.next().unwrap_or("X");
    if state == "Z" || state == "X" {
        return false;
    }
    f.nth(18).and_then(|v| v.parse::<u64>().ok()) == Some(start)
}

/// The first child of `pid` (a jail's VMM).
pub fn first_child(pid: i32) -> Option<i32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resident memory of `pid`, bytes.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    // SAFETY: no arguments.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Resident and proportional memory of the mappings of `pid` that hold
/// guest RAM (those of at least `min_bytes`), and of the whole process:
/// (guest RSS, guest PSS, total RSS, total PSS), bytes.
pub fn memory_detail(pid: i32, min_bytes: u64) -> Option<(u64, u64, u64, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let (mut g_rss, mut g_pss, mut rss, mut pss) = (0, 0, 0, 0);
    let mut in_guest = false;
    for line in s.lines() {
        let mut f = line.split_whitespace();
        let Some(first) = f.next() else { continue };
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                in_guest = b.saturating_sub(a) >= min_bytes;
                continue;
            }
        }
        let kib = |f: &mut std::str::SplitWhitespace| {
            f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024
        };
        match first {
            "Rss:" => {
                let v = kib(&mut f);
                rss += v;
                if in_guest {
                    g_rss += v;
                }
            }
            "Pss:" => {
                let v = kib(&mut f);
                pss += v;
                if in_guest {
                    g_pss += v;
                }
            }
            _ => {}
        }
    }
    Some((g_rss, g_pss, rss, pss))
}

/// The `condo jail` processes whose chroot base is `jail_dir`: (pid, jail
/// id).
pub fn jail_processes(jail_dir: &Path) -> Vec<(i32, String)> {
    let want = jail_dir.as_os_str().as_encoded_bytes();
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if !args.iter().any(|a| *a == b"jail") {
            continue;
        }
        let value = |name: &[u8]| args.windows(2).find(|w| w[0] == name).map(|w| w[1]);
        if value(b"--chroot-base-dir") != Some(want) {
            continue;
        }
        if let Some(id) = value(b"--id").and_then(|v| std::str::from_utf8(v).ok()) {
            out.push((pid, id.to_owned()));
        }
    }
    // A jail's VMM is a fork of it, with the same command line: keep the
    // jail processes only.
    let pids: Vec<i32> = out.iter().map(|(p, _)| *p).collect();
    out.retain(|(p, _)| !parent(*p).is_some_and(|pp| pids.contains(&pp)));
    out
}

/// The parent of `pid`.
pub fn parent(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.get(stat.rfind(')')? + 2..)?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// Sends `sig` to `pid`; false when it is gone.
pub fn signal(pid: i32, sig: libc::c_int) -> bool {
    // SAFETY: plain system call.
    unsafe { libc::kill(pid, sig) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsafe_getppid() -> i32 {
        // SAFETY: no arguments.
        unsafe { libc::getppid() }
    }

    #[test]
    fn this_process_is_itself() {
        let me = std::process::id() as i32;
        let t = start_time(me).unwrap();
        assert!(is_same(me, t));
        assert!(!is_same(me, t + 1));
        assert!(rss_bytes(me).unwrap() > 0);
        let (_, _, rss, pss) = memory_detail(me, 1 << 40).unwrap();
        assert!(rss > 0 && pss > 0);
        assert_eq!(start_time(-5), None);
        assert_eq!(parent(me), Some(unsafe_getppid()));
    }
}
