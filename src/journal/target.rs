//! [`JournalTarget`]: where a journal is, as `--journal` names it.
//!
//! A URL starting `postgres://` or `postgresql://` is a PostgreSQL database; anything else is
//! a file path. A URL's password is a secret: [`Display`](std::fmt::Display) and
//! [`Debug`](std::fmt::Debug) show `***` in its place, and no error built from a target
//! carries it.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::JournalError;

/// Where a journal is: a SQLite file or a PostgreSQL database.
#[derive(Clone, PartialEq, Eq)]
pub enum JournalTarget {
    /// A SQLite file (the embedded default).
    File(PathBuf),
    /// A PostgreSQL database (shared by the nodes of a cluster).
    Postgres(PgUrl),
}

/// A PostgreSQL connection URL. It holds a secret (the password): it is shown only redacted,
/// and compared as a whole.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl(String);

impl PgUrl {
    /// Checks `url` (a `postgres://` or `postgresql://` URL that the client accepts). The
    /// error names what is wrong without repeating the URL's password.
    pub fn parse(url: &str) -> Result<Self, JournalError> {
        let parsed = Self(url.to_owned());
        parsed.config()?;
        Ok(parsed)
    }

    /// The URL itself, password included: for the client only, never for a message.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The client's configuration.
    pub(crate) fn config(&self) -> Result<postgres::Config, JournalError> {
        self.0
            .parse::<postgres::Config>()
            .map_err(|e| JournalError::Postgres {
                message: format!(
                    "{self} is not a PostgreSQL URL the client accepts: {}",
                    super::pg::scrub(&super::pg::pg_message(&e), password(&self.0).as_deref())
                ),
            })
    }
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({:?})", redact(&self.0))
    }
}

impl JournalTarget {
    /// Reads `--journal`'s text: a PostgreSQL URL (checked), or a path.
    pub fn parse(text: &str) -> Result<Self, JournalError> {
        let lower = text.get(..13).unwrap_or(text).to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            PgUrl::parse(text).map(Self::Postgres)
        } else {
            Ok(Self::File(PathBuf::from(text)))
        }
    }

    /// The file, for a SQLite journal.
    pub fn file(&self) -> Option<&std::path::Path> {
        match self {
            Self::File(p) => Some(p),
            Self::Postgres(_) => None,
        }
    }
}

impl FromStr for JournalTarget {
    type Err = JournalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for JournalTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => p.display().fmt(f),
            Self::Postgres(url) => url.fmt(f),
        }
    }
}

impl fmt::Debug for JournalTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => f.debug_tuple("File").field(p).finish(),
            Self::Postgres(url) => f.debug_tuple("Postgres").field(url).finish(),
        }
    }
}

/// The password in `url`'s user information, as written.
fn password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    userinfo.split_once(':').map(|(_, p)| p.to_owned())
}

/// `url` with its password (in the user information, or as a `password=` parameter) replaced
/// by `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***{host}"),
                None => authority.to_owned(),
            }
        }
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                        format!("{key}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}
