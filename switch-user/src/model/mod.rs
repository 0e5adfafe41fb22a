//! The bottom layer: config file and API types with their validation,
//! limits and errors. Imports nothing of the crate above it.
pub mod api;
pub mod bgp;
pub mod config;
pub mod error;
pub mod gates;
pub mod kinds;
pub mod limits;
pub mod shadow;
