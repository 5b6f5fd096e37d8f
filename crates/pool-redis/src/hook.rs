//! What runs on every new connection of a pool: [`ConnectHook`], an async function given the
//! new connection's client, and the commands of `connect_commands`, parsed once.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use fred::clients::Client;
use fred::error::{Error, ErrorKind};
use fred::interfaces::ClientLike;
use fred::types::{CustomCommand, Value};

type HookFn =
    dyn Fn(Client) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send>> + Send + Sync;

/// An async function run on every new connection of a pool, with that connection's fred
/// client, before anyone uses it: to name it (`CLIENT SETNAME`), turn on `CLIENT TRACKING`, load
/// scripts... Set it with [`PoolSettings::on_connect`](crate::PoolSettings::on_connect).
///
/// It runs on each exclusive connection when it opens and again after every reset on return
/// (the reset's `RESET` undoes what it set), and on each shared client when it connects and after
/// every reconnect. An error fails the connect with that error (the engine retries with backoff;
/// a shared client's first connect fails [`RedisPool::connect`](crate::RedisPool::connect)), and
/// a reset whose hook fails closes the connection.
///
/// On a shared client, commands that callers sent while it reconnected may run before the hook
/// does: do not select a database there (the URL's database is selected by every connect before
/// any command). Do not keep the client past the call.
///
/// # Examples
///
/// ```
/// use pool_redis::fred::prelude::*;
/// use pool_redis::PoolSettings;
///
/// // Each connection names itself after this process, which the configuration cannot say.
/// let settings = PoolSettings::default().on_connect(|client| async move {
///     client.client_setname(format!("billing-{}", std::process::id())).await
/// });
/// ```
#[derive(Clone)]
pub struct ConnectHook(Arc<HookFn>);

impl ConnectHook {
    /// A hook that calls `f` with each new connection's client.
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn(Client) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        ConnectHook(Arc::new(move |client| Box::pin(f(client))))
    }

    pub(crate) async fn call(&self, client: &Client) -> Result<(), Error> {
        (self.0)(client.clone()).await.map_err(|e| {
            Error::new(e.kind().clone(), format!("the connect hook failed: {}", e.details()))
        })
    }
}

impl fmt::Debug for ConnectHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConnectHook")
    }
}

/// Two hooks are equal when they are the same function (clones of one hook).
impl PartialEq for ConnectHook {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// One command of `connect_commands`, split into words.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Command {
    /// Its position in `connect_commands`.
    pub(crate) index: usize,
    /// The command's name, upper-cased (`CLIENT`).
    pub(crate) name: String,
    /// The words after the name.
    pub(crate) args: Vec<Value>,
    /// The name and, for a container command, its subcommand (`CLIENT SETNAME`): how errors
    /// name the command without its arguments.
    pub(crate) label: String,
}

impl Command {
    /// Parses one line as `redis-cli` reads it: words separated by blanks, `"..."` (with `\"`,
    /// `\\`, `\n`, `\r`, `\t`) and `'...'` quoting a word that holds blanks.
    ///
    /// # Errors
    ///
    /// Why the line is not a command the pool can run on every connect (a blank line, an open
    /// quote, a command that would leave fred's replies out of step, `AUTH` or `SELECT`).
    pub(crate) fn parse(index: usize, line: &str) -> Result<Command, String> {
        let words = split(line)?;
        let Some((name, args)) = words.split_first() else {
            return Err("must be a command, not blank".to_owned());
        };
        let name = name.to_ascii_uppercase();
        let sub = args.first().map(|a| a.to_ascii_uppercase());
        if let Some(reason) = refusal(&name, sub.as_deref()) {
            return Err(reason.to_owned());
        }
        let label = match (&*name, &sub) {
            ("CLIENT" | "CONFIG" | "FUNCTION" | "SCRIPT" | "OBJECT" | "MEMORY", Some(sub)) => {
                format!("{name} {sub}")
            }
            _ => name.clone(),
        };
        let args = args.iter().map(|a| Value::from(a.as_str())).collect();
        Ok(Command { index, name, args, label })
    }

    pub(crate) fn custom(&self) -> CustomCommand {
        CustomCommand::new(self.name.clone(), None, false)
    }

    /// fred's error of this command, saying which command it was.
    pub(crate) fn failed(&self, e: &Error) -> Error {
        Error::new(
            e.kind().clone(),
            format!("connect_commands[{}] ({}) failed: {}", self.index, self.label, e.details()),
        )
    }
}

/// A line of `connect_commands` as an error may show it: whole, unless its command can carry a
/// password (`AUTH`, `HELLO ... AUTH`, `ACL SETUSER`, `CONFIG SET requirepass`, `MIGRATE`), then
/// its first word only.
pub(crate) fn shown(line: &str) -> String {
    let first = line.split_whitespace().next().unwrap_or_default();
    let first = first.trim_matches(['"', '\'']).to_ascii_uppercase();
    if matches!(&*first, "AUTH" | "HELLO" | "ACL" | "CONFIG" | "MIGRATE") {
        format!("{first} ***")
    } else {
        format!("{line:?}")
    }
}

/// Why a command may not be one of `connect_commands`, `None` when it may.
fn refusal(name: &str, sub: Option<&str>) -> Option<&'static str> {
    Some(match (name, sub) {
        ("AUTH", _) => "set the password in the URL, password_file or a credential provider",
        ("SELECT", _) => {
            "put the database in the URL (redis://host/2, redis+unix:///path?db=2): every connect \
             and reconnect selects it before any command"
        }
        ("HELLO", _) => "fred must keep the protocol it connected with",
        ("SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "MONITOR", _) | ("CLIENT", Some("REPLY")) => {
            "it would leave fred's replies out of step with its commands"
        }
        ("MULTI" | "EXEC" | "DISCARD" | "WATCH" | "RESET" | "QUIT" | "SYNC" | "PSYNC", _) => {
            "the pool runs these itself, or they end the session"
        }
        (
            "BLPOP" | "BRPOP" | "BLMOVE" | "BRPOPLPUSH" | "BLMPOP" | "BZPOPMIN" | "BZPOPMAX"
            | "BZMPOP" | "WAIT" | "WAITAOF",
            _,
        ) => "a blocking command would hold up every connect",
        _ => return None,
    })
}

/// The words of a line, with `redis-cli`'s quoting.
fn split(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&first) = chars.peek() else { return Ok(words) };
        let mut word = String::new();
        if first == '"' || first == '\'' {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("has an unclosed {first} quote")),
                    Some(c) if c == first => break,
                    Some('\\') if first == '"' => match chars.next() {
                        Some('n') => word.push('\n'),
                        Some('r') => word.push('\r'),
                        Some('t') => word.push('\t'),
                        Some(c) => word.push(c),
                        None => return Err("ends with a lone \\".to_owned()),
                    },
                    Some(c) => word.push(c),
                }
            }
            if chars.peek().is_some_and(|c| !c.is_whitespace()) {
                return Err("has a closing quote followed by more than a blank".to_owned());
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                word.push(c);
            }
        }
        words.push(word);
    }
}

/// What runs on each new connection of one pool: its commands (one round trip), then its hook.
#[derive(Debug, Clone, Default)]
pub(crate) struct OnConnect {
    pub(crate) commands: Vec<Command>,
    pub(crate) hook: Option<ConnectHook>,
}

impl OnConnect {
    /// Parses `connect_commands` and takes the hook.
    ///
    /// # Errors
    ///
    /// The first command refused, its index and why.
    pub(crate) fn new(
        commands: &[String],
        hook: Option<ConnectHook>,
    ) -> Result<Self, (usize, String)> {
        let commands = commands
            .iter()
            .enumerate()
            .map(|(i, line)| Command::parse(i, line).map_err(|reason| (i, reason)))
            .collect::<Result<_, _>>()?;
        Ok(OnConnect { commands, hook })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.commands.is_empty() && self.hook.is_none()
    }

    /// Runs the commands (in one pipeline when there are several) and then the hook on a new
    /// connection.
    ///
    /// # Errors
    ///
    /// The first command's error reply or fred's error, naming the command; then the hook's.
    pub(crate) async fn run(&self, client: &Client) -> Result<(), Error> {
        match &self.commands[..] {
            [] => {}
            [only] => {
                client
                    .custom::<Value, _>(only.custom(), only.args.clone())
                    .await
                    .map_err(|e| only.failed(&e))?;
            }
            commands => {
                let pipeline = client.pipeline();
                for command in commands {
                    pipeline.custom::<(), _>(command.custom(), command.args.clone()).await?;
                }
                let replies = pipeline.try_all::<Value>().await;
                if replies.len() != commands.len() {
                    let e = replies.into_iter().find_map(Result::err).unwrap_or_else(|| {
                        Error::new(ErrorKind::Protocol, "wrong number of replies")
                    });
                    return Err(commands[0].failed(&e));
                }
                for (command, reply) in commands.iter().zip(replies) {
                    reply.map_err(|e| command.failed(&e))?;
                }
            }
        }
        if let Some(hook) = &self.hook {
            hook.call(client).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(c: &Command) -> Vec<String> {
        std::iter::once(c.name.clone())
            .chain(c.args.iter().map(|v| v.as_str().unwrap().into_owned()))
            .collect()
    }

    #[test]
    fn commands_are_read_as_redis_cli_reads_them() {
        for (line, expected, label) in [
            ("CLIENT SETNAME app", &["CLIENT", "SETNAME", "app"][..], "CLIENT SETNAME"),
            ("  client   setname  app ", &["CLIENT", "setname", "app"], "CLIENT SETNAME"),
            (r#"SET "a key" 'it is' "x\"y\n""#, &["SET", "a key", "it is", "x\"y\n"], "SET"),
            ("CLIENT TRACKING on", &["CLIENT", "TRACKING", "on"], "CLIENT TRACKING"),
            ("PING", &["PING"], "PING"),
        ] {
            let c = Command::parse(3, line).unwrap();
            assert_eq!(words(&c), expected, "{line}");
            assert_eq!((c.label.as_str(), c.index), (label, 3), "{line}");
        }
    }

    #[test]
    fn commands_that_break_the_connection_or_hold_secrets_are_refused() {
        for (line, says) in [
            ("", "not blank"),
            ("   ", "not blank"),
            ("SET \"a", "unclosed \" quote"),
            ("SET 'a'b", "closing quote"),
            ("auth hunter2", "password_file"),
            ("select 2", "in the URL"),
            ("HELLO 3", "protocol"),
            ("SUBSCRIBE news", "out of step"),
            ("client reply off", "out of step"),
            ("MULTI", "runs these itself"),
            ("BLPOP q 0", "blocking"),
        ] {
            let err = Command::parse(0, line).unwrap_err();
            assert!(err.contains(says), "{line}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        assert_eq!(shown("auth hunter2"), "AUTH ***");
        assert_eq!(shown("'CONFIG' SET requirepass hunter2"), "CONFIG ***");
        assert_eq!(shown("CLIENT SETNAME app"), "\"CLIENT SETNAME app\"");
    }

    #[test]
    fn errors_name_the_command_without_its_arguments() {
        let c = Command::parse(1, "CLIENT SETNAME 'has blanks'").unwrap();
        let e = c.failed(&Error::new(ErrorKind::Unknown, "ERR Client names cannot contain spaces"));
        assert_eq!(
            e.details(),
            "connect_commands[1] (CLIENT SETNAME) failed: ERR Client names cannot contain spaces"
        );
    }
}
