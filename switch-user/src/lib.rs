//! `switch` userspace: the daemon, the CLI and the data-plane programmer,
//! in layers that import only downwards (`cargo xtask layers` checks it):
//!
//! - [`model`]: config and API types and their validation; no logic, no I/O;
//! - [`engine`]: pure logic — the controller, the strategies, the
//!   programmer and the `Maps` seam it writes through;
//! - [`adapters`]: what touches the world — the kernel data plane, next
//!   hops, shadow replays, etcd and the fleet agent, BIRD, Prometheus,
//!   health probes, privileges; adapters never import each other;
//! - [`daemon`]: wiring and tasks, persistence, the API server, metrics;
//! - [`cli`] and [`client`]: the command line and the API client;
//! - `process`: running helper programs with a deadline, a leaf any
//!   layer may use.
//!
//! Path of `switch flip web --to green`: `cli` parses it into
//! `model::api::Command::Flip` and sends it over the Unix socket
//! (`client::call`); the daemon's API server (`daemon::server`) hands it to
//! `Controller::handle` (`engine::controller`), which validates it, plans
//! the changes and calls `Programmer::apply` (`engine::programmer`); that
//! builds the new table and writes it, then the one service entry that
//! makes it live, through `Dataplane` (`adapters::dataplane`); only then is
//! the state committed and recorded.
pub(crate) mod adapters;
pub mod cli;
pub mod client;
pub mod daemon;
pub(crate) mod engine;
pub(crate) mod model;
pub(crate) mod process;

// What the binary, the tests and the bench use; the rest of each layer is
// the crate's own.
pub use adapters::{dataplane, fleet, neighbours, privileges};
pub use engine::{controller, programmer};
pub use model::{api, config};
