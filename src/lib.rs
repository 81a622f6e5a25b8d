//! airlock: move container images across an air gap in two phases, through one verified,
//! compressed, seekable OCI-layout bundle.

pub mod bundle;
pub mod cache;
pub mod cleanup;
pub mod cli;
pub mod commands;
pub mod copy;
pub mod credentials;
pub mod digest;
pub mod error;
pub mod fetch;
pub mod imageset;
pub mod manifest;
pub mod memory;
pub mod options;
pub mod pipe;
pub mod progress;
pub mod prompt;
pub mod reference;
pub mod registry;
pub mod serve;
pub mod shared;
pub mod signing;
pub mod spill;
pub mod store;
pub mod units;
