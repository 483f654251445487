//! [`ClusterError`]: what the cluster's SQL and loops fail with.

use thiserror::Error;

/// Errors of the cluster.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// The database URL does not parse (its text is not repeated: it may hold a password).
    #[error("the database URL is not valid: {0}")]
    Url(String),
    /// A statement or the connection failed.
    #[error("postgres: {0}")]
    Postgres(#[source] postgres::Error),
    /// This node's row is gone: another node adopted its work. Nothing may be written with its
    /// epoch any more.
    #[error("this node has been fenced (its epoch {0} is no longer in baton_nodes)")]
    Fenced(super::Epoch),
    /// The journal failed (adoption).
    #[error("journal: {0}")]
    Journal(#[source] crate::journal::JournalError),
    /// The supervisor would not take adopted work (it is shutting down).
    #[error("supervisor: {0}")]
    Supervisor(#[source] crate::supervisor::SupervisorError),
    /// An event's payload could not be encoded (nothing was written).
    #[error("cannot encode an event: {0}")]
    Encode(#[from] serde_json::Error),
    /// A blocking database call could not run (its thread panicked or the runtime stopped).
    #[error("a database call could not finish: {0}")]
    Task(String),
}

impl ClusterError {
    /// A URL parse error, without the URL.
    pub(crate) fn url(e: postgres::Error) -> Self {
        // postgres' parse errors name the bad part, never the whole string.
        Self::Url(e.to_string())
    }
}

impl From<postgres::Error> for ClusterError {
    fn from(e: postgres::Error) -> Self {
        Self::Postgres(e)
    }
}
