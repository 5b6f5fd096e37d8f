//! Free TCP ports on 127.0.0.1 for throwaway servers.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, PoisonError};

/// Ports already handed out by this process, so that parallel tests never share one.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// The port is found by binding `127.0.0.1:0` and reading the port the kernel chose.
/// A port is never returned twice by one process. Another process may still take it
/// before the caller binds it, so the launchers retry on a new port when a server
/// fails to bind.
///
/// # Panics
///
/// Panics if no socket can be bound on 127.0.0.1 at all.
pub fn free_port() -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("cannot bind a TCP socket on 127.0.0.1");
        let port = listener.local_addr().expect("bound socket has an address").port();
        if handed_out.insert(port) {
            return port;
        }
    }
}
