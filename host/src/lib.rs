//! `host`: condo's host manager, one daemon that runs many guests on a
//! server. Each guest is its own jailed VMM (`condo jail`, its own uid,
//! cgroup and network namespace), driven only through its Firecracker-style
//! API socket; the daemon keeps its state in SQLite, serves a REST API on a
//! Unix socket, accounts every guest's use, and re-adopts running guests
//! when it is restarted. The `condo` binary flattens [`cli::HostCommand`]
//! into its subcommands. See docs/host.md.
//!
//! Modules, by concern:
//! - `model`: the resources (guest spec, image, snapshot, clone) and their
//!   validation, the one gate for untrusted input;
//! - `config`: the daemon's options; `db`: the SQLite database;
//! - `manager`: the lifecycle, admission, supervision and adoption;
//! - `cgroup`, `net`, `disk`, `procfs`: the host resources a guest uses;
//! - `vmm`: a guest VMM's API; `accounting`: samples, history, Prometheus,
//!   utilization traces; `events`: the event stream;
//! - `http`, `api`, `server`, `daemon`: the REST API and the daemon;
//! - `client`, `cli`, `console`, `top`, `exec`: the client side.

pub mod accounting;
pub mod api;
pub mod cgroup;
pub mod cli;
pub mod client;
pub mod config;
pub mod console;
pub mod daemon;
pub mod db;
pub mod disk;
pub mod error;
pub mod events;
pub mod exec;
pub mod http;
pub mod manager;
pub mod model;
pub mod net;
pub mod procfs;
pub mod server;
pub mod top;
pub mod vmm;
