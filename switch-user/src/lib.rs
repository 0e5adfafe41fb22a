//! `switch` userspace: the daemon, the CLI and the data-plane programmer.
//!
//! Path of `switch flip web --to green`: `main.rs` parses it into
//! `api::Command::Flip` and sends it over the Unix socket (`daemon::call`);
//! the daemon (`daemon.rs`) hands it to `Controller::handle`
//! (`controller.rs`), which validates it and calls `Programmer::apply`
//! (`programmer.rs`); that builds the new table and writes it, then the one
//! service entry that makes it live, through `Dataplane` (`dataplane.rs`).
pub mod api;
pub mod bgp;
pub mod config;
pub mod controller;
pub mod daemon;
pub mod dataplane;
pub mod fleet;
pub mod health;
pub mod metrics;
pub mod neighbours;
pub mod privileges;
pub mod programmer;
pub mod prometheus;
pub mod replica;
pub mod shadow;
pub mod strategy;
