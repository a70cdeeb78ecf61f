//! Integration tests: a real host on loopback ports, real components from
//! `components/` (built by `just build-components`), real sled on disk, real HTTP.
//! One test binary, so it links once.

mod bus;
mod deploy;
mod edge;
mod exhaustion;
mod failures;
mod gateway;
mod hog;
mod idempotency;
mod layers;
mod logs;
mod policies;
mod polyglot;
mod process;
mod queue;
mod registry;
mod seed;
mod state;
mod support;
mod tokens;
mod traces;
mod webhooks;
