//! Integration-test harness for airlock.
//!
//! Everything here is independent of airlock's own code: registries are real CNCF distribution
//! processes (`docker-registry`), content is pushed with a small raw-HTTP client built on
//! reqwest, and results are witnessed with `skopeo`. Use it from a test file with `mod common;`.
//!
//! The API is synchronous on purpose. Network calls run on a private tokio runtime inside a
//! scoped helper thread, so every function here can also be called from `#[tokio::test]` code
//! (it blocks that worker thread for the duration of the call, which is fine in tests).
//!
//! Main pieces:
//! - [`TestRegistry`]: a throw-away registry (plain HTTP, TLS with a test CA, htpasswd auth).
//! - [`RawClient`]: blob/manifest push and read-back by raw HTTP.
//! - [`build_corpus`]: a deterministic set of images of every manifest kind airlock must carry.
//! - [`skopeo_digest`] / [`skopeo_exists`]: the independent witness.
//! - [`FaultProxy`]: a loopback TCP proxy that answers 503/429, disconnects or truncates
//!   (faults need a plain-HTTP registry behind it; TLS is piped through untouched).
//! - [`ThrottleProxy`]: a loopback TCP proxy holding each connection to a bandwidth, counting
//!   bytes each way; it can also freeze (a stalled link). TLS passes through untouched.
//! - [`QuirkProxy`]: an HTTP-aware proxy playing the registries we cannot install, one quirk
//!   at a time (no chunked or no monolithic uploads, minimum chunk size, refused mounts, no
//!   `Docker-Content-Digest`, relative `Location`, `NAME_UNKNOWN`, blob redirects to another
//!   host, expired tokens refused, cut chunks, delays).
//! - [`ForwardProxy`]: an HTTP forward proxy (`CONNECT` tunnels and absolute-form requests),
//!   optionally asking for Basic credentials, recording what clients asked for.
//! - [`TokenServer`]: a Docker token server issuing signed JWTs per scope, with lifetimes,
//!   anonymous pull tokens and a log of what it issued.
//! - [`run_airlock`]: runs the binary with an isolated environment and no TTY.
#![allow(dead_code)]

mod airlock;
mod bundle;
mod corpus;
mod forward_proxy;
mod media;
mod pki;
mod proxy;
mod raw;
mod registry;
mod skopeo;
mod throttle;
mod util;

// Re-exported so that `use common::*` and `common::name` keep working (a test file that uses
// nothing from one of them would otherwise warn).
#[allow(unused_imports)]
pub use airlock::*;
#[allow(unused_imports)]
pub use bundle::*;
#[allow(unused_imports)]
pub use corpus::*;
#[allow(unused_imports)]
pub use forward_proxy::*;
#[allow(unused_imports)]
pub use media::*;
#[allow(unused_imports)]
pub use pki::*;
#[allow(unused_imports)]
pub use proxy::*;
#[allow(unused_imports)]
pub use raw::*;
#[allow(unused_imports)]
pub use registry::*;
#[allow(unused_imports)]
pub use skopeo::*;
#[allow(unused_imports)]
pub use throttle::*;
#[allow(unused_imports)]
pub use util::*;

// ---------------------------------------------------------------------------------------------
// TokenServer (tests/common/token.rs) and QuirkProxy (tests/common/quirk_proxy.rs)
// ---------------------------------------------------------------------------------------------

mod quirk_proxy;
mod token;
#[allow(unused_imports)]
pub use quirk_proxy::*;
#[allow(unused_imports)]
pub use token::*;
