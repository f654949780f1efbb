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

thread_local! {
    static POOL: RefCell<HashMap<SocketAddr, Vec<Idle>>> = RefCell::new(HashMap::new());
}

/// An idle connection to `backend` that is still open, if this thread has one.
pub(crate) fn take(backend: SocketAddr) -> Option<TcpStream> {
    POOL.with_borrow_mut(|pool| {
        let idle = pool.get_mut(&backend)?;
        while let Some(conn) = idle.pop() {
            if conn.since.elapsed() < IDLE_TIMEOUT && is_quiet(&conn.stream) {
                return Some(conn.stream);
            }
        }
        None
    })
}

/// Keeps `stream` for the next request to `backend`.
pub(crate) fn put(backend: SocketAddr, stream: TcpStream) {
    POOL.with_borrow_mut(|pool| {
        let idle = pool.entry(backend).or_default();
        if idle.len() < MAX_IDLE_PER_BACKEND {
            idle.push(Idle {
                stream,
                since: Instant::now(),
            });
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
