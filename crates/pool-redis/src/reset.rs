//! [`SessionReset`]: what the pool sends on every return of an exclusive connection, so the next
//! user gets the session a fresh connection has: `RESET`, then what the connect set up, then a
//! `PING` whose reply proves fred still matches replies to commands.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use fred::clients::Client;
use fred::error::{Error, ErrorKind};
use fred::interfaces::ClientLike;
use fred::types::config::Config;
use fred::types::{CustomCommand, Value, Version};

/// The commands that reset one pool's exclusive connections, built once from the configuration
/// its connections open with.
///
/// The connect path (`ClientFactory`) configures, from the URL, only `AUTH` (with a password)
/// and `SELECT` (with a database): fred's protocol stays RESP2 and fred sends no `CLIENT SETNAME`
/// (`auto_client_setname` is off), so `RESET`'s RESP2 and empty name are already right. A test
/// below fails if that changes.
pub(crate) struct SessionReset {
    /// `AUTH [username] password`, when the URL has a password (fred sends `AUTH` only then).
    auth: Option<Vec<Value>>,
    /// The URL's database, when it is not 0 (the database `RESET` selects).
    database: Option<u8>,
}

/// One command of the reset and the reply it must get.
struct Step {
    name: &'static str,
    args: Vec<Value>,
    expect: Expect,
}

enum Expect {
    /// This simple or bulk string.
    Is(Cow<'static, str>),
    /// Any reply, an error included.
    Anything,
}

/// Why a reset failed.
pub(crate) enum Failure {
    /// The server does not know `RESET` (Redis older than 6.2).
    NoReset(Error),
    /// Anything else: an error reply, a reply out of step, a timeout, a closed socket.
    Other(Error),
}

impl SessionReset {
    pub(crate) fn new(config: &Config) -> Self {
        let auth = config.password.as_ref().map(|password| {
            let mut args: Vec<Value> = config.username.iter().map(|u| u.as_str().into()).collect();
            args.push(password.as_str().into());
            args
        });
        SessionReset { auth, database: config.database.filter(|&db| db != 0) }
    }

    /// Sends the reset in one pipeline (one round trip) and checks every reply.
    ///
    /// # Errors
    ///
    /// [`Failure::NoReset`] when the server has no `RESET`; [`Failure::Other`] for an error
    /// reply, a reply that is not the one its command gives (fred matched a reply to the wrong
    /// command: a command whose reply never came, or a frame nobody asked for, sits in its
    /// queue), or fred's error (a timeout, a closed socket).
    pub(crate) async fn run(&self, client: &Client) -> Result<(), Failure> {
        static NONCE: AtomicU64 = AtomicU64::new(0);
        let nonce = format!("pool-redis-reset-{}", NONCE.fetch_add(1, Relaxed));
        let steps = self.steps(client.server_version().as_ref(), nonce);
        let pipeline = client.pipeline();
        for step in &steps {
            let command = CustomCommand::new_static(step.name, None, false);
            pipeline.custom::<(), _>(command, step.args.clone()).await.map_err(Failure::Other)?;
        }
        check(&steps, pipeline.try_all::<Value>().await)?;
        // A `HELLO` sent through fred's own `hello()` switched fred's decoder; the server speaks
        // the configured protocol again since `RESET`, and nothing is in flight any more. This
        // reads fred's (doc-hidden) client state; `tests/it/redis.rs` pins the behaviour.
        client.inner().reset_protocol_version();
        Ok(())
    }

    fn steps(&self, version: Option<&Version>, nonce: String) -> Vec<Step> {
        let ok = || Expect::Is(Cow::Borrowed("OK"));
        let mut steps =
            vec![Step { name: "RESET", args: vec![], expect: Expect::Is("RESET".into()) }];
        if let Some(auth) = &self.auth {
            steps.push(Step { name: "AUTH", args: auth.clone(), expect: ok() });
        }
        if let Some(db) = self.database {
            steps.push(Step { name: "SELECT", args: vec![i64::from(db).into()], expect: ok() });
        }
        // Redis 7.0 and 7.1 have `CLIENT NO-EVICT` but their `RESET` leaves it on (7.2 clears
        // it, 6.2 has no such flag). When the version is unknown it is sent all the same. The
        // reply is not checked: an older server does not know the subcommand, and a user the
        // ACL denies it could not have turned it on (short of `AUTH` as another user).
        let v7_0 = Version::new(7, 0, 0);
        let v7_2 = Version::new(7, 2, 0);
        if version.is_none_or(|v| *v >= v7_0 && *v < v7_2) {
            let args = vec!["NO-EVICT".into(), "off".into()];
            steps.push(Step { name: "CLIENT", args, expect: Expect::Anything });
        }
        let args = vec![nonce.as_str().into()];
        steps.push(Step { name: "PING", args, expect: Expect::Is(nonce.into()) });
        steps
    }
}

/// Checks one reply per step, in order.
fn check(steps: &[Step], replies: Vec<Result<Value, Error>>) -> Result<(), Failure> {
    if replies.len() != steps.len() {
        // fred answers a pipeline that failed as a whole (a timeout, a closed socket) with one
        // error.
        return Err(Failure::Other(match replies.into_iter().next() {
            Some(Err(e)) => e,
            _ => Error::new(
                ErrorKind::Protocol,
                "the reset on return got the wrong number of replies",
            ),
        }));
    }
    for (step, reply) in steps.iter().zip(replies) {
        let Expect::Is(want) = &step.expect else { continue };
        match reply {
            Ok(value) if value.as_str().as_deref() == Some(want) => {}
            Ok(value) => {
                // The reply's kind only: a reply out of step may be anyone's data.
                return Err(Failure::Other(Error::new(
                    ErrorKind::Protocol,
                    format!(
                        "{} on return got a reply of kind {:?}, not its own: fred's replies are \
                         out of step with its commands",
                        step.name,
                        value.kind()
                    ),
                )));
            }
            Err(e) if step.name == "RESET" && e.details().contains("unknown command") => {
                return Err(Failure::NoReset(e));
            }
            Err(e) => {
                let details = format!("{} on return failed: {}", step.name, e.details());
                return Err(Failure::Other(Error::new(e.kind().clone(), details)));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoolSettings;
    use crate::connection::ClientFactory;

    /// The steps as the lines one would type into `redis-cli`.
    fn lines(reset: &SessionReset, version: Option<&str>) -> Vec<String> {
        let version = version.map(|v| Version::parse(v).unwrap());
        let steps = reset.steps(version.as_ref(), "n".to_owned());
        let arg = |v: &Value| v.as_str().unwrap().into_owned();
        steps
            .iter()
            .map(|s| {
                std::iter::once(s.name.to_owned())
                    .chain(s.args.iter().map(arg))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    }

    fn reset(url: &str) -> SessionReset {
        SessionReset::new(&Config::from_url(url).unwrap())
    }

    #[test]
    fn reset_then_what_the_url_configures_then_a_ping() {
        for (url, version, expected) in [
            ("redis://h", Some("7.2.4"), &["RESET", "PING n"][..]),
            ("redis://h/0", Some("7.4.0"), &["RESET", "PING n"]),
            ("redis://:pw@h/3", Some("8.0.0"), &["RESET", "AUTH pw", "SELECT 3", "PING n"]),
            ("redis://u:pw@h", Some("6.2.14"), &["RESET", "AUTH u pw", "PING n"]),
            ("redis://u@h", Some("6.2.0"), &["RESET", "PING n"]),
            (
                "redis://h/1",
                Some("7.0.15"),
                &["RESET", "SELECT 1", "CLIENT NO-EVICT off", "PING n"],
            ),
            ("redis://h", Some("7.1.0"), &["RESET", "CLIENT NO-EVICT off", "PING n"]),
            ("redis://h", None, &["RESET", "CLIENT NO-EVICT off", "PING n"]),
        ] {
            assert_eq!(lines(&reset(url), version), expected, "{url} on {version:?}");
        }
    }

    /// The reset restores what the connect sets up: if the factory ever switches fred to RESP3
    /// or lets it name its connections, the reset must send `HELLO 3` or `CLIENT SETNAME` too.
    #[test]
    fn the_connect_sets_up_nothing_the_reset_leaves_out() {
        let config = Config::from_url("redis://u:pw@h/2").unwrap();
        let factory = ClientFactory::new(config, &PoolSettings::default());
        assert_eq!(factory.config().version, fred::types::RespVersion::RESP2);
        assert!(!factory.connection_config().auto_client_setname);
        let (user, pw, db) =
            (&factory.config().username, &factory.config().password, factory.config().database);
        assert_eq!((user.as_deref(), pw.as_deref(), db), (Some("u"), Some("pw"), Some(2)));
    }

    fn steps() -> Vec<Step> {
        reset("redis://:pw@h/3").steps(Some(&Version::new(7, 2, 0)), "n".to_owned())
    }

    fn s(v: &str) -> Result<Value, Error> {
        Ok(Value::String(v.into()))
    }

    #[test]
    fn every_reply_must_be_its_commands_own() {
        assert!(check(&steps(), vec![s("RESET"), s("OK"), s("OK"), s("n")]).is_ok());
        for replies in [
            // One frame nobody asked for (a `MONITOR` line, a RESP3 push) came first.
            vec![s("+1700000000.0 [0 127.0.0.1:1] \"GET\" \"k\""), s("RESET"), s("OK"), s("OK")],
            // No reply to `RESET` (`CLIENT REPLY SKIP` skips it), and an earlier command whose
            // reply never came takes one: the replies shift by one.
            vec![s("OK"), s("OK"), s("n"), Err(Error::new(ErrorKind::Timeout, "timed out"))],
            vec![s("RESET"), Err(Error::new(ErrorKind::Auth, "WRONGPASS")), s("OK"), s("n")],
            vec![Err(Error::new(ErrorKind::Timeout, "Request timed out."))],
            vec![],
        ] {
            assert!(matches!(check(&steps(), replies), Err(Failure::Other(_))));
        }
        let unknown = Error::new(
            ErrorKind::Unknown,
            "ERR unknown command 'RESET', with args beginning with: ",
        );
        let replies = vec![Err(unknown), s("OK"), s("OK"), s("n")];
        assert!(matches!(check(&steps(), replies), Err(Failure::NoReset(_))));
    }

    #[test]
    fn the_no_evict_reply_is_not_checked() {
        let steps = reset("redis://h").steps(Some(&Version::new(7, 0, 15)), "n".to_owned());
        let unknown = Err(Error::new(ErrorKind::Unknown, "ERR unknown subcommand"));
        assert!(check(&steps, vec![s("RESET"), unknown, s("n")]).is_ok());
    }
}
