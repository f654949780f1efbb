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

/// The config var that caps the size of request bodies the router forwards to the app, as a
/// size such as `10M` ([`parse_size`]). Unset means no limit.
pub const MAX_BODY_SIZE_VAR: &str = "SLIPWAY_MAX_BODY_SIZE";

impl Release {
    /// The request body limit set with [`MAX_BODY_SIZE_VAR`], if any. A value the controller
    /// would have refused counts as unset.
    pub fn max_body_size(&self) -> Option<u64> {
        self.config
            .get(MAX_BODY_SIZE_VAR)
            .and_then(|v| parse_size(v).ok())
    }
}

/// A size in bytes: `512M`, `1G`, `1.5G`, `256K`, `10MB`, `10MiB` or plain bytes, in powers of
/// 1024. Refuses zero, negative and unknown units with a message that shows the right form.
pub fn parse_size(v: &str) -> Result<u64, String> {
    let bad = || format!("{v:?}: use a size such as 512M or 1G");
    let v = v.trim();
    let (number, unit) = match v.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => v.split_at(i),
        None => (v, ""),
    };
    let scale: f64 = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 1.0,
        "K" => 1024.0,
        "M" => 1024.0 * 1024.0,
        "G" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let n: f64 = number.trim().parse().map_err(|_| bad())?;
    if !n.is_finite() || n <= 0.0 || n * scale > u64::MAX as f64 / 2.0 {
        return Err(bad());
    }
    Ok((n * scale) as u64)
}

#[cfg(test)]
mod size_tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("1K"), Ok(1024));
        assert_eq!(parse_size("10M"), Ok(10 << 20));
        assert_eq!(parse_size("10mib"), Ok(10 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        for bad in ["", "0", "-1M", "ten", "5X", "NaNM", "1e300G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
