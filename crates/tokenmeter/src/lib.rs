//! tokenmeter: instrumentation for Rust LLM inference servers.
//!
//! Wrap each request's generation loop in a [`RequestGuard`]; tokenmeter turns its events
//! into TTFT, TPOT, inter-token latency, throughput, queue time, errors and goodput, emitted
//! through the [`metrics`](https://docs.rs/metrics) facade and [`tracing`](https://docs.rs/tracing).
//! See the README for the quick start.

pub use tokenmeter_core::*;
