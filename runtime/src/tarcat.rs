//! Several tar archives as one stream, so that archives bound for the same directory of a
//! container go to the engine in one request instead of one each (every request costs the
//! engine tens of milliseconds, and a build makes several).
//!
//! A tar archive is a run of 512-byte blocks: a header naming its data's size, that many bytes
//! rounded up to whole blocks, the next header, and so on, until a zero block marks the end.
//! Each part is passed through block by block up to its end marker (the rest of it, padding, is
//! dropped), and one end marker closes the whole. Entries are never decoded or copied whole:
//! a part of any size streams through in the chunks it arrives in.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

const BLOCK: usize = 512;

/// Where a part's reader stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// At a block boundary where a header (or the end marker) starts.
    Header,
    /// Inside an entry's data: this many bytes (whole blocks) still to pass through.
    Data(u64),
    /// Past the end marker: the rest of the part is dropped.
    Done,
}

/// One part's block walker. `feed` takes the part's bytes as they come and returns what goes
/// out; a header split across chunks waits in `pending` until it is whole.
struct Part {
    state: State,
    pending: BytesMut,
}

impl Part {
    fn new() -> Part {
        Part {
            state: State::Header,
            pending: BytesMut::new(),
        }
    }

    fn feed(&mut self, mut chunk: Bytes, out: &mut Vec<Bytes>) -> std::io::Result<()> {
        while !chunk.is_empty() {
            match self.state {
                State::Done => return Ok(()),
                State::Data(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
                    out.push(chunk.split_to(n));
                    self.state = match left - n as u64 {
                        0 => State::Header,
                        rest => State::Data(rest),
                    };
                }
                State::Header => {
                    let want = BLOCK - self.pending.len();
                    let take = want.min(chunk.len());
                    self.pending.extend_from_slice(&chunk.split_to(take));
                    if self.pending.len() < BLOCK {
                        continue;
                    }
                    let header = self.pending.split().freeze();
                    if header.iter().all(|b| *b == 0) {
                        self.state = State::Done;
                        continue;
                    }
                    let size = entry_size(&header)?;
                    out.push(header);
                    let blocks = size.div_ceil(BLOCK as u64) * BLOCK as u64;
                    self.state = if blocks == 0 {
                        State::Header
                    } else {
                        State::Data(blocks)
                    };
                }
            }
        }
        Ok(())
    }

    /// The part ended: it must have ended between entries, not inside one.
    fn finish(&self) -> std::io::Result<()> {
        match self.state {
            State::Header if self.pending.is_empty() => Ok(()),
            State::Done => Ok(()),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "a tar archive ends inside an entry",
            )),
        }
    }
}

/// The data size a tar header gives: octal digits, or GNU's base-256 for large sizes.
fn entry_size(header: &[u8]) -> std::io::Result<u64> {
    let field = &header[124..136];
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "a tar header is garbled");
    if field[0] & 0x80 != 0 {
        // Base-256: the remaining bits, big-endian; anything past 64 bits is no real size.
        let mut size: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            size = size.checked_mul(256).ok_or_else(bad)? | u64::from(*b);
        }
        return Ok(size);
    }
    let digits = field
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(b));
    let mut size: u64 = 0;
    for d in digits {
        size = size
            .checked_mul(8)
            .and_then(|s| s.checked_add(u64::from(d - b'0')))
            .ok_or_else(bad)?;
    }
    Ok(size)
}

/// The parts, each a tar archive, as one archive holding all their entries in order.
pub(crate) fn concat(
    parts: Vec<BoxStream<'static, std::io::Result<Bytes>>>,
) -> BoxStream<'static, std::io::Result<Bytes>> {
    struct Concat {
        parts: VecDeque<BoxStream<'static, std::io::Result<Bytes>>>,
        walker: Part,
        ready: VecDeque<Bytes>,
        ended: bool,
    }
    let start = Concat {
        parts: parts.into(),
        walker: Part::new(),
        ready: VecDeque::new(),
        ended: false,
    };
    futures_util::stream::unfold(start, |mut s| async move {
        loop {
            if let Some(bytes) = s.ready.pop_front() {
                return Some((Ok(bytes), s));
            }
            if s.ended {
                return None;
            }
            let Some(part) = s.parts.front_mut() else {
                s.ended = true;
                return Some((Ok(Bytes::from(vec![0u8; 2 * BLOCK])), s));
            };
            let step = match part.next().await {
                Some(Ok(chunk)) => {
                    let mut out = Vec::new();
                    let fed = s.walker.feed(chunk, &mut out);
                    s.ready.extend(out);
                    fed.map(|()| s.walker.state == State::Done)
                }
                Some(Err(e)) => Err(e),
                // A part cut off inside an entry is an error, not a silently shorter archive.
                None => s.walker.finish().map(|()| true),
            };
            match step {
                // Past its end marker: the rest of the part (padding) is never read.
                Ok(true) => {
                    s.parts.pop_front();
                    s.walker = Part::new();
                }
                Ok(false) => {}
                Err(e) => {
                    s.ended = true;
                    s.ready.clear();
                    return Some((Err(e), s));
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            tar.append_data(&mut header, name, *data).unwrap();
        }
        tar.into_inner().unwrap()
    }

    /// Splits `bytes` into chunks of `size`, as a file or a socket might deliver them.
    fn chunked(bytes: Vec<u8>, size: usize) -> BoxStream<'static, std::io::Result<Bytes>> {
        let chunks: Vec<_> = bytes
            .chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures_util::stream::iter(chunks).boxed()
    }

    async fn collect(
        stream: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut stream = stream;
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    fn names_and_data(tar: &[u8]) -> Vec<(String, Vec<u8>)> {
        tar::Archive::new(tar)
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut data).unwrap();
                (e.path().unwrap().display().to_string(), data)
            })
            .collect()
    }

    #[tokio::test]
    async fn parts_become_one_archive_whatever_the_chunking() {
        let long = "d/".repeat(80) + "long-name-past-one-hundred-bytes";
        let big = vec![7u8; 5000];
        let a = archive(&[("cnb/a", b"alpha"), (&long, b"l"), ("empty", b"")]);
        let b = archive(&[("cache/big", &big)]);
        for size in [1, 7, 511, 512, 513, 4096, 1 << 20] {
            let joined = collect(concat(vec![
                chunked(a.clone(), size),
                chunked(b.clone(), size),
            ]))
            .await
            .unwrap();
            let entries = names_and_data(&joined);
            let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(
                names,
                ["cnb/a", long.as_str(), "empty", "cache/big"],
                "chunks of {size}"
            );
            assert_eq!(entries[0].1, b"alpha");
            assert_eq!(entries[3].1, big);
        }
    }

    #[tokio::test]
    async fn a_part_cut_off_inside_an_entry_is_an_error() {
        let mut a = archive(&[("a", &[1u8; 2000])]);
        a.truncate(1024);
        assert!(collect(concat(vec![chunked(a, 100)])).await.is_err());
        let mut garbled = archive(&[("a", b"x")]);
        garbled[124..136].copy_from_slice(b"77777777777\0");
        // A size past the end: the part ends inside the entry.
        assert!(collect(concat(vec![chunked(garbled, 512)])).await.is_err());
    }

    #[test]
    fn sizes_in_octal_and_base_256() {
        let mut header = [0u8; 512];
        header[124..136].copy_from_slice(b"00000001750\0");
        assert_eq!(entry_size(&header).unwrap(), 1000);
        header[124..136].copy_from_slice(b" 1750      \0");
        assert_eq!(entry_size(&header).unwrap(), 1000);
        let mut field = [0u8; 12];
        field[0] = 0x80;
        field[4..].copy_from_slice(&(10u64 << 33).to_be_bytes());
        header[124..136].copy_from_slice(&field);
        assert_eq!(entry_size(&header).unwrap(), 10 << 33);
        header[124..136].copy_from_slice(&[0xff; 12]);
        assert!(entry_size(&header).is_err());
    }
}
