//! The chunked transfer coding (RFC 9112 §7.1), read as it streams past: the router forwards
//! chunked bodies as they are, and only needs to know where each ends, how many data bytes it
//! carries (for the app's body limit), and, for an HTTP/1.0 client, the data alone.
//!
//! Invariant: the scanner never buffers; it keeps a few integers of state between calls, so a
//! body is checked in whatever pieces the socket delivers.

/// The longest chunk-size line or trailer section accepted, extensions included.
const MAX_LINE_BYTES: usize = 4096;
const MAX_TRAILER_BYTES: usize = 32 * 1024;

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) &'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a chunk size; `digits` so far.
    Size {
        digits: u8,
    },
    /// After the size: an extension or the CR, up to the LF.
    SizeLine {
        len: usize,
    },
    /// Inside a chunk's data, with this many bytes left.
    Data {
        left: u64,
    },
    /// The CR after a chunk's data.
    DataCr,
    /// The LF after a chunk's data.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field line, up to its LF.
    TrailerLine,
    /// The LF of the final empty line.
    FinalLf,
    Done,
}

/// Follows one chunked body through.
#[derive(Debug, Clone)]
pub(crate) struct Scanner {
    state: State,
    size: u64,
    /// Data bytes seen so far (the decoded length).
    data: u64,
    trailer: usize,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            state: State::Size { digits: 0 },
            size: 0,
            data: 0,
            trailer: 0,
        }
    }
}

impl Scanner {
    /// Data bytes seen so far.
    pub(crate) fn data_bytes(&self) -> u64 {
        self.data
    }

    /// Whether the body's last byte has been seen.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Reads `buf`, the body's next bytes, calling `on_data` with each run of chunk data. Returns
    /// how many bytes of `buf` belong to the body: all of them, or fewer when the body ends
    /// inside `buf`.
    pub(crate) fn scan(
        &mut self,
        buf: &[u8],
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<usize, Malformed> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            match self.state {
                State::Size { digits } => match hex(b) {
                    Some(v) => {
                        if digits == 16 {
                            return Err(Malformed("chunk size too large"));
                        }
                        self.size = (self.size << 4) | u64::from(v);
                        self.state = State::Size { digits: digits + 1 };
                    }
                    None if digits == 0 => return Err(Malformed("chunk size missing")),
                    None if b == b';' || b == b'\r' || b == b' ' || b == b'\t' => {
                        self.state = State::SizeLine { len: 1 };
                    }
                    None if b == b'\n' => self.end_size_line(),
                    None => return Err(Malformed("invalid chunk size")),
                },
                State::SizeLine { len } => {
                    if b == b'\n' {
                        self.end_size_line();
                    } else if len >= MAX_LINE_BYTES {
                        return Err(Malformed("chunk extension too long"));
                    } else {
                        self.state = State::SizeLine { len: len + 1 };
                    }
                }
                State::Data { left } => {
                    let take = (left.min((buf.len() - i) as u64)) as usize;
                    on_data(&buf[i..i + take]);
                    self.data += take as u64;
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { left }
                    };
                    continue;
                }
                State::DataCr => match b {
                    b'\r' => self.state = State::DataLf,
                    b'\n' => self.state = State::Size { digits: 0 },
                    _ => return Err(Malformed("chunk data longer than its size")),
                },
                State::DataLf => match b {
                    b'\n' => self.state = State::Size { digits: 0 },
                    _ => return Err(Malformed("chunk data longer than its size")),
                },
                State::TrailerStart => match b {
                    b'\r' => self.state = State::FinalLf,
                    b'\n' => {
                        self.state = State::Done;
                        return Ok(i + 1);
                    }
                    _ => {
                        self.count_trailer()?;
                        self.state = State::TrailerLine;
                    }
                },
                State::TrailerLine => {
                    self.count_trailer()?;
                    if b == b'\n' {
                        self.state = State::TrailerStart;
                    }
                }
                State::FinalLf => match b {
                    b'\n' => {
                        self.state = State::Done;
                        return Ok(i + 1);
                    }
                    _ => return Err(Malformed("invalid end of chunked body")),
                },
                State::Done => return Ok(i),
            }
            i += 1;
        }
        Ok(buf.len())
    }

    fn end_size_line(&mut self) {
        self.state = if self.size == 0 {
            State::TrailerStart
        } else {
            State::Data { left: self.size }
        };
        self.size = 0;
    }

    fn count_trailer(&mut self) -> Result<(), Malformed> {
        self.trailer += 1;
        if self.trailer > MAX_TRAILER_BYTES {
            return Err(Malformed("chunked trailer too long"));
        }
        Ok(())
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `body` in pieces of `step` bytes; returns the data, the body's length in `body`, and
    /// whether it ended.
    fn scan_in_pieces(body: &[u8], step: usize) -> Result<(Vec<u8>, usize, bool), Malformed> {
        let mut scanner = Scanner::default();
        let mut data = Vec::new();
        let mut at = 0;
        while at < body.len() && !scanner.is_done() {
            let end = (at + step).min(body.len());
            at += scanner.scan(&body[at..end], |d| data.extend_from_slice(d))?;
        }
        assert_eq!(scanner.data_bytes(), data.len() as u64);
        Ok((data, at, scanner.is_done()))
    }

    #[test]
    fn finds_the_end_and_the_data_at_every_piece_size() {
        let body =
            b"5\r\nhello\r\n1;ext=1\r\n \r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\nGET /next";
        let end = body.len() - b"GET /next".len();
        for step in 1..=body.len() {
            let (data, at, done) = scan_in_pieces(body, step).unwrap();
            assert_eq!(data, b"hello 0123456789abcdef", "step {step}");
            assert_eq!(at, end, "step {step}");
            assert!(done);
        }
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        let (data, at, done) = scan_in_pieces(b"5\r\nhel", 2).unwrap();
        assert_eq!((data.as_slice(), at, done), (&b"hel"[..], 6, false));
        let (_, _, done) = scan_in_pieces(b"0\r\n", 1).unwrap();
        assert!(!done, "the final empty line is still to come");
    }

    #[test]
    fn bare_lf_line_ends_are_accepted() {
        let (data, _, done) = scan_in_pieces(b"3\nabc\n0\n\n", 1).unwrap();
        assert_eq!(data, b"abc");
        assert!(done);
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for body in [
            &b"\r\n"[..],
            b"zz\r\n",
            b"3\r\nabcd\r\n",
            b"11111111111111111\r\n",
            b"0\r\n\rx",
        ] {
            assert!(scan_in_pieces(body, 1).is_err(), "{body:?}");
        }
        let long_ext = [b"1;".as_slice(), &[b'x'; 5000]].concat();
        assert!(scan_in_pieces(&long_ext, 100).is_err());
    }
}
