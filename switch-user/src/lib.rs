//! `switch` userspace: the daemon, the CLI and the data-plane programmer.
pub mod dataplane;
