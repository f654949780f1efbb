//! The server's log output: standard output, with the access log's lines buffered.
//!
//! The router logs one `slipway::access` line per request. Written straight to standard output,
//! each line was a `write` system call on the thread serving the request: about 3 us of kernel
//! time per request. Access lines are collected in a buffer instead and written out when it
//! fills, when any other line is logged, and at least every [`FLUSH_EVERY`] from a thread of
//! their own. Every other line is written out at once, after the access lines before it, so
//! the log keeps its order.
//!
//! Invariant: a line is written whole under the lock, so lines from different threads never
//! interleave. A process killed outright loses at most [`FLUSH_EVERY`] of access lines.

use std::io::{self, BufWriter, Write};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// The longest an access line waits in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Room for a few hundred access lines.
const BUFFER_BYTES: usize = 64 * 1024;

/// Where the server's `tracing` output goes; see the module docs. Dropping the last handle
/// writes out what is buffered.
pub(crate) struct LogOutput<W: Write = io::Stdout> {
    out: Arc<Mutex<BufWriter<W>>>,
}

impl LogOutput {
    /// Standard output.
    pub(crate) fn stdout() -> Self {
        Self::new(io::stdout(), FLUSH_EVERY)
    }
}

impl<W: Write + Send + 'static> LogOutput<W> {
    /// `out`, with buffered lines written out at least every `flush_every`.
    pub(crate) fn new(out: W, flush_every: Duration) -> Self {
        let out = Arc::new(Mutex::new(BufWriter::with_capacity(BUFFER_BYTES, out)));
        let weak = Arc::downgrade(&out);
        let flusher = std::thread::Builder::new()
            .name("slipway-log".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(flush_every);
                    let Some(out) = weak.upgrade() else { break };
                    let _ = lock(&out).flush();
                }
            });
        if let Err(e) = flusher {
            // Without the thread, access lines still go out when the buffer fills or another
            // line is logged.
            eprintln!("slipway: the log flusher did not start: {e}");
        }
        Self { out }
    }

    /// Another handle on the same output: one goes to `tracing`, one is kept to be dropped
    /// (and so flushed) when the server ends.
    pub(crate) fn handle(&self) -> Self {
        Self {
            out: Arc::clone(&self.out),
        }
    }
}

impl<W: Write> Drop for LogOutput<W> {
    fn drop(&mut self) {
        let _ = lock(&self.out).flush();
    }
}

fn lock<W: Write>(out: &Mutex<BufWriter<W>>) -> MutexGuard<'_, BufWriter<W>> {
    // A panic while holding the lock leaves at worst a partial line; keep logging.
    out.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One log line's writer: buffered for access lines, written through for the rest.
pub(crate) struct Line<'a, W: Write> {
    out: &'a Mutex<BufWriter<W>>,
    buffered: bool,
}

impl<W: Write> Write for Line<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = lock(self.out);
        out.write_all(buf)?;
        if !self.buffered {
            out.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        lock(self.out).flush()
    }
}

impl<'a, W: Write + 'a> MakeWriter<'a> for LogOutput<W> {
    type Writer = Line<'a, W>;

    fn make_writer(&'a self) -> Line<'a, W> {
        Line {
            out: &self.out,
            buffered: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line<'a, W> {
        Line {
            out: &self.out,
            buffered: *meta.level() == Level::INFO && meta.target() == slipway_router::ACCESS_LOG,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn access_lines_wait_for_the_next_other_line_and_keep_their_order() {
        let captured = Captured::default();
        let output = LogOutput::new(captured.clone(), Duration::from_secs(3600));
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(output.handle())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: slipway_router::ACCESS_LOG, status = 200, "first");
            tracing::info!(target: slipway_router::ACCESS_LOG, status = 404, "second");
            assert_eq!(captured.text(), "", "access lines are buffered");
            tracing::warn!("third");
        });
        let text = captured.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains("first") && lines[0].contains("status=200"));
        assert!(lines[1].contains("second"));
        assert!(lines[2].contains("WARN") && lines[2].contains("third"));
    }

    #[test]
    fn buffered_lines_go_out_when_the_output_is_dropped() {
        let captured = Captured::default();
        let output = LogOutput::new(captured.clone(), Duration::from_secs(3600));
        let dispatch = tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(output.handle())
                .finish(),
        );
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!(target: slipway_router::ACCESS_LOG, "last");
        });
        assert_eq!(captured.text(), "");
        drop(dispatch);
        drop(output);
        assert!(captured.text().contains("last"));
    }
}
