//! Timings of a container's life (disk built, VMM started, agent up,
//! setup done, started, exited, VM stopped, disk copied back), written to
//! the runtime configuration's `debug_log` file when it names one: the
//! tool for seeing where a container's start and stop time goes.

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

struct Tracer {
    file: PathBuf,
    id: String,
    start: Instant,
}

static TRACER: OnceLock<Tracer> = OnceLock::new();

/// Starts tracing container `id` into `file` (once per process).
pub fn init(file: Option<PathBuf>, id: &str) {
    if let Some(file) = file {
        let _ = TRACER.set(Tracer {
            file,
            id: id.to_owned(),
            start: Instant::now(),
        });
    }
}

/// Records that `what` happened now.
pub fn mark(what: &str) {
    if let Some(t) = TRACER.get() {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&t.file)
        {
            let _ = writeln!(
                f,
                "{} {} {:>8} ms {what}",
                crate::time::rfc3339_now(),
                t.id,
                t.start.elapsed().as_millis()
            );
        }
    }
}

/// Appends `file` (the VMM's console output) to the trace, each line
/// prefixed, when tracing.
pub fn append_file(label: &str, file: &std::path::Path) {
    if let (Some(t), Ok(text)) = (TRACER.get(), std::fs::read_to_string(file)) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&t.file)
        {
            for line in text.lines() {
                let _ = writeln!(f, "{} {label}: {line}", t.id);
            }
        }
    }
}
