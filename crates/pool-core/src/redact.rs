//! [`redact_url`]: passwords hidden in connection strings, for errors, logs and config dumps.

/// `text` with every password in it replaced by `***`. Hides too much rather than too little.
///
/// - A URL (`scheme://...`): the user info's password, that is everything from the first `:`
///   before the last `@` to that `@`, so a password holding an unencoded `/`, `?`, `#` or `@`
///   is hidden whole; and the value of each query parameter whose name, percent-decoded,
///   contains `password` in any case (`?password=`, which sqlx accepts, `?sslpassword=`).
/// - Anything else (a libpq `key=value` string, even one with a `://` inside a value): the value
///   of each `...password = value` pair as libpq reads it, quoted in `'...'` (to the closing
///   quote not escaped by a backslash, or the end when none closes it) or running to a space not
///   escaped by a backslash.
///
/// When a URL with a port also has an `@` in its query, the host is hidden with the password.
///
/// # Examples
///
/// ```
/// use pool_core::redact_url;
///
/// assert_eq!(redact_url("postgres://app:s3cret@db/prod"), "postgres://app:***@db/prod");
/// assert_eq!(redact_url("redis://db?password=s3cret"), "redis://db?password=***");
/// assert_eq!(redact_url("host=db password=s3cret"), "host=db password=***");
/// ```
pub fn redact_url(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://").filter(|(s, _)| is_scheme(s)) else {
        return mask_password_pairs(text);
    };
    let delimiter = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (user, password, after) = match (rest.rfind('@'), rest.find(':')) {
        (Some(at), Some(colon)) if colon < at => (Some(&rest[..colon]), true, &rest[at + 1..]),
        (Some(at), _) if at < delimiter => (Some(&rest[..at]), false, &rest[at + 1..]),
        _ => (None, false, rest),
    };
    let host_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (host, tail) = after.split_at(host_end);
    let tail = redact_query(tail);
    match (user, password) {
        (Some(user), true) => format!("{scheme}://{user}:***@{host}{tail}"),
        (Some(user), false) => format!("{scheme}://{user}@{host}{tail}"),
        (None, _) => format!("{scheme}://{host}{tail}"),
    }
}

/// Whether `text` starts like a URL: a scheme (RFC 3986: a letter, then letters, digits, `+`,
/// `-`, `.`) followed by `://`.
pub fn is_url(text: &str) -> bool {
    text.split_once("://").is_some_and(|(s, _)| is_scheme(s))
}

fn is_scheme(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// `path?query#fragment` with the values of password parameters in `query` replaced by `***`.
fn redact_query(tail: &str) -> String {
    let Some((path, rest)) = tail.split_once('?') else { return tail.to_owned() };
    let (query, fragment) = match rest.find('#') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if names_a_password(name) => format!("{name}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}{fragment}", pairs.join("&"))
}

/// Whether a query parameter's name (as written, possibly percent-encoded) names a password.
fn names_a_password(name: &str) -> bool {
    let mut decoded = Vec::with_capacity(name.len());
    let mut bytes = name.bytes();
    while let Some(b) = bytes.next() {
        let hex = |b: Option<u8>| b.and_then(|b| char::from(b).to_digit(16));
        match b {
            b'%' => {
                let (hi, lo) = (bytes.next(), bytes.next());
                match (hex(hi), hex(lo)) {
                    // Two hex digits: one byte, at most 0xff.
                    (Some(h), Some(l)) => decoded.push((h * 16 + l) as u8),
                    _ => decoded.extend([Some(b'%'), hi, lo].into_iter().flatten()),
                }
            }
            b'+' => decoded.push(b' '),
            b => decoded.push(b),
        }
    }
    String::from_utf8_lossy(&decoded).to_ascii_lowercase().contains("password")
}

/// `s` with the value of each `password=value` pair (any case, spaces allowed around `=`)
/// replaced by `***`, the value read as libpq reads it ([`libpq_value_len`]).
///
/// Every `password` is looked at, even one inside a value already hidden, and overlapping
/// values are hidden as one: a `password='` inside another value, whose quote a naive scan would
/// take to close at the real password's opening quote, then hides that password too.
fn mask_password_pairs(s: &str) -> String {
    const KEY: &str = "password";
    // ASCII lowercasing keeps every byte offset.
    let lower = s.to_ascii_lowercase();
    // The byte ranges to hide, in order of their start.
    let mut hidden: Vec<(usize, usize)> = Vec::new();
    let mut from = 0;
    while let Some(found) = lower[from..].find(KEY) {
        let key_end = from + found + KEY.len();
        from = key_end;
        let Some(value) = s[key_end..].trim_start().strip_prefix('=') else { continue };
        let value = value.trim_start();
        let start = s.len() - value.len();
        let end = start + libpq_value_len(value);
        match hidden.last_mut() {
            Some((_, last_end)) if start <= *last_end => *last_end = (*last_end).max(end),
            _ => hidden.push((start, end)),
        }
    }
    let mut out = String::with_capacity(s.len());
    let mut shown = 0;
    for (start, end) in hidden {
        out.push_str(&s[shown..start]);
        out.push_str("***");
        shown = end;
    }
    out.push_str(&s[shown..]);
    out
}

/// The length in bytes of the libpq value that `value` starts with. As libpq's conninfo parser
/// reads it, a backslash takes the next character as it is, in quotes and out (`\'`, `\\`,
/// `\ `); a value in `'...'` runs to the closing quote that is not escaped, and any other to the
/// first space (ASCII, as C's `isspace`) that is not escaped. A quote that never closes, or a
/// trailing backslash, runs to the end.
fn libpq_value_len(value: &str) -> usize {
    let (quoted, body) = match value.strip_prefix('\'') {
        Some(body) => (true, body),
        None => (false, value),
    };
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            // The opening quote, the text, the closing quote.
            '\'' if quoted => return 1 + i + 1,
            ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r' if !quoted => return i,
            _ => {}
        }
    }
    value.len()
}

#[cfg(test)]
mod tests {
    use super::{is_url, redact_url};

    #[test]
    fn every_password_is_hidden_and_nothing_else() {
        for (text, shown) in [
            ("postgres://u:secret@h:5432/db", "postgres://u:***@h:5432/db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("postgres://h", "postgres://h"),
            ("redis://:p@h:6379/0", "redis://:***@h:6379/0"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            // Unencoded `/`, `?`, `#` or `@` in the user name or password: hidden whole.
            ("postgres://u:pa/ss@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p@ss@h:5432/db", "postgres://u:***@h:5432/db"),
            ("redis://:a?b#c@h:6379", "redis://:***@h:6379"),
            ("postgres://us/er:pw@h/db", "postgres://us/er:***@h/db"),
            // In the query, in any case, percent-encoded, and as part of a longer name.
            ("postgres://app@db/prod?password=s3cret", "postgres://app@db/prod?password=***"),
            (
                "postgres://app@db/prod?sslmode=disable&PassWord=s3cret&application_name=x",
                "postgres://app@db/prod?sslmode=disable&PassWord=***&application_name=x",
            ),
            ("postgres://db/prod?pass%77ord=s3cret#frag", "postgres://db/prod?pass%77ord=***#frag"),
            ("postgres://u:p@db/prod?password=s3cret", "postgres://u:***@db/prod?password=***"),
            ("postgres://db?sslpassword=s3cret", "postgres://db?sslpassword=***"),
            ("postgres://db/prod?user=app&port=5432", "postgres://db/prod?user=app&port=5432"),
            // An `@` in the query is not user info.
            ("postgres://h/db?application_name=a@b", "postgres://h/db?application_name=a@b"),
            // Not URLs: libpq's key=value form, even with a `://` in a value.
            (
                "host=db user=app password=hunter2 port=5432",
                "host=db user=app password=*** port=5432",
            ),
            ("host=db PASSWORD = 'a b' user=x", "host=db PASSWORD = *** user=x"),
            (
                "host=db password=hunter2 application_name=svc://api",
                "host=db password=*** application_name=svc://api",
            ),
            ("not a url", "not a url"),
            // libpq's escapes: in quotes and out, a backslash takes the next character (`\'`,
            // `\\`, `\ `), and a quoted value runs to the closing quote that is not escaped.
            (r"host=db password='ab\'cd ef' user=app", "host=db password=*** user=app"),
            (r"password='a\\' user=x", "password=*** user=x"),
            (r"password=ab\ cd user=x", "password=*** user=x"),
            (r"host=db sslpassword='k\'e y' user=x", "host=db sslpassword=*** user=x"),
            (r"host=db PASSWORD = 'a\'b c' user=x", "host=db PASSWORD = *** user=x"),
            (r"password=ab\", "password=***"),
            // No closing quote: everything after the `=` is hidden.
            ("password='unterminated user=x", "password=***"),
            (r"password='ends in an escaped quote\' user=x", "password=***"),
            // An unquoted value runs to a space, as libpq reads it: `&` and Unicode spaces are
            // part of it.
            ("host=db password=ab&cd user=x", "host=db password=*** user=x"),
            ("host=db password=ab\u{a0}cd user=x", "host=db password=*** user=x"),
            // `password=` inside another value, whose quote opens the real password's value.
            (
                "application_name=password=' password='secret word' port=1",
                "application_name=password=*** port=1",
            ),
        ] {
            assert_eq!(redact_url(text), shown, "{text}");
        }
    }

    #[test]
    fn a_url_starts_with_a_scheme() {
        assert!(is_url("postgres://h") && is_url("redis+tls://h"));
        assert!(!is_url("host=db application_name=svc://api") && !is_url("plain"));
    }
}
