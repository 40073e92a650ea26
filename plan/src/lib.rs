//! `plan`: condo's trace-driven consolidation simulator and planner, pure
//! logic (no KVM, no guests). It replays VM CPU traces (PlanetLab,
//! Bitbrains, condo host-manager exports) on a data centre of hosts with
//! SPECpower curves, under CloudSim's baseline policies or condo's own
//! planner, and reports energy, SLA violations and migrations; it also
//! turns a planner's decision into a migration plan for the host manager.

pub mod cli;
pub mod inventory;
pub mod model;
pub mod plot;
pub mod policy;
pub mod report;
pub mod sim;
pub mod stats;
pub mod trace;

pub use cli::{run, PlanArgs, PlanError};
