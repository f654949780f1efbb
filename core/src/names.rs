//! Validated names. Every name that ends up in a path, a hostname, a Docker label or a SQL row
//! is one of these types, so code downstream never sees unchecked input.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// An app name outside `^[a-z][a-z0-9-]{0,29}$`.
    #[error(
        "invalid app name {0:?}: use 1-30 characters, lower-case letters, digits and '-', starting with a letter"
    )]
    App(String),
    /// A user name outside `^[a-z][a-z0-9_-]{0,31}$`.
    #[error(
        "invalid user name {0:?}: use 1-32 characters, lower-case letters, digits, '-' and '_', starting with a letter"
    )]
    User(String),
    /// A fingerprint that is not `SHA256:` followed by unpadded base64.
    #[error("invalid key fingerprint {0:?}: expected SHA256:<base64>, as `ssh-keygen -lf` prints")]
    Fingerprint(String),
}

fn is_name(s: &str, max: usize, extra: &[u8]) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= max
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || extra.contains(b))
}

macro_rules! string_newtype {
    ($ty:ident) => {
        impl $ty {
            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                s.parse()
            }
        }
        impl From<$ty> for String {
            fn from(n: $ty) -> String {
                n.0
            }
        }
    };
}

/// An application name: `^[a-z][a-z0-9-]{0,29}$`. Safe to use as a path component, a DNS label
/// and a repository name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AppName(String);

impl FromStr for AppName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        if is_name(s, 30, b"-") {
            Ok(AppName(s.to_owned()))
        } else {
            Err(NameError::App(s.to_owned()))
        }
    }
}
string_newtype!(AppName);

/// A user name: `^[a-z][a-z0-9_-]{0,31}$`. The first user is `admin`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserName(String);

impl FromStr for UserName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        if is_name(s, 32, b"-_") {
            Ok(UserName(s.to_owned()))
        } else {
            Err(NameError::User(s.to_owned()))
        }
    }
}
string_newtype!(UserName);

/// The SHA256 fingerprint of an SSH public key, exactly as `ssh-keygen -lf` prints it:
/// `SHA256:` followed by unpadded standard base64 of the digest (43 characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fingerprint(String);

impl FromStr for Fingerprint {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let ok = s.strip_prefix("SHA256:").is_some_and(|b64| {
            b64.len() == 43
                && b64
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        });
        if ok {
            Ok(Fingerprint(s.to_owned()))
        } else {
            Err(NameError::Fingerprint(s.to_owned()))
        }
    }
}
string_newtype!(Fingerprint);

#[cfg(test)]
mod tests {
    use super::*;

    fn check_app(input: &str, ok: bool) {
        assert_eq!(input.parse::<AppName>().is_ok(), ok, "{input:?}");
    }

    #[test]
    fn app_names() {
        for good in ["a", "web", "my-app-2", "a23456789012345678901234567890"] {
            check_app(good, true);
        }
        for bad in [
            "",
            "1app",
            "-a",
            "App",
            "a.git",
            "../etc",
            "a/b",
            "a b",
            "a_b",
            "a234567890123456789012345678901",
            "ä",
        ] {
            check_app(bad, false);
        }
    }

    #[test]
    fn fingerprints() {
        let good = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s";
        assert!(good.parse::<Fingerprint>().is_ok());
        for bad in [
            "SHA256:",
            "MD5:aa",
            "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s=",
            "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2",
        ] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad}");
        }
    }
}
