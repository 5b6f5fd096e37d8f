//! The servers one pool may connect to: libpq's multi-host URLs (`postgres://a:5432,b:5433/db`)
//! and their `target_session_attrs`, split into what sqlx parses and the hosts to try; and
//! [`Candidates`], which remembers the last writable one so that a connect tries it first.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Which session a connect accepts: libpq's `target_session_attrs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// The first server that accepts the connection (`any`, libpq's default).
    Any,
    /// Only a server that accepts writes (`read-write`, `primary`): not in recovery, and
    /// `transaction_read_only` off.
    ReadWrite,
}

/// A URL split for sqlx, which reads one host: the URL with only its first host and without
/// `target_session_attrs`, every host with its port (`None`: the default), and the target asked.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Split {
    pub(crate) url: String,
    pub(crate) hosts: Vec<(String, Option<u16>)>,
    pub(crate) target: Option<Target>,
}

/// Splits a `postgres://` URL that names several hosts (`h1:p1,h2:p2`) or carries
/// `target_session_attrs`; `Ok(None)` for a URL sqlx reads as it is.
///
/// # Errors
///
/// Why the hosts or the target cannot be read (an empty host, a bad port, a target other than
/// `any`, `read-write` or `primary`), in words that hold no part of the URL.
pub(crate) fn split(url: &str) -> Result<Option<Split>, String> {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return Ok(None) };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, hostlist) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    let mut target = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("target_session_attrs", value)) => {
                target = Some(match value {
                    "any" => Target::Any,
                    "read-write" | "primary" => Target::ReadWrite,
                    other => {
                        return Err(format!(
                            "target_session_attrs={other} is not supported: use any, read-write \
                             or primary"
                        ));
                    }
                });
            }
            _ => kept.push(pair),
        }
    }
    if !hostlist.contains(',') && target.is_none() {
        return Ok(None);
    }
    let hosts = if hostlist.contains(',') {
        hostlist.split(',').map(host_port).collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    let first = hostlist.split(',').next().unwrap_or_default();
    let mut single = String::with_capacity(url.len());
    single.push_str(&url[..scheme_end]);
    if let Some(userinfo) = userinfo {
        single.push_str(userinfo);
        single.push('@');
    }
    single.push_str(first);
    single.push_str(path);
    if !kept.is_empty() {
        single.push('?');
        single.push_str(&kept.join("&"));
    }
    Ok(Some(Split { url: single, hosts, target }))
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn host_port(text: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (host, after) =
            v6.split_once(']').ok_or_else(|| "an IPv6 host lacks its closing ]".to_owned())?;
        (host, after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(
            "a URL with several hosts names each of them (an empty host in the list)".into()
        );
    }
    let port = port
        .map(|p| {
            p.parse::<u16>().map_err(|_| format!("invalid port number {p:?} in the host list"))
        })
        .transpose()?;
    Ok((host.to_owned(), port))
}

/// The servers a pool's connects try, and which was writable last.
#[derive(Debug)]
pub(crate) struct Candidates {
    /// `(host, port)`, in the order given; empty: the connect options' own server only.
    pub(crate) hosts: Vec<(String, u16)>,
    pub(crate) target: Target,
    /// The candidate a connect tries first: the last one found writable, or (after a connect
    /// cut off by its timeout) the one after the one it tried.
    preferred: AtomicUsize,
}

impl Candidates {
    pub(crate) fn new(hosts: Vec<(String, u16)>, target: Target) -> Self {
        Candidates { hosts, target, preferred: AtomicUsize::new(0) }
    }

    /// Whether a connect goes straight to the options' own server, with no check.
    pub(crate) fn is_plain(&self) -> bool {
        self.hosts.len() <= 1 && self.target == Target::Any
    }

    /// How many servers a connect may try.
    pub(crate) fn len(&self) -> usize {
        self.hosts.len().max(1)
    }

    /// Server `i`, `None` for the options' own.
    pub(crate) fn host(&self, i: usize) -> Option<&(String, u16)> {
        self.hosts.get(i)
    }

    /// Where a connect starts; the next connect starts one further on unless this one
    /// [finds](Self::found) a server, so a server that never answers (a frozen primary) is
    /// not tried first for ever.
    pub(crate) fn start(&self) -> usize {
        let n = self.len();
        let start = self.preferred.load(Relaxed) % n;
        self.preferred.store((start + 1) % n, Relaxed);
        start
    }

    /// Server `i` accepted the session: connects try it first.
    pub(crate) fn found(&self, i: usize) {
        self.preferred.store(i, Relaxed);
    }
}

/// Why a server that accepted a connection is not writable, or `None` when it is: the check
/// of libpq's `target_session_attrs=read-write`, plus `pg_is_in_recovery()`.
pub(crate) async fn not_writable(
    conn: &mut sqlx::postgres::PgConnection,
) -> Result<Option<&'static str>, sqlx::Error> {
    let (recovery, read_only): (bool, String) = sqlx::query_as(
        "SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.current_setting('transaction_read_only')",
    )
    .fetch_one(conn)
    .await?;
    Ok(if recovery {
        Some("read-only: a standby in recovery")
    } else if read_only == "on" {
        Some("read-only: transaction_read_only is on")
    } else {
        None
    })
}

#[cfg(test)]
mod tests {
    use super::{Split, Target, split};

    #[test]
    fn several_hosts_and_the_target_are_split_off_for_sqlx() {
        let s = |url| split(url).unwrap();
        assert_eq!(s("postgres://u:pw@h/db"), None, "one host: as it is");
        assert_eq!(s("postgres:///db?host=/run/postgresql"), None);
        assert_eq!(
            s(
                "postgres://u:pw@a:5432,b,[::1]:6/db?sslmode=require&target_session_attrs=read-write"
            ),
            Some(Split {
                url: "postgres://u:pw@a:5432/db?sslmode=require".to_owned(),
                hosts: vec![
                    ("a".to_owned(), Some(5432)),
                    ("b".to_owned(), None),
                    ("::1".to_owned(), Some(6)),
                ],
                target: Some(Target::ReadWrite),
            })
        );
        assert_eq!(
            s("postgresql://h?target_session_attrs=primary"),
            Some(Split {
                url: "postgresql://h".to_owned(),
                hosts: vec![],
                target: Some(Target::ReadWrite)
            })
        );
        for (url, says) in [
            ("postgres://a,,b/db", "empty host"),
            ("postgres://a:x,b/db", "invalid port"),
            ("postgres://a,b/db?target_session_attrs=standby", "not supported"),
        ] {
            let err = split(url).unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
        }
    }
}
