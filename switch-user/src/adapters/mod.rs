//! What touches the world, each behind the seam the engine or the daemon
//! gives it: the kernel data plane (`Maps`), next hops and neighbours, the
//! shadow ring and replays, the etcd store and fleet agent, BIRD, the
//! Prometheus client, health probes, privileges. An adapter never imports
//! another adapter or the daemon.
pub mod bgp;
pub mod dataplane;
pub mod fleet;
pub mod health;
pub mod neighbours;
pub mod privileges;
pub mod prometheus;
pub mod shadow;
