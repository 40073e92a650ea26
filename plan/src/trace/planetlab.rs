//! PlanetLab / CoMon traces as CloudSim ships them: one directory per day,
//! one file per VM, one integer CPU percentage (0-100) per line, a sample
//! every 300 s. Owns the file order, which decides the VM types CloudSim
//! gives each trace (`File.listFiles()` order; see docs/plan.md).

use std::path::{Path, PathBuf};

use super::{TraceError, VmTrace, Workload};
use crate::model::INTERVAL_S;

/// Order in which the files of a day become VMs 0, 1, 2, ...
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FileOrder {
    /// Sorted by file name (byte order).
    Sorted,
    /// The order the file system lists the directory (`readdir`), as
    /// Java's `File.listFiles()` returns it.
    Fs,
    /// The order of CloudSim's reference run (plan/data/planetlab-order.txt.gz,
    /// the `readdir` order of the machine that made it) for the ten known
    /// days; sorted for any other directory.
    Reference,
}

/// `# day` lines each followed by that day's file names in the reference order.
const REFERENCE_ORDER: &[u8] = include_bytes!("../../data/planetlab-order.txt.gz");

/// The reference order of a day's files, if the day is one of the ten.
pub fn reference_order(day: &str) -> Option<Vec<String>> {
    use std::io::Read;
    let mut text = String::new();
    flate2::read::GzDecoder::new(REFERENCE_ORDER)
        .read_to_string(&mut text)
        .ok()?;
    let mut names = None;
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("# ") {
            if names.is_some() {
                break;
            }
            if d == day {
                names = Some(Vec::new());
            }
        } else if let Some(n) = names.as_mut() {
            n.push(line.to_owned());
        }
    }
    names
}

/// Parses one PlanetLab file's text. `path` only names the file in errors.
pub fn parse(path: &Path, text: &str) -> Result<Vec<f64>, TraceError> {
    let mut util = Vec::with_capacity(288);
    for (i, line) in text.lines().enumerate() {
        let s = line.trim();
        if s.is_empty() {
            return Err(TraceError::line(
                path,
                i + 1,
                "empty line; expected a CPU percentage",
            ));
        }
        let v: u32 = s.parse().map_err(|_| {
            TraceError::line(
                path,
                i + 1,
                format!("{:?} is not a whole CPU percentage", truncate(s)),
            )
        })?;
        if v > 100 {
            return Err(TraceError::line(path, i + 1, format!("{v} is over 100 %")));
        }
        util.push(v as f64 / 100.0);
    }
    if util.is_empty() {
        return Err(TraceError::file(path, "empty trace file"));
    }
    Ok(util)
}

pub(crate) fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Lists the regular files of a directory in the chosen order.
pub fn list_files(dir: &Path, order: FileOrder) -> Result<Vec<PathBuf>, TraceError> {
    let rd = std::fs::read_dir(dir).map_err(|e| TraceError::io(dir, e))?;
    let mut files = Vec::new();
    for e in rd {
        let e = e.map_err(|e| TraceError::io(dir, e))?;
        let p = e.path();
        if p.is_file() {
            files.push(p);
        }
    }
    match order {
        FileOrder::Fs => {}
        FileOrder::Sorted => files.sort(),
        FileOrder::Reference => {
            files.sort();
            let day = dir
                .file_name()
                .map(|d| d.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(names) = reference_order(&day) {
                let mut by_name: Vec<PathBuf> = Vec::with_capacity(names.len());
                for n in &names {
                    let p = dir.join(n);
                    if files.binary_search(&p).is_err() {
                        // Not the reference day's files: keep sorted order.
                        return Ok(files);
                    }
                    by_name.push(p);
                }
                if by_name.len() == files.len() {
                    return Ok(by_name);
                }
            }
        }
    }
    Ok(files)
}

/// Loads a day directory; every file must have as many samples as the first.
/// VMs get CloudSim's types in file order.
pub fn load_dir(dir: &Path, order: FileOrder) -> Result<Workload, TraceError> {
    let files = list_files(dir, order)?;
    if files.is_empty() {
        return Err(TraceError::file(dir, "no trace files in this directory"));
    }
    let mut vms = Vec::with_capacity(files.len());
    let mut expected = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| TraceError::io(f, e))?;
        let util = parse(f, &text)?;
        if expected == 0 {
            expected = util.len();
        } else if util.len() != expected {
            return Err(TraceError::line(
                f,
                util.len().min(expected) + 1,
                format!(
                    "{} samples where the other files have {expected}",
                    util.len()
                ),
            ));
        }
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        vms.push(VmTrace {
            name,
            mips: 0.0,
            pes: 1,
            ram_mb: 0,
            util,
        });
    }
    let mut w = Workload {
        name: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.to_string_lossy().into_owned()),
        interval_s: INTERVAL_S,
        vms,
    };
    w.assign_cloudsim_types();
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match parse(Path::new("day/vm1"), text) {
            Ok(_) => String::from("ok"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_percentages() {
        let u = parse(Path::new("x"), "0\n50\n100\n").unwrap_or_default();
        assert_eq!(u, vec![0.0, 0.5, 1.0]);
    }

    #[test]
    fn malformed_files_name_file_and_line() {
        assert_eq!(err(""), "day/vm1: empty trace file");
        assert_eq!(
            err("1\nabc\n"),
            "day/vm1:2: \"abc\" is not a whole CPU percentage"
        );
        assert_eq!(err("1\n2\n101\n"), "day/vm1:3: 101 is over 100 %");
        assert_eq!(
            err("1\n\n3\n"),
            "day/vm1:2: empty line; expected a CPU percentage"
        );
        assert_eq!(
            err("-4\n"),
            "day/vm1:1: \"-4\" is not a whole CPU percentage"
        );
    }

    #[test]
    fn wrong_length_names_the_file() {
        let dir = std::env::temp_dir().join(format!("plan-pl-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join("a"), "1\n2\n3\n");
        let _ = std::fs::write(dir.join("b"), "1\n2\n");
        let e = load_dir(&dir, FileOrder::Sorted)
            .map(|_| ())
            .map_err(|e| e.to_string());
        let _ = std::fs::remove_dir_all(&dir);
        let msg = e.err().unwrap_or_default();
        assert!(
            msg.ends_with("/b:3: 2 samples where the other files have 3"),
            "{msg}"
        );
    }
}
