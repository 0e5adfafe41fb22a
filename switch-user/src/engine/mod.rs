//! Pure logic, free of I/O: the controller (commands, plans, health
//! verdicts, lingering backends, shadows, fleet records), the strategies as
//! state machines, and the programmer that turns a service into map
//! writes through the `Maps` seam. Tested without a kernel.
pub mod clock;
pub mod controller;
pub mod health;
pub mod maps;
pub mod programmer;
pub mod strategy;
