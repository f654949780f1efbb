//! The registry's counters and their Prometheus text form.
//!
//! Owns: what is counted (requests, body bytes in and out) and how a snapshot is written out.
//! Must not: decide where the numbers are served or who may read them (that is [`crate::api`]);
//! stored bytes are counted by [`crate::storage`], which alone knows when content is created.

use std::fmt::Write as _;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

/// The live counters of one registry.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    requests: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
}

impl Counters {
    /// Counts one answered request.
    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts request body bytes.
    pub(crate) fn received(&self, n: usize) {
        self.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts response body bytes.
    pub(crate) fn sent(&self, n: usize) {
        self.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The counters now, with `stored_bytes` from storage.
    pub(crate) fn snapshot(&self, stored_bytes: u64) -> Metrics {
        Metrics {
            requests: self.requests.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            stored_bytes,
        }
    }
}

/// `stream`, counting each chunk that passes with `count`.
pub(crate) fn counted<S>(
    stream: S,
    counters: Arc<Counters>,
    count: fn(&Counters, usize),
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    stream.inspect(move |chunk| {
        if let Ok(chunk) = chunk {
            count(&counters, chunk.len());
        }
    })
}

/// A snapshot of a registry's counters since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metrics {
    /// HTTP requests answered, whatever their outcome.
    pub requests: u64,
    /// Request body bytes received (blobs and manifests).
    pub bytes_received: u64,
    /// Response body bytes sent (blobs, manifests and lists).
    pub bytes_sent: u64,
    /// Bytes of content in storage, each blob counted once however many repositories hold it.
    pub stored_bytes: u64,
}

impl Metrics {
    /// The metrics in the Prometheus text exposition format (version 0.0.4).
    pub fn to_prometheus(&self) -> String {
        let rows = [
            (
                "slipway_registry_requests_total",
                "counter",
                "HTTP requests answered.",
                self.requests,
            ),
            (
                "slipway_registry_received_bytes_total",
                "counter",
                "Request body bytes received.",
                self.bytes_received,
            ),
            (
                "slipway_registry_sent_bytes_total",
                "counter",
                "Response body bytes sent.",
                self.bytes_sent,
            ),
            (
                "slipway_registry_stored_bytes",
                "gauge",
                "Bytes of content in storage.",
                self.stored_bytes,
            ),
        ];
        let mut text = String::new();
        for (name, kind, help, value) in rows {
            // Writing to a String cannot fail.
            let _ = write!(
                text,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text() {
        let counters = Counters::default();
        counters.request();
        counters.request();
        counters.received(10);
        counters.sent(7);
        let text = counters.snapshot(99).to_prometheus();
        assert_eq!(
            text,
            "# HELP slipway_registry_requests_total HTTP requests answered.\n\
             # TYPE slipway_registry_requests_total counter\n\
             slipway_registry_requests_total 2\n\
             # HELP slipway_registry_received_bytes_total Request body bytes received.\n\
             # TYPE slipway_registry_received_bytes_total counter\n\
             slipway_registry_received_bytes_total 10\n\
             # HELP slipway_registry_sent_bytes_total Response body bytes sent.\n\
             # TYPE slipway_registry_sent_bytes_total counter\n\
             slipway_registry_sent_bytes_total 7\n\
             # HELP slipway_registry_stored_bytes Bytes of content in storage.\n\
             # TYPE slipway_registry_stored_bytes gauge\n\
             slipway_registry_stored_bytes 99\n"
        );
    }
}
