//! The router's own answers: every way a request can fail at the router, its status, the stable
//! code word it is logged under, and the small HTML page the client gets.
//!
//! Invariant: a page says what happened in one sentence and never shows internal detail (backend
//! addresses, error chains); those go to the log under the same code word.

use bytes::Bytes;
use pingora::ErrorType;
use pingora::{Error, ErrorSource};

/// Why the router answered instead of an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No app is routed at the request's host.
    NoRoute,
    /// The app is routed but has no ready instance, e.g. scaled to zero or still deploying.
    NoBackend,
    /// The app is in maintenance mode (`slipway maintenance:on`).
    Maintenance,
    /// No connection could be made to any of the app's instances.
    UpstreamConnect,
    /// An instance did not answer in time.
    UpstreamTimeout,
    /// An instance closed the connection or sent something that is not HTTP.
    UpstreamFailed,
    /// The request's header is over the router's limit.
    HeadersTooLarge,
    /// The request's body is over the app's limit (`SLIPWAY_MAX_BODY_SIZE`).
    BodyTooLarge,
    /// The client's request could not be forwarded, with the status pingora chose (4xx).
    BadRequest(u16),
    /// A fault in the router itself.
    Internal,
}

impl Failure {
    /// How a failed proxy attempt is answered, or `None` when the client is gone and nothing can
    /// be sent.
    pub(crate) fn classify(e: &Error) -> Option<Failure> {
        use ErrorType::*;
        if let HTTPStatus(code) = e.etype() {
            return Some(match *code {
                413 => Failure::BodyTooLarge,
                400..=499 => Failure::BadRequest(*code),
                _ => Failure::Internal,
            });
        }
        Some(match e.esource() {
            ErrorSource::Upstream => match e.etype() {
                ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | BindError
                | SocketError | ConnectProxyFailure => Failure::UpstreamConnect,
                ReadTimedout | WriteTimedout => Failure::UpstreamTimeout,
                _ => Failure::UpstreamFailed,
            },
            ErrorSource::Downstream => match e.etype() {
                ReadError | WriteError | ConnectionClosed => return None,
                _ => Failure::BadRequest(400),
            },
            ErrorSource::Internal | ErrorSource::Unset => Failure::Internal,
        })
    }

    /// The response status.
    pub(crate) fn status(self) -> u16 {
        match self {
            Failure::NoRoute => 404,
            Failure::NoBackend | Failure::Maintenance => 503,
            Failure::UpstreamConnect | Failure::UpstreamFailed => 502,
            Failure::UpstreamTimeout => 504,
            Failure::HeadersTooLarge => 431,
            Failure::BodyTooLarge => 413,
            Failure::BadRequest(status) => status,
            Failure::Internal => 500,
        }
    }

    /// The word this failure is logged under; stable, so alerts and searches can rely on it.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Failure::NoRoute => "no_route",
            Failure::NoBackend => "no_backend",
            Failure::Maintenance => "maintenance",
            Failure::UpstreamConnect => "upstream_connect",
            Failure::UpstreamTimeout => "upstream_timeout",
            Failure::UpstreamFailed => "upstream_failed",
            Failure::HeadersTooLarge => "headers_too_large",
            Failure::BodyTooLarge => "body_too_large",
            Failure::BadRequest(_) => "bad_request",
            Failure::Internal => "internal",
        }
    }

    /// The sentence on the page. `host` is the request's host and `app` the app it routes to;
    /// either may be empty when not known yet.
    pub(crate) fn message(self, host: &str, app: &str) -> String {
        match self {
            Failure::NoRoute => format!("no app is served at {host}"),
            Failure::NoBackend => format!("no instance of {app} is ready"),
            Failure::Maintenance => {
                format!("{app} is down for maintenance; please try again later")
            }
            Failure::UpstreamConnect => format!("no instance of {app} could be reached"),
            Failure::UpstreamTimeout => format!("{app} did not answer in time"),
            Failure::UpstreamFailed => {
                format!("{app} closed the connection without a valid answer")
            }
            Failure::HeadersTooLarge => "the request's header is too large".to_owned(),
            Failure::BodyTooLarge => format!("the request's body is larger than {app} accepts"),
            Failure::BadRequest(_) => "the request could not be forwarded".to_owned(),
            Failure::Internal => "the router failed to handle the request".to_owned(),
        }
    }
}

/// The HTML page for a failure. Every interpolated value is escaped: the host comes straight
/// from the client.
pub(crate) fn render(failure: Failure, message: &str, request_id: &str) -> Bytes {
    let status = failure.status();
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let title = format!("{status} {reason}");
    Bytes::from(format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body><h1>{title}</h1>\n<p>{message}</p>\n\
         <hr><p><small>slipway router, request {request_id}</small></p></body></html>\n",
        message = escape(message),
        request_id = escape(request_id),
    ))
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_errors() {
        let check = |etype: ErrorType, source: ErrorSource, expected: Option<Failure>| {
            let mut e = Error::new(etype.clone());
            e.esource = source.clone();
            assert_eq!(Failure::classify(&e), expected, "{etype:?} from {source:?}");
        };
        use ErrorSource::*;
        use ErrorType::*;
        check(ConnectRefused, Upstream, Some(Failure::UpstreamConnect));
        check(ConnectTimedout, Upstream, Some(Failure::UpstreamConnect));
        check(ReadTimedout, Upstream, Some(Failure::UpstreamTimeout));
        check(ConnectionClosed, Upstream, Some(Failure::UpstreamFailed));
        check(InvalidHTTPHeader, Upstream, Some(Failure::UpstreamFailed));
        check(ConnectionClosed, Downstream, None);
        check(
            InvalidHTTPHeader,
            Downstream,
            Some(Failure::BadRequest(400)),
        );
        check(HTTPStatus(413), Downstream, Some(Failure::BodyTooLarge));
        check(InternalError, Internal, Some(Failure::Internal));
    }

    #[test]
    fn page_is_small_and_escaped() {
        let page = render(
            Failure::NoRoute,
            &Failure::NoRoute.message("<script>x</script>", ""),
            "r-1",
        );
        let page = std::str::from_utf8(&page).unwrap();
        assert!(page.contains("<title>404 Not Found</title>"), "{page}");
        assert!(page.contains("no app is served at &lt;script&gt;x&lt;/script&gt;"));
        assert!(page.contains("request r-1"));
        assert!(page.len() < 512);
    }
}
