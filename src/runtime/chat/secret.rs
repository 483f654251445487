//! API keys, which must never reach a log line, a record or an error message.
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

#[cfg(test)]
mod tests {
    use super::*;

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
