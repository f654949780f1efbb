//! The header rules of the router, as plain functions on header values: which host a request
//! names, the X-Forwarded-For chain, the request id, and the hop-by-hop fields of a response.
//!
//! Invariant: nothing here does IO or reads the route table; `proxy` calls these from its phases.

use std::net::IpAddr;

use http::header::{self, HeaderName, HeaderValue};
use pingora::http::authority::raw_target_authority;
use pingora::http::{RequestHeader, ResponseHeader};

/// The client's address, appended to any chain the client sent.
pub(crate) const X_FORWARDED_FOR: &str = "X-Forwarded-For";
/// The scheme the client used: `https` for requests that came over TLS, else `http`.
pub(crate) const X_FORWARDED_PROTO: &str = "X-Forwarded-Proto";
/// The `Host` the client asked for, port included.
pub(crate) const X_FORWARDED_HOST: &str = "X-Forwarded-Host";
/// The port the router accepted the request on (its TLS port for requests over TLS).
pub(crate) const X_FORWARDED_PORT: &str = "X-Forwarded-Port";
/// Correlates the client's request, the app's logs and the router's logs.
pub(crate) const X_REQUEST_ID: &str = "X-Request-Id";

/// When the router received the request, in milliseconds since the Unix epoch, as Heroku's
/// router sends it: apps measure their queueing time with it.
pub(crate) const X_REQUEST_START: &str = "X-Request-Start";

/// The longest request id kept from a client.
const MAX_REQUEST_ID_LEN: usize = 200;

/// The host a request names: the target's authority when there is one (HTTP/2, or an
/// absolute-form HTTP/1.1 target, which RFC 9112 §3.2.2 says wins over `Host`), else the `Host`
/// header. This is the same choice pingora makes for the `Host` it sends upstream. Any port
/// stays on; userinfo is dropped.
pub(crate) fn request_host(req: &RequestHeader) -> Option<&str> {
    let authority = req.uri.authority().map(|a| a.as_str()).or_else(|| {
        let raw = raw_target_authority(req.raw_path()).authority()?;
        std::str::from_utf8(raw).ok()
    });
    let host = match authority {
        Some(authority) => authority,
        None => req.headers.get(header::HOST)?.to_str().ok()?,
    };
    let host = host.rsplit('@').next().unwrap_or(host).trim();
    (!host.is_empty()).then_some(host)
}

/// The size of a request's head as the client sent it, near enough for a limit: the target and
/// every header's name and value, with their separators.
pub(crate) fn header_bytes(req: &RequestHeader) -> usize {
    req.raw_path().len()
        + req
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>()
}

/// The request's `Content-Length`, when it has one that parses.
pub(crate) fn content_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The X-Request-Start value for a request received at `now`.
pub(crate) fn request_start(now: std::time::SystemTime) -> HeaderValue {
    let ms = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    HeaderValue::from(ms)
}

/// The id to use for a request: the client's own if it sent a valid one, else a fresh one.
pub(crate) fn request_id(sent: Option<&HeaderValue>) -> String {
    let mut id = String::new();
    write_request_id(sent.map(HeaderValue::as_bytes), &mut id);
    id
}

/// [`request_id`] for a field value as bytes, into `id`, replacing what it held and keeping its
/// room.
pub(crate) fn write_request_id(sent: Option<&[u8]>, id: &mut String) {
    id.clear();
    match sent.and_then(|v| std::str::from_utf8(v.trim_ascii()).ok()) {
        Some(sent) if is_valid_request_id(sent) => id.push_str(sent),
        _ => write_new_request_id(id),
    }
}

/// Whether a client's id may be passed on: 1 to 200 characters of `[A-Za-z0-9._-]`, so it is
/// safe in log lines and headers.
fn is_valid_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A fresh random request id: 32 lower-case hex digits.
pub(crate) fn new_request_id() -> String {
    let mut id = String::with_capacity(32);
    write_new_request_id(&mut id);
    id
}

/// Appends a fresh [`new_request_id`] to `id`. By hand rather than `format!` or a `collect` of
/// chars: this runs for nearly every request.
fn write_new_request_id(id: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = rand::random::<u128>();
    let mut digits = [0u8; 32];
    for (i, digit) in digits.iter_mut().rev().enumerate() {
        *digit = HEX[(n >> (4 * i)) as usize & 0xf];
    }
    // Hex digits are ASCII, so this never falls back to appending nothing.
    id.push_str(std::str::from_utf8(&digits).unwrap_or_default());
}

/// The X-Forwarded-For value to send upstream: the values the client sent, in order, then the
/// client's address. `None` when there is nothing to send.
pub(crate) fn forwarded_for<'a>(
    sent: impl IntoIterator<Item = &'a HeaderValue>,
    client: Option<IpAddr>,
) -> Option<HeaderValue> {
    let mut chain: Vec<u8> = Vec::new();
    let client = client.map(|ip| ip.to_string());
    append_forwarded_for(
        &mut chain,
        sent.into_iter().map(HeaderValue::as_bytes),
        client.as_deref(),
    );
    // Every byte comes from a header value or an address, so the result is a valid value.
    HeaderValue::from_bytes(&chain)
        .ok()
        .filter(|v| !v.is_empty())
}

/// Appends the X-Forwarded-For chain to `out`: the non-empty values the client sent, trimmed,
/// in order, then the client's address (as text), separated by ", ".
pub(crate) fn append_forwarded_for<'a>(
    out: &mut Vec<u8>,
    sent: impl IntoIterator<Item = &'a [u8]>,
    client: Option<&str>,
) {
    let mut first = true;
    let hops = sent
        .into_iter()
        .map(<[u8]>::trim_ascii)
        .filter(|v| !v.is_empty());
    for hop in hops {
        if !first {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(hop);
        first = false;
    }
    if let Some(ip) = client {
        if !first {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(ip.as_bytes());
    }
}

/// Removes the hop-by-hop fields of an upstream response that pingora passes through: pingora
/// writes its own `Connection` and frames the body itself, but `Keep-Alive`, `Proxy-Connection`
/// and the fields the upstream's `Connection` names would reach the client. A `101 Switching
/// Protocols` keeps everything, since its `Connection` and `Upgrade` make the handshake.
pub(crate) fn strip_response_hop_by_hop(resp: &mut ResponseHeader) {
    if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let nominated: Vec<HeaderName> = resp
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        // The framing fields are pingora's to handle, and the request id is the router's.
        .filter(|name| {
            *name != header::CONTENT_LENGTH
                && *name != header::TRANSFER_ENCODING
                && !name.as_str().eq_ignore_ascii_case(X_REQUEST_ID)
        })
        .collect();
    for name in &nominated {
        resp.remove_header(name);
    }
    resp.remove_header("keep-alive");
    resp.remove_header("proxy-connection");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, host: Option<&str>) -> RequestHeader {
        let mut req = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        if let Some(host) = host {
            req.insert_header(header::HOST, host).unwrap();
        }
        req
    }

    #[test]
    fn host_comes_from_authority_then_host_header() {
        let check = |target: &str, host: Option<&str>, expected: Option<&str>| {
            let req = request(target, host);
            assert_eq!(request_host(&req), expected, "{target} {host:?}");
        };
        check(
            "/",
            Some("web.slipway.localhost"),
            Some("web.slipway.localhost"),
        );
        check(
            "/",
            Some("web.slipway.localhost:8080"),
            Some("web.slipway.localhost:8080"),
        );
        check("/", None, None);
        check("/", Some(""), None);
        check(
            "http://api.example/x",
            Some("web.example"),
            Some("api.example"),
        );
        check("http://user@api.example:81/", None, Some("api.example:81"));
    }

    #[test]
    fn request_id_kept_only_when_valid() {
        let check = |sent: &str, kept: bool| {
            let value = HeaderValue::from_str(sent).unwrap();
            let id = request_id(Some(&value));
            assert_eq!(id == sent, kept, "{sent:?} -> {id:?}");
            assert!(is_valid_request_id(&id));
        };
        check("abc-123_DEF.4", true);
        check(&"a".repeat(200), true);
        check(&"a".repeat(201), false);
        check("", false);
        check("has space", false);
        check("semi;colon", false);
        check("<script>", false);

        let fresh = request_id(None);
        assert_eq!(fresh.len(), 32);
        assert!(
            fresh
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{fresh}"
        );
        assert_ne!(fresh, request_id(None));
    }

    #[test]
    fn forwarded_for_appends_the_client() {
        let check = |sent: &[&str], client: Option<&str>, expected: Option<&str>| {
            let sent: Vec<HeaderValue> = sent.iter().map(|s| s.parse().unwrap()).collect();
            let client = client.map(|c| c.parse().unwrap());
            let got = forwarded_for(&sent, client);
            assert_eq!(got.as_ref().map(|v| v.to_str().unwrap()), expected);
        };
        check(&[], Some("10.0.0.1"), Some("10.0.0.1"));
        check(&["1.2.3.4"], Some("10.0.0.1"), Some("1.2.3.4, 10.0.0.1"));
        check(
            &["1.2.3.4, 5.6.7.8", " 9.9.9.9 "],
            Some("::1"),
            Some("1.2.3.4, 5.6.7.8, 9.9.9.9, ::1"),
        );
        check(&["", "  "], Some("10.0.0.1"), Some("10.0.0.1"));
        check(&["1.2.3.4"], None, Some("1.2.3.4"));
        check(&[], None, None);
    }

    #[test]
    fn response_hop_by_hop_fields_are_stripped() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        for (name, value) in [
            ("Connection", "keep-alive, X-Secret, Content-Length"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("X-Secret", "1"),
            ("Content-Length", "2"),
            ("Content-Type", "text/plain"),
        ] {
            resp.insert_header(name, value).unwrap();
        }
        strip_response_hop_by_hop(&mut resp);
        let mut left: Vec<&str> = resp.headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["connection", "content-length", "content-type"]);

        let mut upgrade = ResponseHeader::build(101, None).unwrap();
        upgrade.insert_header("Connection", "Upgrade").unwrap();
        upgrade.insert_header("Upgrade", "websocket").unwrap();
        strip_response_hop_by_hop(&mut upgrade);
        assert_eq!(upgrade.headers.len(), 2);
    }
}
