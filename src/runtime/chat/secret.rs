//! API keys and URL credentials, which must never reach a log line, a record or an error
//! message.
//!
//! [`ApiKey`] holds the key and prints as `<redacted>` through both `Debug` and `Display`, so a
//! `?config` or `%key` in a tracing call, a derived `Debug` on a containing struct, or a panic
//! message cannot leak it. It can be deserialised (from an agent type's profile) but not
//! serialised. The one way to read it is [`ApiKey::expose`], which the client calls to build the
//! `Authorization` header (itself marked sensitive, so the HTTP stack does not print it either).

use std::fmt;

use serde::{Deserialize, Deserializer};

use super::error::ChatError;

/// A bearer token for a chat endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key taken from a profile or elsewhere. Fails on an empty key or one that cannot
    /// be sent in an HTTP header (control characters, non-ASCII), without quoting it.
    pub fn new(key: impl Into<String>) -> Result<Self, ChatError> {
        let key = key.into();
        let key = key.trim().to_owned();
        if key.is_empty() {
            return Err(ChatError::Config("the API key is empty".into()));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ChatError::Config(
                "the API key has characters an HTTP header cannot carry".into(),
            ));
        }
        Ok(Self(key))
    }

    /// Reads the key from the environment variable `var`. `Ok(None)` when it is unset or empty,
    /// so a caller can fall back to a profile; an error when it is set but unusable.
    pub fn from_env(var: &str) -> Result<Option<Self>, ChatError> {
        match std::env::var(var) {
            Ok(v) if v.trim().is_empty() => Ok(None),
            Ok(v) => Self::new(v).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(ChatError::Config(format!(
                "the API key in ${var} is not valid Unicode"
            ))),
        }
    }

    /// The key itself. Only for building the request header: never log or store what this
    /// returns.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for ApiKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::new(raw).map_err(serde::de::Error::custom)
    }
}

/// The user and password of an endpoint URL (`http://user:pass@host/v1`), taken out of the URL
/// so that no URL baton prints, logs or sends carries them; sent as HTTP basic authentication
/// instead. Prints as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct UrlCredentials {
    /// The user, percent-decoded.
    user: String,
    /// The password, percent-decoded, when the URL has one.
    password: Option<String>,
}

impl UrlCredentials {
    /// Takes the credentials out of `url`, leaving it without them; `None` when it has none.
    pub fn take(url: &mut reqwest::Url) -> Option<Self> {
        if url.username().is_empty() && url.password().is_none() {
            return None;
        }
        let credentials = Self {
            user: percent_decode(url.username()),
            password: url.password().map(percent_decode),
        };
        // Only fails for URLs that cannot have credentials, which these just had.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        Some(credentials)
    }

    /// The user and the password. Only for building the request header (which reqwest marks
    /// sensitive): never log or store what this returns.
    pub fn expose(&self) -> (&str, Option<&str>) {
        (&self.user, self.password.as_deref())
    }
}

impl fmt::Debug for UrlCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UrlCredentials(<redacted>)")
    }
}

/// `%XX` escapes decoded; invalid UTF-8 replaced.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `text` with the credentials of any URL in it (`scheme://user:pass@host`) replaced by `***`
/// and the values of its query (`?key=...`, where services put API keys) by `REDACTED`, for
/// printing a URL that came from the user or from an error: works on text that does not parse
/// as a URL too.
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rfind('@') {
            Some(user_end) => {
                out.push_str("***");
                out.push_str(&authority[user_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority_end..];
        // The path, then the query up to a fragment or the URL's end.
        let url_end = rest.find(ends_url).unwrap_or(rest.len());
        let (url, after) = rest.split_at(url_end);
        match url.split_once('?') {
            Some((path, query)) => {
                let (query, fragment) = match query.find('#') {
                    Some(f) => query.split_at(f),
                    None => (query, ""),
                };
                out.push_str(path);
                out.push('?');
                out.push_str(&redact_query(query));
                out.push_str(fragment);
            }
            None => out.push_str(url),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Where a URL quoted in text ends: whitespace, or a quote or bracket around it.
fn ends_url(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>')
}

/// A query's values replaced by `REDACTED` (its names kept: they say what was sent); a bare
/// part with no `=` may itself be a key, and is replaced whole.
fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|part| match part.split_once('=') {
            Some((name, _)) => format!("{name}=REDACTED"),
            None if part.is_empty() => String::new(),
            None => "REDACTED".to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url_decoded_and_never_print() {
        let mut url = reqwest::Url::parse("http://bob:p%40ss%20word@127.0.0.1:8080/v1").unwrap();
        let c = UrlCredentials::take(&mut url).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/v1");
        assert_eq!(c.expose(), ("bob", Some("p@ss word")));
        assert!(!format!("{c:?}").contains("bob"));
        let mut plain = reqwest::Url::parse("http://127.0.0.1/v1").unwrap();
        assert_eq!(UrlCredentials::take(&mut plain), None);
    }

    #[test]
    fn urls_in_any_text_lose_their_credentials() {
        assert_eq!(
            redact_url("cannot reach http://user:pass@host:8080/v1 (refused)"),
            "cannot reach http://***@host:8080/v1 (refused)"
        );
        assert_eq!(
            redact_url("https://a:b@c@d/x?y"),
            "https://***@d/x?REDACTED"
        );
        assert_eq!(redact_url("http://host/v1"), "http://host/v1");
        assert_eq!(redact_url("no url: at@all"), "no url: at@all");
        assert_eq!(redact_url("x://"), "x://");
    }

    #[test]
    fn query_values_in_any_text_are_redacted_and_their_names_kept() {
        assert_eq!(
            redact_url("GET http://h:1/v1/models?key=s3cret&x=&y (refused)"),
            "GET http://h:1/v1/models?key=REDACTED&x=REDACTED&REDACTED (refused)"
        );
        assert_eq!(
            redact_url("base URL \"http://h/v1?api-key=s3cret#top\": bad"),
            "base URL \"http://h/v1?api-key=REDACTED#top\": bad"
        );
        assert_eq!(redact_url("plain? text=1"), "plain? text=1");
    }

    #[test]
    fn debug_and_display_never_show_the_key() {
        let key = ApiKey::new("sk-very-secret-123").unwrap();
        for shown in [
            format!("{key:?}"),
            format!("{key}"),
            format!("{:?}", Some(&key)),
        ] {
            assert!(!shown.contains("secret"), "{shown}");
        }
        assert_eq!(key.expose(), "sk-very-secret-123");
    }

    #[test]
    fn errors_about_a_bad_key_do_not_quote_it() {
        let err = ApiKey::new("sk-bad\nsecret").unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
        assert!(ApiKey::new("   ").is_err());
    }

    #[test]
    fn a_profile_key_deserialises_and_is_validated() {
        let key: ApiKey = serde_json::from_str(r#""sk-abc""#).unwrap();
        assert_eq!(key.expose(), "sk-abc");
        assert!(serde_json::from_str::<ApiKey>(r#""""#).is_err());
    }

    #[test]
    fn an_unset_environment_variable_is_no_key() {
        assert_eq!(
            ApiKey::from_env("BATON_TEST_SURELY_UNSET_VARIABLE").unwrap(),
            None
        );
    }
}
