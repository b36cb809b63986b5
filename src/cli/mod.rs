//! Command-line front ends.

pub mod result;
pub mod run;
