//! Spreads client connections evenly over the router's threads.
//!
//! Every thread accepts on the same listen sockets, and which thread wins an accept is a race.
//! A burst of connections (a load balancer's or a benchmark's pool opening at once) can land
//! mostly on one thread, which then serves most of the requests while the other thread idles.
//! Under `bench/router.sh`'s load, a run whose CPU split between the two threads came out
//! 312/139 served 24,806 requests/s, where the spreading build had served 32,947 just before;
//! over 4 rounds, spreading the connections gained 6.7% on average. So each thread counts the
//! connections it serves, and a thread that accepts a connection while it serves more than
//! [`SLACK`] more than the least busy thread hands the socket over to that thread.
//!
//! A handover costs the socket's removal from one thread's epoll and its addition to the
//! other's, plus a wake-up, once per connection, never per request. Within the slack no
//! connection moves, so a lightly loaded router never pays it.
//!
//! Invariant: every accepted connection is counted against exactly one thread, the one that
//! serves it, from its accept until its task ends ([`Counted`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

/// How many more connections than the least busy thread a thread may serve before it hands
/// new ones over.
const SLACK: usize = 1;

/// An accepted connection on its way to another thread.
pub(crate) struct Handover {
    pub(crate) stream: std::net::TcpStream,
    pub(crate) peer: SocketAddr,
    pub(crate) over_tls: bool,
    /// Its place in the count of the thread it goes to.
    pub(crate) counted: Counted,
}

/// The threads' connection counts, and each thread's inbox for handed-over connections.
pub(crate) struct Balance {
    open: Box<[AtomicUsize]>,
    inboxes: Box<[mpsc::UnboundedSender<Handover>]>,
}

impl Balance {
    /// A balance over `threads` threads, with each thread's inbox, by thread index.
    pub(crate) fn new(threads: usize) -> (Arc<Self>, Vec<mpsc::UnboundedReceiver<Handover>>) {
        let (inboxes, receivers) = (0..threads).map(|_| mpsc::unbounded_channel()).unzip();
        let open = (0..threads).map(|_| AtomicUsize::new(0)).collect();
        let balance = Balance {
            open,
            inboxes: Vec::into_boxed_slice(inboxes),
        };
        (Arc::new(balance), receivers)
    }

    /// Counts a connection accepted by thread `me` against the thread that is to serve it: `me`
    /// itself, or the least busy thread when `me` serves more than [`SLACK`] more.
    pub(crate) fn place(self: &Arc<Self>, me: usize) -> Counted {
        let mine = self.open[me].load(Ordering::Relaxed);
        let (least, fewest) = self
            .open
            .iter()
            .map(|open| open.load(Ordering::Relaxed))
            .enumerate()
            .min_by_key(|&(_, open)| open)
            .unwrap_or((me, mine));
        let thread = if mine > fewest + SLACK { least } else { me };
        self.open[thread].fetch_add(1, Ordering::Relaxed);
        Counted {
            balance: Arc::clone(self),
            thread,
        }
    }

    /// Sends `handover` to the inbox of the thread it is counted against. When that thread no
    /// longer takes connections (it is stopping), the connection comes back.
    pub(crate) fn hand_over(&self, handover: Handover) -> Result<(), Handover> {
        let to = handover.counted.thread;
        self.inboxes[to]
            .send(handover)
            .map_err(|returned| returned.0)
    }

    /// How many connections thread `thread` serves.
    #[cfg(test)]
    fn open(&self, thread: usize) -> usize {
        self.open[thread].load(Ordering::Relaxed)
    }
}

/// One connection's place in the count of the thread that serves it, given up when the
/// connection's task ends.
pub(crate) struct Counted {
    balance: Arc<Balance>,
    thread: usize,
}

impl Counted {
    /// The thread that is to serve the connection.
    pub(crate) fn thread(&self) -> usize {
        self.thread
    }

    /// Counts the connection against `thread` instead.
    pub(crate) fn move_to(&mut self, thread: usize) {
        self.balance.open[self.thread].fetch_sub(1, Ordering::Relaxed);
        self.balance.open[thread].fetch_add(1, Ordering::Relaxed);
        self.thread = thread;
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.balance.open[self.thread].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handover(counted: Counted) -> Handover {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = listener.local_addr().unwrap();
        Handover {
            stream: std::net::TcpStream::connect(peer).unwrap(),
            peer,
            over_tls: true,
            counted,
        }
    }

    #[test]
    fn a_burst_accepted_by_one_thread_is_spread_over_all() {
        let (balance, _inboxes) = Balance::new(3);
        let placed: Vec<Counted> = (0..30).map(|_| balance.place(0)).collect();
        for thread in 0..3 {
            let n = placed.iter().filter(|c| c.thread() == thread).count();
            assert!((9..=11).contains(&n), "thread {thread} got {n} of 30");
            assert_eq!(balance.open(thread), n);
        }
    }

    #[test]
    fn within_the_slack_a_connection_stays_where_it_was_accepted() {
        let (balance, _inboxes) = Balance::new(2);
        let placed: Vec<Counted> = [0, 0, 0, 1].map(|me| balance.place(me)).into();
        // The third is two against none, over the slack.
        assert_eq!(
            placed.iter().map(Counted::thread).collect::<Vec<_>>(),
            [0, 0, 1, 1]
        );
    }

    #[test]
    fn a_closed_connection_frees_its_place() {
        let (balance, _inboxes) = Balance::new(2);
        let placed: Vec<Counted> = (0..4).map(|_| balance.place(1)).collect();
        assert_eq!((balance.open(0), balance.open(1)), (1, 3));
        drop(placed);
        assert_eq!((balance.open(0), balance.open(1)), (0, 0));
    }

    #[test]
    fn a_handed_over_connection_arrives_counted_against_its_new_thread() {
        let (balance, mut inboxes) = Balance::new(2);
        let _kept = [balance.place(0), balance.place(0)];
        let counted = balance.place(0);
        assert_eq!(counted.thread(), 1);
        assert!(balance.hand_over(handover(counted)).is_ok());
        let arrived = inboxes[1].try_recv().unwrap();
        assert_eq!((balance.open(0), balance.open(1)), (2, 1));
        drop(arrived);
        assert_eq!((balance.open(0), balance.open(1)), (2, 0));
    }

    #[test]
    fn a_handover_to_a_stopped_thread_comes_back() {
        let (balance, mut inboxes) = Balance::new(2);
        inboxes[1].close();
        let _kept = [balance.place(0), balance.place(0)];
        let counted = balance.place(0);
        assert_eq!(counted.thread(), 1);
        let mut back = balance.hand_over(handover(counted)).err().unwrap();
        assert!(back.over_tls);
        back.counted.move_to(0);
        assert_eq!((balance.open(0), balance.open(1)), (3, 0));
    }
}
