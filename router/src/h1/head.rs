//! HTTP/1.x message heads: a client's request read and rewritten for the app, and the app's
//! response read and rewritten for the client, each in one pass over the parsed fields.
//!
//! The header rules are the ones `forwarded` states for the pingora path: the standard hop-by-hop
//! fields and those a `Connection` field names are dropped in both directions, X-Forwarded-For is
//! appended to, X-Forwarded-Proto/Host/Port, X-Request-Id and X-Request-Start are set by the
//! router whatever the client sent.
//!
//! Invariant: nothing here does IO; a head that cannot be framed safely (request smuggling
//! shapes: Content-Length with Transfer-Encoding, two different lengths, a coding other than
//! chunked last) is refused rather than guessed at.

use std::mem::MaybeUninit;

use smallvec::SmallVec;

use crate::forwarded;

/// The most header fields read in one head.
pub(crate) const MAX_HEADERS: usize = 128;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// The chunked coding.
    Chunked,
    /// Everything until the sender closes (responses only).
    UntilClose,
}

/// Why a head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// Not yet complete: read more.
    Partial,
    /// More fields than [`MAX_HEADERS`].
    TooManyFields,
    /// Not a valid head, with what is wrong.
    Invalid(&'static str),
}

/// What the router needs of a client's request; the head for the app is built alongside.
#[derive(Debug)]
pub(crate) struct Request {
    /// Bytes of the head in the buffer it was read from.
    pub(crate) head_len: usize,
    pub(crate) method: http::Method,
    /// The request target in origin form (`/path?query`), or `*`.
    pub(crate) target: String,
    /// HTTP/1.0 (0) or HTTP/1.1 (1).
    pub(crate) minor: u8,
    /// The host the request names, port included, as sent; empty when none.
    pub(crate) host: String,
    pub(crate) framing: Framing,
    /// Whether the client wants the connection kept open after the response.
    pub(crate) keep_alive: bool,
    /// The protocol the client asks to switch to (WebSockets), if it does.
    pub(crate) upgrade: bool,
    /// The client waits for `100 Continue` before sending its body.
    pub(crate) expect_continue: bool,
    /// The client's id when valid, else a fresh one.
    pub(crate) request_id: String,
}

/// The text fields of a [`Request`], kept by a connection from one request to the next so that
/// their room is allocated once rather than for each request.
#[derive(Debug, Default)]
pub(crate) struct RequestText {
    target: String,
    host: String,
    request_id: String,
}

impl Request {
    /// Gives back the request's text fields, for the next request.
    pub(crate) fn into_text(self) -> RequestText {
        RequestText {
            target: self.target,
            host: self.host,
            request_id: self.request_id,
        }
    }
}

/// Per-listener values the request head for the app carries.
pub(crate) struct Forwarding<'a> {
    /// The client's address as text, written once per connection rather than per request.
    pub(crate) client: Option<&'a str>,
    pub(crate) proto: &'a str,
    pub(crate) port: u16,
    /// Milliseconds since the Unix epoch when the request was received.
    pub(crate) start_ms: u64,
}

/// Fields that describe one connection only (RFC 9110 §7.6.1), never forwarded. Picked by
/// length first: most names have a length none of these has.
fn is_hop_by_hop(name: &[u8]) -> bool {
    let is = |field: &[u8]| name.eq_ignore_ascii_case(field);
    match name.len() {
        2 => is(b"te"),
        7 => is(b"trailer") || is(b"upgrade"),
        10 => is(b"connection") || is(b"keep-alive"),
        16 => is(b"proxy-connection"),
        17 => is(b"transfer-encoding"),
        18 => is(b"proxy-authenticate"),
        _ => false,
    }
}

/// The fields the router sets on every request to the app, replacing the client's.
fn is_set_by_router(name: &[u8]) -> bool {
    const FIELDS: [&str; 6] = [
        forwarded::X_FORWARDED_FOR,
        forwarded::X_FORWARDED_PROTO,
        forwarded::X_FORWARDED_HOST,
        forwarded::X_FORWARDED_PORT,
        forwarded::X_REQUEST_ID,
        forwarded::X_REQUEST_START,
    ];
    FIELDS
        .iter()
        .any(|f| name.eq_ignore_ascii_case(f.as_bytes()))
}

/// The options of a message's `Connection` fields, read once per head rather than once per
/// field name checked against them.
#[derive(Default)]
struct Options<'a> {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
    /// The other fields named, apart from the hop-by-hop ones, which go anyway. Rare: a `Vec`
    /// allocates only when there is one.
    named: Vec<&'a [u8]>,
}

impl<'a> Options<'a> {
    fn add(&mut self, value: &'a [u8]) {
        for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else if !token.is_empty() && !is_hop_by_hop(token) {
                self.named.push(token);
            }
        }
    }

    /// Whether the field `name` describes this connection only, by the standard or because
    /// the `Connection` fields name it (RFC 9110 §7.6.1).
    fn drops(&self, name: &[u8]) -> bool {
        is_hop_by_hop(name)
            || (self.close && name.eq_ignore_ascii_case(b"close"))
            || self.named.iter().any(|t| t.eq_ignore_ascii_case(name))
    }
}

/// The values of the fields of one name in a head; most heads have one at most.
type Values<'a> = SmallVec<[&'a [u8]; 2]>;

/// Copies the fields of a parsed head (`head_len` bytes at the start of `buf`) that `keep`
/// picks to `out`. A field line ending in CRLF goes out as it came, and adjacent ones in a
/// single copy; one ending in a bare LF is rebuilt with CRLF.
fn copy_fields(
    buf: &[u8],
    head_len: usize,
    fields: &[httparse::Header<'_>],
    out: &mut Vec<u8>,
    mut keep: impl FnMut(&httparse::Header<'_>) -> bool,
) {
    // httparse's slices point into `buf`: a field's line runs from its name to the next
    // field's name, and the last one's to the blank line that ends the head.
    let head = &buf[..head_len.min(buf.len())];
    let base = head.as_ptr() as usize;
    let start = |f: &httparse::Header<'_>| {
        (f.name.as_ptr() as usize)
            .checked_sub(base)
            .filter(|&at| at < head.len())
    };
    let fields_end = head
        .len()
        .saturating_sub(if head.ends_with(b"\r\n\r\n") { 2 } else { 1 });
    let mut run: Option<std::ops::Range<usize>> = None;
    for (i, f) in fields.iter().enumerate() {
        if !keep(f) {
            if let Some(r) = run.take() {
                out.extend_from_slice(&head[r]);
            }
            continue;
        }
        let end = match fields.get(i + 1) {
            Some(next) => start(next),
            None => Some(fields_end),
        };
        let line = start(f)
            .zip(end)
            .filter(|&(s, e)| s < e && head[s..e].ends_with(b"\r\n"))
            .map(|(s, e)| s..e);
        match (line, &mut run) {
            (Some(line), Some(r)) if r.end == line.start => r.end = line.end,
            (line, run) => {
                if let Some(r) = run.take() {
                    out.extend_from_slice(&head[r]);
                }
                match line {
                    Some(line) => *run = Some(line),
                    None => field(out, f.name.as_bytes(), f.value),
                }
            }
        }
    }
    if let Some(r) = run {
        out.extend_from_slice(&head[r]);
    }
}

fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 19 digits: below u64::MAX, so no step can overflow.
    Some(
        value
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')),
    )
}

/// The framing that Content-Length and Transfer-Encoding fields give, or why they are refused.
fn framing(lengths: &[&[u8]], codings: &[&[u8]], is_request: bool) -> Result<Framing, HeadError> {
    if !codings.is_empty() {
        if is_request && !lengths.is_empty() {
            return Err(HeadError::Invalid(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        let last = codings
            .iter()
            .flat_map(|v| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .rfind(|t| !t.is_empty());
        return match last {
            Some(c) if c.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
            _ if is_request => Err(HeadError::Invalid("unsupported transfer coding")),
            _ => Ok(Framing::UntilClose),
        };
    }
    let mut length = None;
    for value in lengths.iter().flat_map(|v| v.split(|&b| b == b',')) {
        let n = parse_length(value).ok_or(HeadError::Invalid("invalid Content-Length"))?;
        if length.is_some_and(|l| l != n) {
            return Err(HeadError::Invalid("conflicting Content-Length"));
        }
        length = Some(n);
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None if is_request => Framing::Empty,
        None => Framing::UntilClose,
    })
}

/// The length of a head httparse read whole, or why there is none yet; `malformed` says what
/// a head it could not read is.
fn head_len(parsed: httparse::Result<usize>, malformed: &'static str) -> Result<usize, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(n)) => Ok(n),
        Ok(httparse::Status::Partial) => Err(HeadError::Partial),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyFields),
        Err(_) => Err(HeadError::Invalid(malformed)),
    }
}

/// Reads the request head at the start of `buf` and writes the head for the app into `out`. The
/// request's text goes into `text`'s room, taken when the head is complete.
pub(crate) fn request(
    buf: &[u8],
    fwd: &Forwarding<'_>,
    out: &mut Vec<u8>,
    text: &mut RequestText,
) -> Result<Request, HeadError> {
    // Left uninitialised: zeroing 128 fields for each head costs more than parsing a short one.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        buf,
        &mut fields,
    );
    let head_len = head_len(parsed, "malformed request head")?;
    let minor = req.version.unwrap_or(1);
    let method = http::Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| HeadError::Invalid("invalid method"))?;
    let raw_target = req.path.unwrap_or("");

    let mut host_field: Option<&[u8]> = None;
    let mut hosts = 0;
    let mut lengths = Values::new();
    let mut codings = Values::new();
    let mut options = Options::default();
    let mut forwarded_for = Values::new();
    let mut upgrade: Option<&[u8]> = None;
    let mut expect_continue = false;
    let mut sent_id: Option<&[u8]> = None;
    for f in req.headers.iter() {
        let name = f.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host_field = Some(f.value);
        } else if name.eq_ignore_ascii_case("content-length") {
            lengths.push(f.value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            codings.push(f.value);
        } else if name.eq_ignore_ascii_case("connection") {
            options.add(f.value);
        } else if name.eq_ignore_ascii_case(forwarded::X_FORWARDED_FOR) {
            forwarded_for.push(f.value);
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = Some(f.value);
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = f.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case(forwarded::X_REQUEST_ID) {
            sent_id = Some(f.value);
        }
    }
    if hosts > 1 {
        return Err(HeadError::Invalid("more than one Host"));
    }
    let framing = framing(&lengths, &codings, true)?;

    // The target's authority wins over Host for an absolute-form target (RFC 9112 §3.2.2).
    let (authority, target) = split_target(raw_target)?;
    let host = match authority {
        Some(a) => a,
        None => match host_field {
            Some(v) => std::str::from_utf8(v).map_err(|_| HeadError::Invalid("invalid Host"))?,
            None if minor >= 1 => return Err(HeadError::Invalid("no Host")),
            None => "",
        },
    };
    // Userinfo before an `@` is dropped; a byte scan, as the char searcher costs more here.
    let host = match host.bytes().rposition(|b| b == b'@') {
        Some(at) => &host[at + 1..],
        None => host,
    };
    let host = host.trim();

    let keep_alive = if minor >= 1 {
        !options.close
    } else {
        !options.close && options.keep_alive
    };
    let upgrade = match upgrade {
        Some(protocol) if minor >= 1 && options.upgrade => Some(protocol),
        _ => None,
    };
    forwarded::write_request_id(sent_id, &mut text.request_id);
    let request_id = text.request_id.as_str();

    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    copy_fields(buf, head_len, req.headers, out, |f| {
        let name = f.name.as_bytes();
        !(options.drops(name)
            || is_set_by_router(name)
            || (authority.is_some() && name.eq_ignore_ascii_case(b"host"))
            || (expect_continue && name.eq_ignore_ascii_case(b"expect")))
    });
    if authority.is_some() {
        field(out, b"Host", host.as_bytes());
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if let Some(protocol) = upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
        field(out, b"Upgrade", protocol);
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    forwarded::append_forwarded_for(out, forwarded_for.iter().copied(), fwd.client);
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    out.extend_from_slice(fwd.proto.as_bytes());
    out.extend_from_slice(b"\r\n");
    if !host.is_empty() {
        field(out, b"X-Forwarded-Host", host.as_bytes());
    }
    // By hand rather than `write!`: `fmt` costs more than the rest of this head.
    out.extend_from_slice(b"X-Forwarded-Port: ");
    out.extend_from_slice(itoa::Buffer::new().format(fwd.port).as_bytes());
    out.extend_from_slice(b"\r\nX-Request-Id: ");
    out.extend_from_slice(request_id.as_bytes());
    out.extend_from_slice(b"\r\nX-Request-Start: ");
    out.extend_from_slice(itoa::Buffer::new().format(fwd.start_ms).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");

    text.target.clear();
    text.target.push_str(target);
    text.host.clear();
    text.host.push_str(host);
    Ok(Request {
        head_len,
        method,
        target: std::mem::take(&mut text.target),
        minor,
        host: std::mem::take(&mut text.host),
        framing,
        keep_alive,
        upgrade: upgrade.is_some(),
        expect_continue: expect_continue && minor >= 1,
        request_id: std::mem::take(&mut text.request_id),
    })
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Splits an absolute-form target (`http://host/path`) into its authority and origin-form
/// path; other forms come back as they are.
fn split_target(target: &str) -> Result<(Option<&str>, &str), HeadError> {
    if target.starts_with('/') || target == "*" {
        return Ok((None, target));
    }
    let rest = ["http://", "https://"]
        .iter()
        .find_map(|scheme| {
            target
                .get(..scheme.len())
                .filter(|s| s.eq_ignore_ascii_case(scheme))
                .map(|_| &target[scheme.len()..])
        })
        .ok_or(HeadError::Invalid("invalid request target"))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() {
        return Err(HeadError::Invalid("invalid request target"));
    }
    let path = if path.is_empty() { "/" } else { path };
    // A target like `http://h?q` has a query but no path; `/` is implied before it.
    if path.starts_with('?') {
        return Err(HeadError::Invalid("invalid request target"));
    }
    Ok((Some(authority), path))
}

/// What the router needs of an app's response; the head for the client is built alongside.
#[derive(Debug)]
pub(crate) struct Response {
    /// Bytes of the head in the buffer it was read from.
    pub(crate) head_len: usize,
    pub(crate) status: u16,
    pub(crate) framing: Framing,
    /// Whether the app keeps the connection open after this response.
    pub(crate) reusable: bool,
}

/// How the client's side of a response is to be written.
pub(crate) struct ClientSide<'a> {
    /// The request was HEAD: no body follows, whatever the head says.
    pub(crate) head_request: bool,
    /// The client spoke HTTP/1.0: it understands neither chunked nor keep-alive by default.
    pub(crate) minor: u8,
    /// The connection stays open after this response.
    pub(crate) keep_alive: bool,
    pub(crate) request_id: &'a str,
}

/// Reads the response head at the start of `buf` and writes the head for the client into
/// `out`. Returns `None` in `framing`'s place for interim (1xx other than 101) answers.
pub(crate) fn response(
    buf: &[u8],
    client: &ClientSide<'_>,
    out: &mut Vec<u8>,
) -> Result<Response, HeadError> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut fields,
    );
    let head_len = head_len(parsed, "malformed response head")?;
    let status = resp.code.unwrap_or(0);
    let minor = resp.version.unwrap_or(1);
    let mut lengths = Values::new();
    let mut codings = Values::new();
    let mut options = Options::default();
    for f in resp.headers.iter() {
        if f.name.eq_ignore_ascii_case("content-length") {
            lengths.push(f.value);
        } else if f.name.eq_ignore_ascii_case("transfer-encoding") {
            codings.push(f.value);
        } else if f.name.eq_ignore_ascii_case("connection") {
            options.add(f.value);
        }
    }
    let switching = status == 101;
    let interim = (100..200).contains(&status);
    let framing = if interim || status == 204 || status == 304 || client.head_request {
        Framing::Empty
    } else {
        framing(&lengths, &codings, false)?
    };
    let reusable = !switching
        && framing != Framing::UntilClose
        && if minor >= 1 {
            !options.close
        } else {
            options.keep_alive
        };

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    // An HTTP/1.0 client cannot read chunks; the router sends it the data alone and closes.
    let dechunk = framing == Framing::Chunked && client.minor == 0;
    copy_fields(buf, head_len, resp.headers, out, |f| {
        let name = f.name.as_bytes();
        if switching {
            return true;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            // Chunks win over a length (RFC 9112 §6.3), and the chunks are what is forwarded.
            framing != Framing::Chunked
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            !dechunk
        } else {
            !(options.drops(name) || name.eq_ignore_ascii_case(forwarded::X_REQUEST_ID.as_bytes()))
        }
    });
    if !interim {
        field(out, b"X-Request-Id", client.request_id.as_bytes());
        let closes = !client.keep_alive || framing == Framing::UntilClose || dechunk;
        if closes {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if client.minor == 0 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    Ok(Response {
        head_len,
        status,
        framing,
        reusable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd() -> Forwarding<'static> {
        Forwarding {
            client: Some("192.0.2.7"),
            proto: "http",
            port: 8080,
            start_ms: 1234,
        }
    }

    fn req(raw: &str) -> Result<(Request, String), HeadError> {
        let mut out = Vec::new();
        let r = request(
            raw.as_bytes(),
            &fwd(),
            &mut out,
            &mut RequestText::default(),
        )?;
        Ok((r, String::from_utf8(out).unwrap()))
    }

    #[test]
    fn the_head_for_the_app_drops_hop_by_hop_fields_and_sets_the_forwarded_ones() {
        let (r, out) = req(concat!(
            "GET /a?b=1 HTTP/1.1\r\nHost: web.example.com:8080\r\nConnection: keep-alive, X-Secret\r\n",
            "X-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-For: 10.0.0.1\r\n",
            "X-Forwarded-Proto: https\r\nX-Request-Id: abc-1\r\nAccept: */*\r\n\r\nBODY"
        ))
        .unwrap();
        assert_eq!(r.host, "web.example.com:8080");
        assert_eq!(r.target, "/a?b=1");
        assert_eq!(r.request_id, "abc-1");
        assert!(r.keep_alive);
        assert_eq!(r.framing, Framing::Empty);
        assert_eq!(
            out,
            concat!(
                "GET /a?b=1 HTTP/1.1\r\nHost: web.example.com:8080\r\nAccept: */*\r\n",
                "X-Forwarded-For: 10.0.0.1, 192.0.2.7\r\nX-Forwarded-Proto: http\r\n",
                "X-Forwarded-Host: web.example.com:8080\r\nX-Forwarded-Port: 8080\r\n",
                "X-Request-Id: abc-1\r\nX-Request-Start: 1234\r\n\r\n"
            )
        );
    }

    #[test]
    fn kept_fields_go_out_as_they_came_and_bare_line_feeds_become_crlf() {
        // Runs of kept lines broken by dropped ones, odd spacing kept, bare LFs (which httparse
        // accepts) rebuilt, in the middle and as the last field, and a field `Connection: close`
        // names.
        let (_, out) = req(concat!(
            "GET / HTTP/1.1\r\nHost: h\r\nA:1\r\nB:  two  \r\nTE: x\r\nC: 3\nD: 4\r\n",
            "Connection: close\r\nClose: x\r\nX-Request-Id: r1\r\nE: 5\n\n"
        ))
        .unwrap();
        assert_eq!(
            out,
            concat!(
                "GET / HTTP/1.1\r\nHost: h\r\nA:1\r\nB:  two  \r\nC: 3\r\nD: 4\r\nE: 5\r\n",
                "X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n",
                "X-Forwarded-Port: 8080\r\nX-Request-Id: r1\r\nX-Request-Start: 1234\r\n\r\n"
            )
        );
        let (_, out) = resp(
            "HTTP/1.1 200 OK\nA: 1\nContent-Length: 0\n\n",
            client(1, true),
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nA: 1\r\nContent-Length: 0\r\nX-Request-Id: rid\r\n\r\n"
        );
    }

    #[test]
    fn hop_by_hop_fields_in_any_case() {
        for name in [
            "Connection",
            "KEEP-ALIVE",
            "proxy-connection",
            "TE",
            "Trailer",
            "Transfer-Encoding",
            "upgrade",
            "Proxy-Authenticate",
        ] {
            assert!(is_hop_by_hop(name.as_bytes()), "{name}");
        }
        for name in [
            "Host",
            "Te-x",
            "Upgrades",
            "Connectio",
            "Proxy-Authorization",
            "",
        ] {
            assert!(!is_hop_by_hop(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn framing_and_smuggling_shapes() {
        let framing_of = |fields: &str| {
            req(&format!("POST / HTTP/1.1\r\nHost: h\r\n{fields}\r\n")).map(|(r, _)| r.framing)
        };
        assert_eq!(framing_of("Content-Length: 5\r\n"), Ok(Framing::Length(5)));
        assert_eq!(
            framing_of("Content-Length: 5\r\nContent-Length: 5\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            framing_of("Transfer-Encoding: chunked\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(framing_of(""), Ok(Framing::Empty));
        assert_eq!(
            framing_of("Content-Length: 9999999999999999999\r\n"),
            Ok(Framing::Length(9_999_999_999_999_999_999))
        );
        for bad in [
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "Content-Length: -1\r\n",
            "Content-Length: 0x10\r\n",
            "Content-Length: 18446744073709551616\r\n",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked, gzip\r\n",
        ] {
            assert!(
                matches!(framing_of(bad), Err(HeadError::Invalid(_))),
                "{bad}"
            );
        }
        let (_, out) =
            req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").unwrap();
        assert!(out.contains("Transfer-Encoding: chunked\r\n"), "{out}");
        assert!(!out.contains("gzip"), "{out}");
    }

    #[test]
    fn hosts_versions_and_targets() {
        assert!(matches!(
            req("GET / HTTP/1.1\r\n\r\n"),
            Err(HeadError::Invalid("no Host"))
        ));
        assert!(matches!(
            req("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Err(HeadError::Invalid(_))
        ));
        let (r, _) = req("GET / HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!((r.host.as_str(), r.keep_alive), ("", false));
        let (r, _) = req("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\nHost: h\r\n\r\n").unwrap();
        assert!(r.keep_alive);
        let (r, out) =
            req("GET http://u@app.example.com:81/x?y HTTP/1.1\r\nHost: other\r\n\r\n").unwrap();
        assert_eq!(
            (r.host.as_str(), r.target.as_str()),
            ("app.example.com:81", "/x?y")
        );
        assert!(out.starts_with("GET /x?y HTTP/1.1\r\n"), "{out}");
        assert!(out.contains("\r\nHost: app.example.com:81\r\n"), "{out}");
        assert!(!out.contains("other"), "{out}");
        assert!(matches!(
            req("GET x HTTP/1.1\r\nHost: h\r\n\r\n"),
            Err(HeadError::Invalid(_))
        ));
        assert!(matches!(
            req("GET / HTTP/1.1\r\nHost: h\r\n"),
            Err(HeadError::Partial)
        ));
    }

    #[test]
    fn upgrades_and_expect() {
        let (r, out) = req(
            "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n",
        )
        .unwrap();
        assert!(r.upgrade);
        assert!(
            out.contains("Connection: upgrade\r\nUpgrade: websocket\r\n"),
            "{out}"
        );
        assert!(out.contains("Sec-WebSocket-Key: k\r\n"), "{out}");
        let (r, out) =
            req("PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
                .unwrap();
        assert!(r.expect_continue);
        assert!(!out.contains("Expect"), "{out}");
    }

    fn resp(raw: &str, client: ClientSide<'_>) -> (Response, String) {
        let mut out = Vec::new();
        let r = response(raw.as_bytes(), &client, &mut out).unwrap();
        (r, String::from_utf8(out).unwrap())
    }

    fn client(minor: u8, keep_alive: bool) -> ClientSide<'static> {
        ClientSide {
            head_request: false,
            minor,
            keep_alive,
            request_id: "rid",
        }
    }

    #[test]
    fn the_head_for_the_client() {
        let (r, out) = resp(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Internal\r\nX-Internal: 1\r\nKeep-Alive: timeout=5\r\nX-Request-Id: theirs\r\nX-App: 1\r\n\r\nhi",
            client(1, true),
        );
        assert_eq!(
            (r.status, r.framing, r.reusable),
            (200, Framing::Length(2), true)
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-App: 1\r\nX-Request-Id: rid\r\n\r\n"
        );
        // An HTTP/1.0 app without keep-alive: answered as HTTP/1.1, not reused.
        let (r, out) = resp(
            "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            client(1, true),
        );
        assert!(!r.reusable);
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"));
        // No length: the body runs until the app closes, and so does the client's connection.
        let (r, out) = resp("HTTP/1.1 200 OK\r\n\r\n", client(1, true));
        assert_eq!((r.framing, r.reusable), (Framing::UntilClose, false));
        assert!(out.ends_with("Connection: close\r\n\r\n"), "{out}");
        // Chunks to an HTTP/1.0 client: the coding goes, the connection closes.
        let (r, out) = resp(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            client(0, true),
        );
        assert_eq!(r.framing, Framing::Chunked);
        assert!(!out.contains("Transfer-Encoding"), "{out}");
        assert!(out.contains("Connection: close"), "{out}");
        // HEAD, 204 and 304 have no body whatever their fields say.
        let mut head = client(1, true);
        head.head_request = true;
        let (r, out) = resp("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", head);
        assert_eq!(r.framing, Framing::Empty);
        assert!(out.contains("Content-Length: 99"), "{out}");
        let (r, _) = resp(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            client(1, true),
        );
        assert_eq!(r.framing, Framing::Empty);
    }

    #[test]
    fn switching_protocols_keeps_its_fields() {
        let (r, out) = resp(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            client(1, true),
        );
        assert_eq!(r.status, 101);
        assert!(
            out.contains("Connection: Upgrade\r\nUpgrade: websocket\r\n"),
            "{out}"
        );
    }
}
