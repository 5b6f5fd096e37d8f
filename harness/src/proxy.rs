//! [`Proxy`]: a loopback TCP proxy in front of one server, which a test or the soak tells to
//! delay traffic (a slow network), to drop it (cut every connection and refuse new ones), to
//! blackhole it (a partition: nothing passes, nothing is refused or closed), or to lead new
//! connections to another server (one address in front of several servers: a load
//! balancer, a Kubernetes Service, a DNS name that moves).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// A proxy listening on `127.0.0.1:<port>` that forwards every connection to
/// `127.0.0.1:<upstream>`; stops accepting, and cuts what it forwards, when dropped.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct State {
    /// Where new connections go.
    upstream: AtomicU16,
    /// Latency added to every chunk, each way, in microseconds.
    delay_us: AtomicU64,
    /// While set, new connections are closed as soon as they are accepted.
    refusing: AtomicBool,
    /// Bumped to cut every open connection.
    cut: watch::Sender<u64>,
    /// While set, nothing passes either way and new connections wait before reaching the
    /// server: a partition, not a refusal.
    blackhole: watch::Sender<bool>,
    /// Connections forwarded now.
    open: AtomicUsize,
}

impl Proxy {
    /// Binds a free loopback port and starts forwarding to `upstream` on 127.0.0.1.
    ///
    /// # Errors
    ///
    /// When no loopback port can be bound.
    pub async fn start(upstream: u16) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(State {
            upstream: AtomicU16::new(upstream),
            delay_us: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            cut: watch::channel(0).0,
            blackhole: watch::channel(false).0,
            open: AtomicUsize::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&state)));
        Ok(Proxy { port, state, accept })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Delays every chunk by `delay` each way from now on (zero: no delay).
    pub fn set_delay(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.state.delay_us.store(us, Relaxed);
    }

    /// Closes every open connection now and, while `refusing`, every new one as it arrives.
    pub fn drop_traffic(&self, refusing: bool) {
        self.state.refusing.store(refusing, Relaxed);
        if refusing {
            self.state.cut.send_modify(|generation| *generation += 1);
        }
    }

    /// While `on`, a partition: no byte passes either way and new connections are accepted but
    /// wait before reaching the server; nothing is refused, reset or closed, so a client sees
    /// only silence, as behind a network that drops packets. When it ends, what was held back
    /// is delivered in order (as TCP's retransmissions would) to the connections still open.
    pub fn blackhole(&self, on: bool) {
        self.state.blackhole.send_replace(on);
    }

    /// Connections forwarded now.
    pub fn open(&self) -> usize {
        self.state.open.load(Relaxed)
    }

    /// Leads new connections to `upstream` on 127.0.0.1 from now on; open ones stay where they
    /// are (see [`cut`](Self::cut)).
    pub fn retarget(&self, upstream: u16) {
        self.state.upstream.store(upstream, Relaxed);
    }

    /// Closes every connection open now; new ones are accepted.
    pub fn cut(&self) {
        self.state.cut.send_modify(|generation| *generation += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.state.cut.send_modify(|generation| *generation += 1);
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else { continue };
        if state.refusing.load(Relaxed) {
            drop(inbound);
            continue;
        }
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let mut cut = state.cut.subscribe();
            // Behind a partition, the connection reaches the server only once it ends.
            let mut blackhole = state.blackhole.subscribe();
            tokio::select! {
                _ = blackhole.wait_for(|on| !*on) => {}
                _ = cut.changed() => return,
            }
            let upstream = state.upstream.load(Relaxed);
            let Ok(outbound) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            state.open.fetch_add(1, Relaxed);
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            // Either direction ending (EOF, error) or a cut ends the whole connection: both
            // sockets close when this task returns.
            tokio::select! {
                () = pipe(in_read, out_write, &state) => {}
                () = pipe(out_read, in_write, &state) => {}
                _ = cut.changed() => {}
            }
            state.open.fetch_sub(1, Relaxed);
        });
    }
}

/// Copies `from` to `to`, each chunk held back by the current delay from the moment it was
/// read, so a delay adds latency without cutting throughput.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, state: &State) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let due = Instant::now() + Duration::from_micros(state.delay_us.load(Relaxed));
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    let mut blackhole = state.blackhole.subscribe();
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if blackhole.wait_for(|on| !*on).await.is_err() {
                return;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    // The writer drains what was read before EOF; a failed write ends the reader at its next
    // chunk.
    tokio::join!(read, write);
}
