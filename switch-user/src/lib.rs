//! `switch` userspace: the daemon, the CLI and the data-plane programmer.
pub mod config;
pub mod dataplane;
pub mod programmer;
