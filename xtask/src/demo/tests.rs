//! Tests of the demo's start-up: finding the built binary, and the wait for the server's health
//! route, against a loopback stand-in for the server.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use super::*;

/// A stand-in for the admin server on a free loopback port, answering its requests one per
/// connection with `answers` in turn (the last one again once they run out); returns its
/// address and the count of requests it has read.
fn stand_in(answers: &[(u16, &str)]) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let answers: Vec<(u16, String)> = answers.iter().map(|(s, b)| (*s, (*b).to_owned())).collect();
    let asked = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&asked);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let n = count.fetch_add(1, SeqCst);
            let (status, body) = &answers[n.min(answers.len() - 1)];
            let _ = write!(
                stream,
                "HTTP/1.1 {status} -\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, asked)
}

/// A child process that runs until it is killed, standing for a server that has not exited.
struct Running(Child);

impl Running {
    fn start() -> Running {
        Running(Command::new("sleep").arg("600").spawn().unwrap())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const SICK: &str = r#"{"status":"unhealthy","pools":{
    "postgresql:main":{"healthy":true,"latency_seconds":0.001,"error":null},
    "postgresql:main-replica":{"healthy":false,"latency_seconds":0.001,"error":"replica banned"}}}"#;

#[test]
fn the_wait_ends_when_the_health_route_answers_200() {
    let (addr, asked) = stand_in(&[(503, SICK), (503, SICK), (200, "{}")]);
    let mut server = Running::start();
    let stop = AtomicBool::new(false);
    let ready = wait_until_ready(&mut server.0, &addr, "t", READY_WITHIN, &stop).unwrap();
    assert_eq!(ready, Ready::Answered);
    assert_eq!(asked.load(SeqCst), 3, "it asked until the 200 and no more");
}

#[test]
fn a_server_that_stays_unhealthy_fails_naming_the_unhealthy_pools() {
    let (addr, _) = stand_in(&[(503, SICK)]);
    let mut server = Running::start();
    let stop = AtomicBool::new(false);
    let err = wait_until_ready(&mut server.0, &addr, "t", Duration::ZERO, &stop).unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains(&format!("http://{addr}{HEALTH} did not answer 200")), "{message}");
    assert!(
        message.contains("it answered 503: unhealthy: postgresql:main-replica (replica banned)"),
        "{message}"
    );
    assert!(!message.contains("postgresql:main ("), "a healthy pool is not named: {message}");
}

#[test]
fn a_refused_token_fails_at_once() {
    let (addr, asked) = stand_in(&[(401, "{}")]);
    let mut server = Running::start();
    let stop = AtomicBool::new(false);
    let err = wait_until_ready(&mut server.0, &addr, "t", READY_WITHIN, &stop).unwrap_err();
    assert!(format!("{err:#}").contains("refused the demo's token (401)"), "{err:#}");
    assert_eq!(asked.load(SeqCst), 1);
}

#[test]
fn a_server_that_exits_fails_the_wait_with_its_status() {
    // Nothing listens here: only the server's exit can end the wait before its bound.
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let mut server = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
    let stop = AtomicBool::new(false);
    let err = wait_until_ready(&mut server, &addr, "t", READY_WITHIN, &stop).unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("the admin server exited (exit status: 3)"), "{message}");
}

#[test]
fn ctrl_c_ends_the_wait() {
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let mut server = Running::start();
    let stop = AtomicBool::new(true);
    let ready = wait_until_ready(&mut server.0, &addr, "t", READY_WITHIN, &stop).unwrap();
    assert_eq!(ready, Ready::Stopped);
}

#[test]
fn an_answer_is_read_as_a_status_and_a_body() {
    let answer = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{}";
    assert_eq!(parse_response(answer), Some((503, "{}".to_owned())));
    assert_eq!(parse_response("SSH-2.0-OpenSSH_9.2\r\n"), None);
    assert_eq!(unhealthy("upstream gone\n"), "upstream gone");
}

#[test]
fn the_built_binary_is_found_in_cargos_messages() {
    let messages = r#"{"reason":"compiler-artifact","target":{"name":"pool_admin","kind":["lib"]},"executable":null}
{"reason":"compiler-artifact","target":{"name":"pool-admin","kind":["bin"]},"executable":"/w/target/debug/pool-admin"}
{"reason":"build-finished","success":true}"#;
    assert_eq!(executable(messages), Some(PathBuf::from("/w/target/debug/pool-admin")));
    let without = messages.lines().filter(|l| !l.contains("\"bin\"")).collect::<Vec<_>>();
    assert_eq!(executable(&without.join("\n")), None);
}
