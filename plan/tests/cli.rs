//! `condo plan` end to end through the library entry point: a host-manager
//! export with an inventory gives a summary, a plan JSON and a plot; bad
//! input gives one error line naming the file; `--apply` says it is not
//! available yet.

use std::path::PathBuf;

use clap::Parser;
use plan::{run, PlanArgs};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: PlanArgs,
}

fn args(extra: &[&str]) -> PlanArgs {
    let mut v = vec!["plan"];
    v.extend_from_slice(extra);
    match Cli::try_parse_from(v) {
        Ok(c) => c.args,
        Err(e) => panic!("{e}"),
    }
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("plan-cli-{}-{name}", std::process::id()))
}

const EXPORT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/condo-export.csv");

#[test]
fn export_with_inventory_writes_plan_and_plot() {
    let inv = tmp("inv.json");
    let plan = tmp("plan.json");
    let png = tmp("plot.png");
    let ok = std::fs::write(
        &inv,
        r#"{"hosts": [{"name": "g5-", "count": 3, "cores": 4, "mips_per_core": 2660, "ram_mb": 16384,
            "idle_watts": 93.7, "max_watts": 135}],
            "placement": {"web1": "g5-0", "batch1": "g5-1", "db1": "g5-2"}}"#,
    );
    assert!(ok.is_ok());
    let a = args(&[
        "--trace",
        EXPORT,
        "--inventory",
        inv.to_str().unwrap_or_default(),
        "--compare",
        "thr-mmt-0.8",
        "--plan-out",
        plan.to_str().unwrap_or_default(),
        "--plot",
        png.to_str().unwrap_or_default(),
    ]);
    let out = match run(&a) {
        Ok(o) => o,
        Err(e) => panic!("{e}"),
    };
    assert!(out.contains("| condo |"), "{out}");
    assert!(out.contains("| thr-mmt-0.8 |"), "{out}");
    let json: serde_json::Value =
        match std::fs::read_to_string(&plan).map(|t| serde_json::from_str(&t)) {
            Ok(Ok(v)) => v,
            other => panic!("{other:?}"),
        };
    // Idle guests of a host manager stay: all three are placed.
    assert_eq!(
        json["placement_after"].as_object().map(|m| m.len()),
        Some(3)
    );
    assert!(json["moves"].is_array());
    assert!(std::fs::metadata(&png)
        .map(|m| m.len() > 1000)
        .unwrap_or(false));
    let a = args(&[
        "--trace",
        EXPORT,
        "--inventory",
        inv.to_str().unwrap_or_default(),
        "--plan-out",
        plan.to_str().unwrap_or_default(),
        "--apply",
    ]);
    let e = run(&a).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("not implemented yet"), "{e}");
    for f in [inv, plan, png] {
        let _ = std::fs::remove_file(f);
    }
}

#[test]
fn bad_input_is_one_error_naming_the_file() {
    let inv = tmp("bad.json");
    assert!(std::fs::write(&inv, "{\"hosts\": [\n").is_ok());
    let a = args(&[
        "--trace",
        EXPORT,
        "--inventory",
        inv.to_str().unwrap_or_default(),
    ]);
    let e = run(&a).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.starts_with(&format!("{}:2: ", inv.display())), "{e}");
    assert!(!e.contains('\n'));
    let _ = std::fs::remove_file(inv);
    let a = args(&["--trace", EXPORT, "--policy", "nope"]);
    let e = run(&a).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.starts_with("unknown policy \"nope\""), "{e}");
}
