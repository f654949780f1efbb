//! The redirect to HTTPS of apps that enforce it (`tls:enable`): a plain HTTP request is
//! answered 301 (GET, HEAD) or 308 (any other method, which must be repeated with its body) to
//! the same host, path and query on the router's HTTPS port.

use http::Method;
use http::header::{self, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use crate::forwarded::X_REQUEST_ID;

/// The redirect's status for a request method: 301 for GET and HEAD, else 308, which tells the
/// client to repeat the method and body rather than switch to GET.
pub(crate) fn status(method: &Method) -> u16 {
    if *method == Method::GET || *method == Method::HEAD {
        301
    } else {
        308
    }
}

/// The HTTPS URL for `host` (as the client sent it, any port dropped), `https_port` (left out
/// when it is 443) and `path_and_query`.
pub(crate) fn location(host: &str, https_port: u16, path_and_query: &str) -> String {
    let name = without_port(host);
    let path = if path_and_query.starts_with('/') {
        path_and_query
    } else {
        "/"
    };
    if https_port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{https_port}{path}")
    }
}

/// `host` without any `:port` suffix.
pub(crate) fn without_port(host: &str) -> &str {
    if host.starts_with('[') {
        // An IPv6 literal keeps its brackets: "[::1]:8080" -> "[::1]".
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Answers the request with the redirect to HTTPS.
pub(crate) async fn send(
    session: &mut Session,
    host: &str,
    https_port: u16,
    request_id: &str,
) -> Result<()> {
    let req = session.req_header();
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let target = location(host, https_port, path);
    let target = HeaderValue::from_str(&target)
        .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "invalid redirect target"))?;
    let mut resp = ResponseHeader::build(status(&req.method), Some(4))?;
    resp.insert_header(header::LOCATION, target)?;
    resp.insert_header(header::CONTENT_LENGTH, 0)?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    resp.insert_header(X_REQUEST_ID, request_id)?;
    session.write_response_header(Box::new(resp), true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_keeps_host_path_and_query() {
        let check = |host: &str, port: u16, path: &str, expected: &str| {
            assert_eq!(location(host, port, path), expected, "{host} {port} {path}");
        };
        check(
            "web.example.com",
            443,
            "/a?b=c",
            "https://web.example.com/a?b=c",
        );
        check(
            "web.example.com:8080",
            8443,
            "/",
            "https://web.example.com:8443/",
        );
        check("[::1]:8080", 8443, "/x", "https://[::1]:8443/x");
        check("web.example.com", 443, "*", "https://web.example.com/");
    }

    #[test]
    fn status_by_method() {
        assert_eq!(status(&Method::GET), 301);
        assert_eq!(status(&Method::HEAD), 301);
        assert_eq!(status(&Method::POST), 308);
        assert_eq!(status(&Method::DELETE), 308);
    }
}
