//! Hot-path benches for the request guard (filled in below).
fn main() {}
