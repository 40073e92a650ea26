#!/usr/bin/env bash
# Consolidation simulator benchmark and CloudSim reproduction, one command:
# builds condo (release), runs every baseline policy and condo's planner on
# the 10 PlanetLab days and the Bitbrains month, and writes
# benches/results/consolidation-sim.md (reproduction table against CloudSim
# 3.0.3's own run, planner against baselines, headline figure, speed), and
# the before/after plot of one day, benches/results/consolidation-20110303.png.
#   benches/plan.sh [DATA]     # DATA defaults to ../shared/data beside the repo
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
data="${1:-$ROOT/../shared/data}"
cargo build --release --locked -q -p condo
condo="$ROOT/target/x86_64-unknown-linux-gnu/release/condo"
"$condo" plan --reproduce "$data" --results benches/results/consolidation-sim.md
# The headline plot: one day as traced (one VM per host), LR-MMT, condo.
"$condo" plan --trace "$data/planetlab/20110303" --compare lr-mmt-1.2 \
  --plot benches/results/consolidation-20110303.png >/dev/null
echo "benches/results/consolidation-sim.md benches/results/consolidation-20110303.png"
