//! The end-to-end tests' real parts live in the library (`runtime_tests::cluster`), shared
//! with the benchmark.
#![allow(unused_imports)]

pub use runtime_tests::check;
pub use runtime_tests::cluster::*;
