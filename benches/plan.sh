#!/usr/bin/env bash
# Consolidation simulator benchmark and CloudSim reproduction, one command:
# builds condo (release), runs every baseline policy and condo's planner on
# the 10 PlanetLab days and the Bitbrains month, and writes
# benches/results/consolidation-sim.md (reproduction table against CloudSim
# 3.0.3's own run, planner against baselines, headline figure, speed).
#   benches/plan.sh [DATA]     # DATA defaults to ../shared/data beside the repo
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
data="${1:-$ROOT/../shared/data}"
cargo build --release --locked -q -p condo
condo="$ROOT/target/x86_64-unknown-linux-gnu/release/condo"
"$condo" plan --reproduce "$data" --results benches/results/consolidation-sim.md
echo "benches/results/consolidation-sim.md"
