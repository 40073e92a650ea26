//! `condo-bench consolidation-report`: turns the result line of
//! `condo-bench consolidation` (JSON) into the results file (Markdown
//! tables: each guest alone and together, throughput, latency
//! percentiles, its CPU; the host's utilization both ways, and the targets)
//! and the plot (PNG: the host's utilization over time through both
//! phases, from the host manager's accounting and from `/proc/stat`).
//! Runs outside the test host (the plot's labels need a TrueType font:
//! DejaVu Sans where the system has it, or `PLAN_FONT`).
//!
//! Usage: condo-bench consolidation-report --in RESULT.json --md OUT.md
//!        --png OUT.png [--where TEXT] [--command TEXT] [--note TEXT]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::Value;

struct Opts {
    input: PathBuf,
    md: PathBuf,
    png: PathBuf,
    place: String,
    command: String,
    /// A sentence on the conditions of the run (e.g. a shared machine).
    note: String,
}

fn usage() -> ! {
    eprintln!(
        "usage: condo-bench consolidation-report --in RESULT.json --md OUT.md --png OUT.png \
         [--where TEXT] [--command TEXT] [--note TEXT]"
    );
    std::process::exit(2)
}

fn parse(mut args: impl Iterator<Item = String>) -> Opts {
    let mut o = Opts {
        input: PathBuf::new(),
        md: PathBuf::new(),
        png: PathBuf::new(),
        place: String::new(),
        command: "benches/consolidation.sh".into(),
        note: String::new(),
    };
    while let Some(flag) = args.next() {
        let v = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--in" => o.input = v.into(),
            "--md" => o.md = v.into(),
            "--png" => o.png = v.into(),
            "--where" => o.place = v,
            "--command" => o.command = v,
            "--note" => o.note = v,
            _ => usage(),
        }
    }
    if o.input.as_os_str().is_empty() || o.md.as_os_str().is_empty() || o.png.as_os_str().is_empty()
    {
        usage();
    }
    o
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn points(v: &Value) -> Vec<(f64, f64)> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect()
}

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers a font for the labels; false when there is none.
fn font() -> bool {
    let env = std::env::var("PLAN_FONT").ok();
    for p in env
        .iter()
        .map(String::as_str)
        .chain(FONT_PATHS.iter().copied())
    {
        if let Ok(bytes) = std::fs::read(p) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

/// The plot: host utilization over time, both sources, phases shaded.
fn plot(r: &Value, path: &Path) -> Result<(), String> {
    let acct = points(&r["series_acct"]);
    let proc = points(&r["series_proc"]);
    let loadgen = points(&r["series_loadgen"]);
    let phases: Vec<(String, f64, f64)> = r["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_owned(),
                p["t0_s"].as_f64()?,
                p["t1_s"].as_f64()?,
            ))
        })
        .collect();
    let xmax = acct.iter().chain(&proc).map(|p| p.0).fold(10.0, f64::max);
    let text = font();
    let root = BitMapBackend::new(path, (1200, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut b = ChartBuilder::on(&root);
    b.margin(20);
    if text {
        b.caption(
            format!(
                "host CPU utilization: three {:.0} % servers, each alone, then together on one CPU",
                f(&r["config"]["target_pct"])
            ),
            ("sans-serif", 20),
        )
        .x_label_area_size(40)
        .y_label_area_size(55);
    }
    let mut chart = b
        .build_cartesian_2d(0.0..xmax, 0.0..105.0)
        .map_err(|e| e.to_string())?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("seconds").y_desc("% of the host's CPU");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(|e| e.to_string())?;
    let shades = [
        RGBColor(235, 235, 235),
        RGBColor(220, 232, 245),
        RGBColor(225, 240, 225),
        RGBColor(245, 232, 220),
        RGBColor(250, 225, 225),
    ];
    for (i, (name, t0, t1)) in phases.iter().enumerate() {
        let c = shades[i % shades.len()];
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(*t0, 0.0), (*t1, 105.0)],
                c.filled(),
            )))
            .map_err(|e| e.to_string())?;
        if text {
            chart
                .draw_series(std::iter::once(Text::new(
                    name.clone(),
                    (*t0 + 0.5, 101.0),
                    ("sans-serif", 14).into_font(),
                )))
                .map_err(|e| e.to_string())?;
        }
    }
    let target = RGBColor(120, 120, 120);
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, 90.0), (xmax, 90.0)],
            target.stroke_width(1),
        ))
        .map_err(|e| e.to_string())?;
    if text {
        chart
            .draw_series(std::iter::once(Text::new(
                "target together: 90 %".to_owned(),
                (0.5, 93.0),
                ("sans-serif", 13).into_font().color(&target),
            )))
            .map_err(|e| e.to_string())?;
    }
    let lines = [
        (
            "host manager's accounting (the guests' cgroups)",
            &acct,
            RGBColor(200, 60, 50),
        ),
        (
            "/proc/stat (everything on the host)",
            &proc,
            RGBColor(40, 90, 180),
        ),
        (
            "the load generator (this benchmark, on the same host)",
            &loadgen,
            RGBColor(60, 150, 60),
        ),
    ];
    for (name, pts, c) in lines {
        let drawn = chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(|e| e.to_string())?;
        if text {
            drawn.label(name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
            });
        }
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::MiddleLeft)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// The results file.
fn markdown(r: &Value, o: &Opts) -> String {
    let c = &r["config"];
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Consolidation benchmark: three servers, alone and on one CPU\n"
    );
    let _ = writeln!(
        s,
        "Issue 17 §1, measured {} {} with `{}` (condo {}).",
        date(),
        o.place,
        o.command,
        git_rev()
    );
    let _ = writeln!(
        s,
        "Guests: {} through `condo daemon` (`POST /guests`), each running `server 7000` \
         (guest/tools/server.c): a request is a line asking for N rounds of CPU work, the answer \
         comes when they are done. Load: {} requests/s to each guest, open loop (request k due at \
         k/rate, its latency counted from then), one TCP connection per guest over the daemon's \
         bridge, from the host. Work: {} rounds a request, calibrated so that a guest alone takes \
         {} % of the host CPU by the host manager's accounting (its cgroup's CPU time). Windows: \
         {} s after {} s of warm-up; the guests not measured are paused.\n",
        c["guest"].as_str().unwrap_or("?"),
        f(&c["rate"]),
        c["work"],
        f(&c["target_pct"]),
        f(&c["window_s"]),
        f(&c["warmup_s"]),
    );
    let _ = writeln!(
        s,
        "| guest | alone: req/s | together: req/s | change | alone: p50 / p90 / p99 ms | together: p50 / p90 / p99 ms | guest CPU alone → together (accounting) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
    let solo = r["solo"].as_array().cloned().unwrap_or_default();
    let tog = r["together"]["guests"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut worst = 0.0f64;
    for (a, t) in solo.iter().zip(&tog) {
        let (la, lt) = (&a["load"], &t["load"]);
        let change = (f(&lt["throughput"]) / f(&la["throughput"]) - 1.0) * 100.0;
        worst = worst.max(change.abs());
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.2} | {:+.1} % | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | {:.1} % → {:.1} % |",
            a["guest"].as_str().unwrap_or("?"),
            f(&la["throughput"]),
            f(&lt["throughput"]),
            change,
            f(&la["p50_ms"]),
            f(&la["p90_ms"]),
            f(&la["p99_ms"]),
            f(&lt["p50_ms"]),
            f(&lt["p90_ms"]),
            f(&lt["p99_ms"]),
            f(&a["guest_cpu_pct"]),
            f(&t["guest_cpu_pct"]),
        );
    }
    let solo_acct: f64 = solo.iter().map(|a| f(&a["guest_cpu_pct"])).sum::<f64>()
        / solo.len().max(1) as f64
        / f(&c["host_cpus"]).max(1.0);
    let mean_of = |k: &str| solo.iter().map(|a| f(&a[k])).sum::<f64>() / solo.len().max(1) as f64;
    let (solo_proc, solo_gen, solo_daemon) = (
        mean_of("host_proc_pct"),
        mean_of("loadgen_pct"),
        mean_of("daemon_pct"),
    );
    let solo_irq = mean_of("irq_pct");
    let (tog_gen, tog_daemon, tog_irq) = (
        f(&r["together"]["loadgen_pct"]),
        f(&r["together"]["daemon_pct"]),
        f(&r["together"]["irq_pct"]),
    );
    let (ta, tp) = (
        f(&r["together"]["host_acct_pct"]),
        f(&r["together"]["host_proc_pct"]),
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| host CPU utilization ({} CPU) | one guest alone (mean of the three) | all three together | target |",
        c["host_cpus"]
    );
    let _ = writeln!(s, "|---|---:|---:|---|");
    let _ = writeln!(
        s,
        "| host manager's accounting (the guests' CPU time over the host's) | {solo_acct:.1} % | {ta:.1} % | near 90 % |"
    );
    let _ = writeln!(
        s,
        "| the host's `/proc/stat` (everything: guests, daemon, load generator, kernel) | {solo_proc:.1} % | {tp:.1} % | |"
    );
    let _ = writeln!(
        s,
        "| of which the load generator (this benchmark's process) | {solo_gen:.1} % | {tog_gen:.1} % | |"
    );
    let _ = writeln!(
        s,
        "| of which the daemon (`condo daemon`, its sampling included) | {solo_daemon:.1} % | {tog_daemon:.1} % | |"
    );
    let _ = writeln!(
        s,
        "| of which interrupts (`/proc/stat` irq and softirq: the bridge, the taps, the load's TCP) | {solo_irq:.1} % | {tog_irq:.1} % | |"
    );
    let _ = writeln!(
        s,
        "| the rest (kernel threads, other processes, rounding between the samplers) | {:.1} % | {:.1} % | |",
        solo_proc - solo_acct - solo_gen - solo_daemon - solo_irq,
        tp - ta - tog_gen - tog_daemon - tog_irq
    );
    let _ = writeln!(s);
    let solo_p99: Vec<String> = solo
        .iter()
        .map(|a| format!("{:.0}", f(&a["load"]["p99_ms"])))
        .collect();
    let tog_p99: Vec<String> = tog
        .iter()
        .map(|a| format!("{:.0}", f(&a["load"]["p99_ms"])))
        .collect();
    let _ = writeln!(
        s,
        "**Against the targets.** Throughput together against alone: at most {worst:.1} % apart \
         (target: within 5 %: {}). Host utilization together: {tp:.1} % by `/proc/stat` and \
         {ta:.1} % by the host manager's accounting (target: near 90 %: {}). p99 latency alone \
         {} ms, together {} ms. A guest idle with its server waiting took {:.1} % of the host \
         CPU.\n",
        if worst <= 5.0 { "met" } else { "missed" },
        if (85.0..=95.0).contains(&ta) {
            "met"
        } else if ta < 85.0 {
            "missed, under"
        } else {
            "missed, over"
        },
        solo_p99.join(" / "),
        tog_p99.join(" / "),
        f(&r["idle_pct"])
    );
    let _ = writeln!(
        s,
        "The accounting counts the guests' cgroups (each guest's jailed VMM: vCPU, device and \
         API threads), so it sees less than `/proc/stat`, which counts everything the host CPU \
         did: the load generator, which a real deployment runs on other machines, the daemon, \
         and the interrupts of the network path (bridge and taps), which Linux charges to no \
         task. The table splits the difference; what it leaves is under the samplers' noise. \
         The three guests took {:.1} % of the host CPU together by the accounting against \
         {:.1} % for the sum of their solo figures: {}. In the nested test host a halt and a \
         wake-up (VM exits through emulated SVM) are a large part of a request's cost (the \
         calibration shows it: the CPU is far from proportional to the rounds of work), and \
         a machine shared with other jobs changes the emulation's speed between the phases.\n",
        ta,
        3.0 * solo_acct,
        if (ta - 3.0 * solo_acct).abs() <= 0.05 * 3.0 * solo_acct {
            "their costs add up, within 5 %"
        } else if ta < 3.0 * solo_acct {
            "each guest cost less together than alone"
        } else {
            "each guest cost more together than alone"
        }
    );
    if let Some(cal) = r["calibration"].as_array().filter(|v| !v.is_empty()) {
        let steps: Vec<String> = cal
            .iter()
            .map(|x| format!("{} rounds: {:.1} %", x["work"], f(&x["cpu_pct"])))
            .collect();
        let _ = writeln!(
            s,
            "Calibration (first guest alone): {}.\n",
            steps.join("; ")
        );
    }
    let png = o
        .png
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "![host utilization over time, both phases]({png})\n\n\
         The plot: the host's utilization every second, from the host manager's accounting (the \
         sum of the guests' per-second samples, `GET /guests/NAME/usage`) and from `/proc/stat`; \
         the shaded spans are the measured windows (the gaps between them are warm-ups and \
         pauses). The gap between the two lines is what is not a guest's: the daemon, the load \
         generator, the host kernel's share of the network path.\n"
    );
    let _ = writeln!(
        s,
        "How to read it: absolute figures include the nested test host's emulation (QEMU TCG \
         runs the host; the guests run on its KVM), so a request's CPU work and the network path \
         cost far more than on hardware; what carries over is the shape: three guests that each \
         take about {target:.0} % of a CPU alone share one, their throughput {kept}, their latency up by \
         the time they wait for each other. A single window is noisy: a guest's CPU for the \
         same load varies by a few points from one window to the next. {note}Raw data: \
         `{json}` beside this file.\n\n\
         ## Reproduce\n\n    {command}\n\n\
         from the repository's root: it installs what is missing, builds the guest artifacts \
         (`guest/tools/server.c` is in the guest initramfs), condo and `condo-bench` (release), \
         and, where `/dev/kvm` cannot boot Linux, the nested test host (1 CPU, 4096 MiB), in \
         which it runs `condo-bench consolidation` (the daemon, the guests and the load \
         generator); `condo-bench consolidation-report` then writes the results file, \
         the plot and the raw data in `benches/results/` (`consolidation.md`, `.png`, `.json`; \
         other names with `OUT`). Knobs: `RATE` \
         (requests/s a guest), `TARGET` (% of a host CPU a guest takes alone), `WINDOW` and \
         `WARMUP` (s), `WORK` (rounds a request, skipping the calibration), `HALT_POLL_NS` \
         (KVM's halt polling during the run; 0 by default, empty leaves it), `NOTE`, `OUT`; \
         `CONDO_CACHE` says where the guest artifacts are built (`guest/lib.sh`). A trial \
         takes about five minutes: `WINDOW=8 WARMUP=2 benches/consolidation.sh`.",
        kept = if worst <= 5.0 {
            "kept".to_owned()
        } else {
            format!("down by up to {worst:.1} %")
        },
        note = if o.note.is_empty() {
            String::new()
        } else {
            format!("{} ", o.note)
        },
        command = o.command,
        target = f(&c["target_pct"]),
        json = o
            .input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    s
}

fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn git_rev() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

pub fn main(args: impl Iterator<Item = String>) -> Result<(), String> {
    let o = parse(args);
    let text =
        std::fs::read_to_string(&o.input).map_err(|e| format!("{}: {e}", o.input.display()))?;
    let r: Value =
        serde_json::from_str(text.trim()).map_err(|e| format!("{}: {e}", o.input.display()))?;
    if !r["solo"].is_array() || !r["together"].is_object() {
        return Err(format!("{}: not a consolidation result", o.input.display()));
    }
    plot(&r, &o.png).map_err(|e| format!("{}: {e}", o.png.display()))?;
    std::fs::write(&o.md, markdown(&r, &o)).map_err(|e| format!("{}: {e}", o.md.display()))?;
    println!("wrote {} and {}", o.md.display(), o.png.display());
    Ok(())
}
