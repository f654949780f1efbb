//! Releases: the immutable pairing of an image with config and process types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::names::AppName;

/// Config vars, ordered by name so that listings and container environments are stable.
pub type Config = BTreeMap<String, String>;

/// Process types (`web`, `worker`, ...) mapped to the command each runs.
pub type ProcessTypes = BTreeMap<String, String>;

/// Release vN of an app. Releases are never changed once recorded; every build, config change
/// or rollback makes a new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The app this release belongs to.
    pub app: AppName,
    /// The release number, starting at 1.
    pub version: i64,
    /// The image by digest (`host:port/repo@sha256:...`), or none before the first build.
    pub image: Option<String>,
    /// Config vars given to every container of this release.
    pub config: Config,
    /// Process types and their commands.
    pub processes: ProcessTypes,
    /// The git commit the image was built from, if it was built from a push.
    pub commit: Option<String>,
    /// What made this release, for people: "deploy 1a2b3c4", "set FOO".
    pub description: String,
    /// The user who made it.
    pub created_by: String,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
}

impl Release {
    /// The release's label, as containers see it in `SLIPWAY_RELEASE`: `v7`.
    pub fn label(&self) -> String {
        format!("v{}", self.version)
    }

    /// Config var names that the platform sets itself and users may not override.
    pub const RESERVED_VARS: &'static [&'static str] =
        &["PORT", "SLIPWAY_APP", "SLIPWAY_RELEASE", "SLIPWAY_PROCESS"];
}

/// Whether `key` may be used as a config var name: a POSIX-ish environment name that is not
/// reserved by the platform.
pub fn is_config_key(key: &str) -> bool {
    let b = key.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        && !Release::RESERVED_VARS.contains(&key)
}
