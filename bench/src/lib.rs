//! The programs around the tests: the benchmark harness (`switch-bench`,
//! with the packet generator as `switch-bench generate`), the demo
//! (`switch-demo`), and the charts they draw. They run on the test crate's
//! labs (`switch-tests`): namespaces, daemons, the rate lab and generator.

pub mod chart;
pub mod demo_fleet;
