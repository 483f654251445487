//! Connections to the cluster's database: one a loop owns ([`Conn`]: a session-level advisory lock
//! and a `LISTEN` belong to their connection), and a small [`Pool`] the HTTP handlers share.
//! Every call runs on a blocking thread, as the synchronous client needs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::ClusterError;

/// How long a cluster connection may sit inside a transaction before the server ends it, in
/// milliseconds: the journal writer's bound (3 s), for the same reason.
const IDLE_IN_TRANSACTION_MS: u64 = 3_000;

/// Opens a connection of its own (each loop has one: a session-level advisory lock and a
/// `LISTEN` belong to their connection). The connect attempt is bounded by `timeout`, and TCP
/// keepalives notice a peer that went away.
pub fn connect(url: &str, timeout: Duration) -> Result<postgres::Client, ClusterError> {
    connect_with(url, timeout, None)
}

/// [`connect`], and with `idle` the server ends the session once it has been idle that long
/// (`idle_session_timeout`): what frees the sweeper's lock when its node is stopped or cut off
/// while its connection stays open.
fn connect_with(
    url: &str,
    timeout: Duration,
    idle: Option<Duration>,
) -> Result<postgres::Client, ClusterError> {
    let mut config: postgres::Config = url.parse().map_err(ClusterError::url)?;
    config
        .connect_timeout(timeout.max(Duration::from_millis(100)))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .application_name("baton-cluster");
    let options = node_options(config.get_options(), idle);
    config.options(&options);
    config
        .connect(postgres::NoTls)
        .map_err(ClusterError::Postgres)
}

/// The server options a node's connection runs with: the URL's own (a `search_path`, say),
/// then the end of idle transactions after [`IDLE_IN_TRANSACTION_MS`] (a node stopped inside a
/// claim or a submission must not hold its row lock, which adoption waits for, or the events
/// lock, which every node waits for), and with `idle` the end of the session after that long
/// idle.
fn node_options(own: Option<&str>, idle: Option<Duration>) -> String {
    let mut options = own.map(|o| format!("{o} ")).unwrap_or_default();
    options.push_str(&format!(
        "-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"
    ));
    if let Some(idle) = idle {
        options.push_str(&format!(
            " -c idle_session_timeout={}",
            idle.as_millis().max(1)
        ));
    }
    options
}

/// A connection a loop owns, (re)opened on demand; each call runs on a blocking thread, as the
/// synchronous client needs. A connection that failed is dropped and opened again at the next
/// call. A call while the previous one still runs (a stalled network) fails at once rather than
/// queueing behind it.
#[derive(Clone)]
pub(crate) struct Conn {
    /// The database.
    url: Arc<str>,
    /// The connection, when open.
    client: Arc<Clients<Option<postgres::Client>>>,
    /// How long connecting may take.
    timeout: Duration,
    /// The server ends the session after this long idle (see [`connect_with`]).
    idle: Option<Duration>,
}

impl Conn {
    /// A connection to `url`, opened at the first call.
    pub(crate) fn new(url: &str, timeout: Duration) -> Self {
        Self {
            url: url.into(),
            client: Default::default(),
            timeout,
            idle: None,
        }
    }

    /// The same, and the server ends the session once it has been idle for `idle`.
    pub(crate) fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = Some(idle);
        self
    }

    /// Runs `f` on the connection, on a blocking thread.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T, ClusterError>
    where
        T: Send + 'static,
        F: FnOnce(&mut postgres::Client) -> Result<T, ClusterError> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.call_blocking(f))
            .await
            .map_err(|e| ClusterError::Task(e.to_string()))?
    }

    /// Runs `f` on the connection, on this thread.
    pub(crate) fn call_blocking<T>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, ClusterError>,
    ) -> Result<T, ClusterError> {
        let mut slot = match self.client.0.try_lock() {
            Ok(slot) => slot,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                return Err(ClusterError::Task(
                    "the previous call on this connection has not finished".into(),
                ));
            }
        };
        if slot.as_ref().is_none_or(postgres::Client::is_closed) {
            *slot = Some(connect_with(&self.url, self.timeout, self.idle)?);
        }
        let client = slot.as_mut().expect("opened above");
        let result = f(client);
        if matches!(result, Err(ClusterError::Postgres(_))) {
            // Whatever the failure, the next call starts from a fresh connection (a failed
            // transaction or a half-read reply must not leak into it).
            *slot = None;
        }
        result
    }
}

/// Clients that may be dropped anywhere: the synchronous client blocks on a runtime of its own to
/// close, which panics on a thread that drives async tasks, so there they are closed on a thread
/// of their own.
#[derive(Default)]
struct Clients<T: Default + Send + 'static>(Mutex<T>);

impl<T: Default + Send + 'static> Drop for Clients<T> {
    fn drop(&mut self) {
        let clients = std::mem::take(self.0.get_mut().unwrap_or_else(|p| p.into_inner()));
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::spawn(move || drop(clients));
        }
    }
}

/// A few connections shared by concurrent callers (the HTTP handlers): at most `size` calls at
/// once, each on a connection of its own, opened on demand and kept while healthy.
#[derive(Clone)]
pub struct Pool {
    /// The database.
    url: Arc<str>,
    /// Idle connections.
    idle: Arc<Clients<Vec<postgres::Client>>>,
    /// One permit per call under way.
    permits: Arc<Semaphore>,
    /// How long connecting may take.
    timeout: Duration,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("size", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool of at most `size` connections to `url`.
    pub fn new(url: &str, size: usize, timeout: Duration) -> Self {
        Self {
            url: url.into(),
            idle: Default::default(),
            permits: Arc::new(Semaphore::new(size.max(1))),
            timeout,
        }
    }

    /// The database's URL (it may hold a password: never shown).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Runs `f` on a connection of the pool, on a blocking thread.
    pub async fn call<T, F>(&self, f: F) -> Result<T, ClusterError>
    where
        T: Send + 'static,
        F: FnOnce(&mut postgres::Client) -> Result<T, ClusterError> + Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ClusterError::Task(e.to_string()))?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let taken = this.idle.0.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let mut client = match taken {
                Some(c) if !c.is_closed() => c,
                _ => connect(&this.url, this.timeout)?,
            };
            let result = f(&mut client);
            if !matches!(result, Err(ClusterError::Postgres(_))) && !client.is_closed() {
                this.idle
                    .0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(client);
            }
            result
        })
        .await
        .map_err(|e| ClusterError::Task(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_s_own_options_are_kept_beside_the_node_s() {
        let config: postgres::Config = "postgres://u@h/db?options=-c%20search_path%3Dbaton"
            .parse()
            .unwrap();
        assert_eq!(
            node_options(config.get_options(), Some(Duration::from_secs(3))),
            "-c search_path=baton -c idle_in_transaction_session_timeout=3000 -c idle_session_timeout=3000"
        );
        assert_eq!(
            node_options(None, None),
            "-c idle_in_transaction_session_timeout=3000"
        );
    }
}
