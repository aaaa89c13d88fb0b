//! Examples live in `examples/`; shared helpers go here.
//!
//! [`demo`] is the instrumented LLM server and load generator behind `scripts/demo`
//! (`cargo run --release -p tokenmeter-examples --example demo`).

pub mod demo;
