//! Slipway's shared vocabulary: the names every part agrees on (apps, users, key fingerprints),
//! releases and process types, the live route and certificate tables, and the ports through which the builder
//! and the registry ask the controller questions.
//!
//! Invariant: this crate does no IO. It holds data types, validation and trait definitions only,
//! so every other crate can depend on it without pulling in a runtime.

pub mod keys;
pub mod layout;
pub mod names;
pub mod ports;
pub mod procfile;
pub mod release;
pub mod routes;
pub mod tls;

pub use names::{AppName, Fingerprint, NameError, UserName};
pub use release::{Config, ProcessTypes, Release};
