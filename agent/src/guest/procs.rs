//! The container's processes: the agent's descendants, found through
//! `/proc` (every process's parent), for `Ps` and signals to `all`. The
//! agent is PID 1 or a child subreaper, so orphans stay in its tree.

use std::collections::HashMap;
use std::io;

/// The guest pids of the agent's descendants, ascending.
pub fn container_pids() -> io::Result<Vec<u32>> {
    let me = std::process::id();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let dir = std::fs::read_dir("/proc")
        .map_err(|e| io::Error::new(e.kind(), format!("cannot list /proc: {e}")))?;
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // A process that ended since the listing has no stat: skip it.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(ppid) = parent_of(&stat) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![me];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            // pid reuse cannot make a cycle within one listing, but a
            // cap costs nothing.
            if out.len() < 1 << 20 {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The parent pid in a `/proc/PID/stat` line: the fourth field, counted
/// after the command name's closing parenthesis (the name may hold spaces
/// and parentheses itself).
fn parent_of(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Sends `sig` to every process of the container; how many got it.
pub fn signal_all(sig: i32) -> io::Result<usize> {
    let mut n = 0;
    for pid in container_pids()? {
        // A process may have ended since the listing.
        if super::sys::kill(pid, sig).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_is_read_after_the_last_parenthesis() {
        assert_eq!(parent_of("42 (sh) S 7 42 42 0"), Some(7));
        assert_eq!(parent_of("42 (a) b) (c) R 9 1"), Some(9));
        assert_eq!(parent_of("42 (x"), None);
        assert_eq!(parent_of("42 (x) S"), None);
    }

    #[test]
    fn our_children_are_listed() {
        let mut c = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let pids = container_pids().expect("pids");
        assert!(pids.contains(&c.id()), "{pids:?}");
        let _ = c.kill();
        let _ = c.wait();
    }
}
