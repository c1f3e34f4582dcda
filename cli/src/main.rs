//! The `hyperblow` command line.
fn main() {}
