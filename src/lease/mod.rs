//! Leases: the payload model, the DSSE envelope, keys, trust policies and verification.

pub mod model;
