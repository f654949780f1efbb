//! Who is calling: HTTP Basic credentials checked against the controller's [`Identity`].
//!
//! Owns: reading the `Authorization` header and deciding whether it names a user. The password
//! is a Slipway API token; the user name must be the token's owner, so `docker login -u admin`
//! with admin's token works and any other name with it does not. Must not: decide what a user
//! may do with a repository; today every authenticated user may pull and push every repository
//! (per-repository scopes come with issue #4).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, header};
use slipway_core::UserName;
use slipway_core::ports::Identity;

use crate::api::RequestError;
use crate::error::RegistryError;

/// The user whose credentials the request carries; refuses requests without valid ones.
pub(crate) async fn authenticate(
    identity: &dyn Identity,
    headers: &HeaderMap,
) -> Result<UserName, RegistryError> {
    let Some((user, token)) = basic_credentials(headers) else {
        return Err(RequestError::Unauthorized.into());
    };
    match identity.user_by_token(&token).await? {
        Some(owner) if owner.as_str() == user => Ok(owner),
        _ => Err(RequestError::Unauthorized.into()),
    }
}

/// The user name and password of a `Basic` `Authorization` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, token) = decoded.split_once(':')?;
    if user.is_empty() || token.is_empty() {
        return None;
    }
    Some((user.to_owned(), token.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(value: &str, expected: Option<(&str, &str)>) {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().expect("header value"));
        let actual = basic_credentials(&headers);
        let expected = expected.map(|(u, t)| (u.to_owned(), t.to_owned()));
        assert_eq!(actual, expected, "{value}");
    }

    #[test]
    fn basic_headers() {
        let encode = |s: &str| STANDARD.encode(s);
        check(
            &format!("Basic {}", encode("admin:tok")),
            Some(("admin", "tok")),
        );
        check(
            &format!("basic {}", encode("admin:a:b")),
            Some(("admin", "a:b")),
        );
        check(&format!("Bearer {}", encode("admin:tok")), None);
        check(&format!("Basic {}", encode("admin")), None);
        check(&format!("Basic {}", encode("admin:")), None);
        check(&format!("Basic {}", encode(":tok")), None);
        check("Basic !!!", None);
    }
}
