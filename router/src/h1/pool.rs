//! Idle keep-alive connections to app instances, one pool per router thread.
//!
//! Each router thread runs its own single-threaded runtime, and a connection is registered with
//! the runtime that opened it, so a thread keeps its own idle connections: taking one is a
//! hash probe and a pop, with no lock and no cross-thread wake-up.
//!
//! Invariant: a connection is pooled only after a complete response that left it reusable, and
//! is checked for a close or stray bytes from the app before it is handed out again.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// How long an idle connection stays in the pool.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The most idle connections kept per instance per thread.
const MAX_IDLE_PER_BACKEND: usize = 128;

struct Idle {
    stream: TcpStream,
    since: Instant,
}

/// Keyed with foldhash's fast hasher (already in the build, under hashbrown): the addresses come
/// from the controller, never from clients, so the flood resistance of the standard SipHash buys
/// nothing here, and SipHash was a visible share of each request's CPU.
type Pool = HashMap<SocketAddr, Vec<Idle>, foldhash::fast::RandomState>;

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// An idle connection to `backend` that is still open, if this thread has one. `now` is a
/// recent reading of the clock, which the caller has at hand.
pub(crate) fn take(backend: SocketAddr, now: Instant) -> Option<TcpStream> {
    POOL.with_borrow_mut(|pool| {
        let idle = pool.get_mut(&backend)?;
        while let Some(conn) = idle.pop() {
            if now.saturating_duration_since(conn.since) < IDLE_TIMEOUT && is_quiet(&conn.stream) {
                return Some(conn.stream);
            }
        }
        None
    })
}

/// Keeps `stream` for the next request to `backend`, idle since `now`.
pub(crate) fn put(backend: SocketAddr, stream: TcpStream, now: Instant) {
    POOL.with_borrow_mut(|pool| {
        let idle = pool.entry(backend).or_default();
        if idle.len() < MAX_IDLE_PER_BACKEND {
            idle.push(Idle { stream, since: now });
        }
    });
}

/// Closes this thread's connections that have idled too long or that the app has closed.
pub(crate) fn sweep() {
    POOL.with_borrow_mut(|pool| {
        for idle in pool.values_mut() {
            idle.retain(|conn| conn.since.elapsed() < IDLE_TIMEOUT && is_quiet(&conn.stream));
        }
        pool.retain(|_, idle| !idle.is_empty());
    });
}

/// Whether an idle connection has nothing to read: no close, no reset, no stray bytes.
fn is_quiet(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}
