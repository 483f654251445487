//! `baton serve`: a supervisor served over HTTP, in one process (see `docs/http.md`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use baton::cluster::ClusterConfig;
use baton::journal::{JournalOptions, JournalTarget, PgOptions};
use baton::serve::agent_types::AgentTypeView;
use baton::serve::cluster::ClusterApi;
use baton::serve::events::{EventHub, EventsConfig};
use baton::serve::guard::Token;
use baton::serve::queue::{CommandQueue, IdReservation};
use baton::serve::store::IdFloor;
use baton::serve::webhook::{WebhookConfig, WebhookRuntime};
use baton::serve::{self, Parts, ServeConfig, fleet};
use baton::{AgentRuntime, AgentType, Journal, SessionId, SupervisorConfig};
use tokio_util::task::TaskTracker;

/// What `baton serve` does on the first signal.
const SERVE_STOPPING: &str = "closing the fleet's sessions (up to --grace) and the HTTP server";

/// The environment variable the bearer token is read from (unless --token-file is given).
const TOKEN_VAR: &str = "BATON_TOKEN";

/// Connections the HTTP handlers of a cluster node share (pool submissions and reads).
const CLUSTER_CONNECTIONS: usize = 8;

/// The largest --token-file or --agent-types file read.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Serve a fleet over HTTP, for orchestrators in any language (docs/http.md).
///
/// Every request needs `Authorization: Bearer TOKEN`. The token is read from $BATON_TOKEN or
/// from --token-file (its first line), never from the command line; it must be at least 16
/// characters. Once the server listens, the first line on standard output is `listening on
/// http://ADDR`. The OpenAPI document is at /openapi.json.
///
/// With --cluster, several `baton serve` nodes share one PostgreSQL journal (docs/cluster.md):
/// work items submitted to any node go to a shared pool, each node claims what it has room for,
/// and the node holding the sweeper's lock adopts the work of a node whose lease ran out.
///
/// Exit status: 0 when the server stopped by itself; 1 on an error; 2 on a usage error (no
/// token, a bad one, a bad flag); 3 when a cluster node lost its lease (it was fenced, or could
/// not heartbeat for a whole --lease-ttl: another node adopts its work); 130 after SIGINT and
/// 143 after SIGTERM.
#[derive(clap::Args)]
pub struct Args {
    /// Where to listen (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR")]
    listen: SocketAddr,
    /// The journal: a SQLite file (created if missing), or a PostgreSQL URL
    /// (postgres://USER:PASSWORD@HOST:PORT/DB; the schema is created if missing). A restarted
    /// server recovers from it, and agent types created over HTTP are kept in it.
    #[arg(long, default_value = "baton.db", value_name = "FILE|URL")]
    journal: JournalTarget,
    /// Keep everything in memory: no journal, nothing survives a restart.
    #[arg(long)]
    no_journal: bool,
    /// Read the bearer token from the first line of FILE instead of $BATON_TOKEN.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// A JSON array of agent types ({"name", "window", "model"?, "system_prompt"?, "policy"?})
    /// to create or update at start.
    #[arg(long, value_name = "FILE")]
    agent_types: Option<PathBuf>,
    /// The largest request body accepted, in KiB (a larger one is answered 413).
    #[arg(long, default_value_t = 1024, value_name = "KIB", value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    max_body_kib: u64,
    /// The longest a request may take before it is answered 503.
    #[arg(long, default_value = "30s", value_parser = positive_duration, value_name = "DURATION")]
    request_timeout: Duration,
    /// After SIGINT or SIGTERM, how long the fleet's sessions may take to close.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    grace: Duration,
    /// Live sessions at most; further work items wait in the queue.
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_sessions: u64,
    /// Compactions running at once across the fleet, at most.
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_concurrent_compactions: u64,
    /// Deliver the runtime's commands as signed webhooks POSTed to URL, instead of serving
    /// them to poll (`/v1/runtime/commands`). Needs --webhook-secret-file.
    #[arg(long, value_name = "URL", requires = "webhook_secret_file")]
    webhook: Option<String>,
    /// The webhooks' HMAC-SHA256 secret: the first line of FILE, surrounding whitespace
    /// trimmed.
    #[arg(long, value_name = "FILE", requires = "webhook")]
    webhook_secret_file: Option<PathBuf>,
    /// HTTP worker threads (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    workers: Option<u64>,
    /// Be a node of a cluster on the PostgreSQL --journal: submissions go to the shared pool,
    /// this node claims what it has room for, and adopts the work of nodes that are lost.
    #[arg(long)]
    cluster: bool,
    /// This node's name in the cluster (default: the host name).
    #[arg(long, value_name = "NAME", requires = "cluster")]
    node: Option<String>,
    /// The URL other nodes and orchestrators reach this node at (default: http:// and the
    /// address bound, so --listen 127.0.0.1:0 advertises the port picked; needed with an
    /// unspecified --listen address such as 0.0.0.0 or [::]).
    #[arg(long, value_name = "URL", requires = "cluster")]
    advertise: Option<String>,
    /// The node's lease: without a heartbeat for this long, it is lost (exit 3) and another
    /// node adopts its work. It heartbeats every third of it.
    #[arg(long, default_value = "10s", value_parser = positive_duration, value_name = "DURATION")]
    lease_ttl: Duration,
    /// How often the sweeper looks for lost nodes, and each node claims from the pool unprompted.
    #[arg(long, default_value = "2s", value_parser = positive_duration, value_name = "DURATION")]
    sweep_every: Duration,
}

/// Runs `f` on a thread of its own and waits for it: for blocking database calls made while
/// the server's runtime is being set up.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().expect("a start-up call panicked"))
}

/// The host's name, for --node's default.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "baton".to_owned())
}

/// The cluster's settings with --cluster: the journal must be PostgreSQL.
fn cluster_config(args: &Args) -> Result<Option<ClusterConfig>> {
    if !args.cluster {
        return Ok(None);
    }
    let url = match (&args.journal, args.no_journal) {
        (JournalTarget::Postgres(url), false) => url.expose().to_owned(),
        _ => {
            return Err(crate::usage(
                "--cluster needs a PostgreSQL journal: --journal postgres://USER:PASSWORD@HOST:PORT/DB",
            ));
        }
    };
    let name = args.node.clone().unwrap_or_else(host_name);
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err(crate::usage(
            "--node: a name of 1 to 255 characters without control characters",
        ));
    }
    if args.advertise.is_none() && args.listen.ip().is_unspecified() {
        return Err(crate::usage(format!(
            "--listen {} listens on every address, which other nodes and orchestrators cannot \
             reach it at: give --advertise URL (e.g. --advertise http://HOST:{})",
            args.listen,
            args.listen.port()
        )));
    }
    Ok(Some(ClusterConfig {
        url,
        name,
        // Without --advertise: http:// and the address bound (see `advertised`).
        advertise: args.advertise.clone(),
        ttl: args.lease_ttl,
        sweep_every: args.sweep_every,
        max_sessions: args.max_sessions as usize,
    }))
}

/// `cluster` advertising `bound` (as `http://ADDR`) unless --advertise gave a URL.
fn advertised(mut cluster: ClusterConfig, bound: SocketAddr) -> ClusterConfig {
    if cluster.advertise.is_none() {
        cluster.advertise = Some(format!("http://{bound}"));
    }
    cluster
}

/// A duration above zero (`30s`, `2m`).
fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if d.is_zero() {
        return Err(format!("{s:?} is zero; give a duration above zero"));
    }
    Ok(d)
}

/// The token from `file`'s first line, or else from `env` (the variable's value); surrounding
/// whitespace trimmed. Errors never show the token.
fn read_token(file: Option<&Path>, env: Option<String>) -> Result<Token> {
    let (text, origin) = match file {
        Some(path) => {
            // The reader's error names the (escaped) path and the cause once.
            let bytes = crate::output::read_capped(path, MAX_FILE_BYTES, "")
                .map_err(|e| crate::usage(format!("--token-file {e}")))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| crate::usage("--token-file: the token is not UTF-8 text"))?;
            let first = text.lines().next().unwrap_or("").to_owned();
            (first, "--token-file")
        }
        None => match env {
            Some(value) => (value, TOKEN_VAR),
            None => {
                return Err(crate::usage(format!(
                    "no token: set ${TOKEN_VAR} or give --token-file FILE (every request must \
                     carry it as `Authorization: Bearer TOKEN`)"
                )));
            }
        },
    };
    Token::new(text.trim()).map_err(|e| crate::usage(format!("{origin}: {e}")))
}

/// The agent types of `--agent-types FILE`: a JSON array, each checked as `PUT` checks it.
fn read_agent_types(path: &Path) -> Result<Vec<AgentType>> {
    let shown = crate::output::escape(&path.to_string_lossy()).into_owned();
    let bytes = crate::output::read_capped(path, MAX_FILE_BYTES, "")
        .with_context(|| format!("--agent-types {shown}: cannot read it"))?;
    let views: Vec<AgentTypeView> = serde_json::from_slice(&bytes).map_err(|e| {
        crate::usage(format!(
            "--agent-types {shown}: not a JSON array of agent types: {e}"
        ))
    })?;
    let mut types = Vec::with_capacity(views.len());
    for view in views {
        let name = view.name.clone();
        let agent = view.into_agent().map_err(|e| {
            crate::usage(format!(
                "--agent-types {shown}: agent type {:?}: {e}",
                crate::output::escape(&name)
            ))
        })?;
        if types.iter().any(|t: &AgentType| t.name == agent.name) {
            return Err(crate::usage(format!(
                "--agent-types {shown}: agent type {:?} is given twice",
                crate::output::escape(&name)
            )));
        }
        types.push(agent);
    }
    Ok(types)
}

/// The fleet's runtime, and the command queue to serve when it is one.
type Wired = (Arc<dyn AgentRuntime>, Option<Arc<CommandQueue>>);

/// The ids a cluster node's sessions are numbered from: a block of this many of its own, taken
/// atomically from the database when it starts (a restarted node is a new incarnation with a new
/// block), so that no two nodes ever propose the same session id.
const NODE_ID_BLOCK: u64 = 1 << 32;

/// The agent runtime the fleet acts through (`docs/http.md`, "The agent runtime over HTTP"):
/// signed webhooks with `--webhook`, else the command queue, also returned to be served. With a
/// journal, either proposes session ids above every id the journal knows; a cluster node, from a
/// block of ids of its own ([`NODE_ID_BLOCK`]). Its database calls run off the runtime's thread.
fn runtime(args: &Args, journal: Option<&Journal>, cluster: bool) -> Result<Wired> {
    let first = match journal {
        Some(j) => j
            .next_session_id()
            .context("cannot read the journal's session ids")?,
        None => SessionId(1),
    };
    // Ids proposed before a crash may name sessions no journal knows: start above them too,
    // and reserve each block of ids durably before proposing from it.
    let floor = match journal.and_then(Journal::target) {
        Some(target) => Some(Arc::new(off_runtime(|| IdFloor::open_target(target))?)),
        None => None,
    };
    let (first, floor) = match floor {
        Some(f) if cluster => {
            // Dropped there too: closing the client blocks.
            let start = off_runtime(move || f.reserve_block(NODE_ID_BLOCK, first.0))?;
            (SessionId(start), None)
        }
        Some(f) => {
            let stored = off_runtime(|| f.load())?;
            let floor: Arc<dyn IdReservation> = Arc::new(Detached(Some(f)));
            (SessionId(first.0.max(stored)), Some(floor))
        }
        None => (first, None),
    };
    if let (Some(url), Some(secret_file)) = (&args.webhook, &args.webhook_secret_file) {
        let secret = read_secret(secret_file)?;
        let mut webhook = WebhookRuntime::new(WebhookConfig::new(url.clone(), secret))
            .map_err(|e| crate::usage(format!("--webhook: {e}")))?
            .numbering_from(first);
        if let Some(f) = floor {
            webhook = webhook.reserving(f);
        }
        return Ok((Arc::new(webhook), None));
    }
    let mut queue = CommandQueue::new().numbering_from(first);
    if let Some(f) = floor {
        queue = queue.reserving(f);
    }
    let queue = Arc::new(queue);
    Ok((queue.clone(), Some(queue)))
}

/// The id floor, its reservations made on a thread of their own: they are made inside a spawn,
/// on a thread that drives async tasks, where the PostgreSQL client cannot block.
/// Dropped on a thread of its own too (closing the client blocks).
#[derive(Debug)]
struct Detached(Option<Arc<IdFloor>>);

impl IdReservation for Detached {
    fn reserve(&self, until: u64) -> Result<(), String> {
        match &self.0 {
            Some(f) => off_runtime(|| f.reserve(until)),
            None => Err("the id floor is closed".into()),
        }
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            off_runtime(move || drop(f));
        }
    }
}

/// The webhook secret: `file`'s first line, trimmed. Errors never show it.
fn read_secret(file: &Path) -> Result<Vec<u8>> {
    let shown = crate::output::escape(&file.to_string_lossy()).into_owned();
    let bytes = crate::output::read_capped(file, MAX_FILE_BYTES, "")
        .with_context(|| format!("--webhook-secret-file {shown}: cannot read it"))
        .map_err(|e| crate::usage(format!("{e:#}")))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| crate::usage("--webhook-secret-file: the secret is not UTF-8 text"))?;
    let secret = text.lines().next().unwrap_or("").trim();
    if secret.is_empty() {
        return Err(crate::usage(format!(
            "--webhook-secret-file {shown}: the secret is empty"
        )));
    }
    Ok(secret.as_bytes().to_vec())
}

pub fn run(args: Args) -> Result<crate::Exit> {
    let token = read_token(args.token_file.as_deref(), std::env::var(TOKEN_VAR).ok())?;
    let given = match &args.agent_types {
        Some(path) => read_agent_types(path)?,
        None => Vec::new(),
    };
    let config = ServeConfig {
        listen: args.listen,
        max_body_bytes: (args.max_body_kib * 1024) as usize,
        request_timeout: args.request_timeout,
        workers: args.workers.unwrap_or(0) as usize,
        ..ServeConfig::new(token)
    };
    let cluster = cluster_config(&args)?;
    let supervisor_config = SupervisorConfig {
        max_sessions: args.max_sessions as usize,
        max_concurrent_compactions: args.max_concurrent_compactions as usize,
        ..SupervisorConfig::default()
    };
    // A cluster node binds before it joins, so that it advertises the address bound (the port
    // picked for port 0).
    let bound = match &cluster {
        Some(_) => Some(
            std::net::TcpListener::bind(config.listen)
                .with_context(|| format!("cannot listen on {}", config.listen))?,
        ),
        None => None,
    };
    let cluster = match (cluster, &bound) {
        (Some(c), Some(listener)) => Some(advertised(c, listener.local_addr()?)),
        (c, _) => c,
    };
    let stopped = actix::System::new().block_on(async move {
        let stop =
            crate::signals::Stop::install(SERVE_STOPPING).context("cannot handle signals")?;
        // A cluster node joins first: its journal writes with its epoch.
        let epoch = match &cluster {
            Some(c) => Some(
                baton::cluster::join(c)
                    .await
                    .context("cannot join the cluster")?,
            ),
            None => None,
        };
        let journal = if args.no_journal {
            None
        } else {
            let shown = crate::output::escape(&args.journal.to_string()).into_owned();
            let target = &args.journal;
            // Off this thread: the PostgreSQL client blocks on a runtime of its own, which
            // cannot run on a thread that drives async tasks.
            let opened = off_runtime(|| match (target, epoch) {
                (JournalTarget::Postgres(url), Some(epoch)) => Journal::open_postgres(
                    url,
                    JournalOptions::default(),
                    PgOptions { epoch: Some(epoch) },
                ),
                (target, _) => Journal::open_target(target, JournalOptions::default()),
            });
            Some(opened.with_context(|| format!("cannot open the journal {shown}"))?)
        };
        let (runtime, commands) = runtime(&args, journal.as_ref(), cluster.is_some())?;
        let fleet = fleet::start(runtime, journal.clone(), given, supervisor_config)?;
        fleet.metrics.spawn_feed();
        let cluster_api = match (&cluster, epoch) {
            (Some(c), Some(epoch)) => Some(ClusterApi {
                epoch,
                db: baton::cluster::Pool::new(&c.url, CLUSTER_CONNECTIONS, c.ttl),
            }),
            _ => None,
        };
        // A cluster node's event streams carry every node's events, from the shared log. Set
        // up before the node's loops start: it waits for its first database calls, and a
        // failure here must not leave claimed work behind for a whole lease.
        let events = match &cluster {
            Some(c) => EventHub::cluster(&fleet.supervisor, &c.url, EventsConfig::default())
                .context("cannot follow the cluster's event log")?,
            None => EventHub::new(&fleet.supervisor),
        };
        let parts = Parts {
            supervisor: fleet.supervisor.clone(),
            store: fleet.store.clone(),
            commands,
            events,
            metrics: fleet.metrics.clone(),
            cluster: cluster_api,
        };
        let (addr, server) = match bound {
            Some(listener) => serve::listen(&config, parts, listener),
            None => serve::bind(&config, parts),
        }
        .with_context(|| format!("cannot listen on {}", config.listen))?;
        // Only now does a cluster node heartbeat, claim and sweep.
        let tracker = TaskTracker::new();
        let running = match (&cluster, epoch, &journal) {
            (Some(c), Some(epoch), Some(j)) => Some(baton::cluster::start(
                c,
                epoch,
                j.clone(),
                fleet.supervisor.clone(),
                &tracker,
            )),
            _ => None,
        };
        let mut out = crate::stdout();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
        drop(out);
        tracing::info!(%addr, "serving");
        let http = server.handle();
        let serving = actix::spawn(server);
        let requested = stop.requested();
        tokio::pin!(requested);
        let lost = async {
            match &running {
                Some(r) => r.node.lost().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut requested => {}
            ended = serving => {
                ended.context("the HTTP server failed")?.context("the HTTP server failed")?;
            }
            lost = lost => {
                // Another node adopts (or has adopted) this node's work: stop at once, without
                // closing sessions that are no longer this node's.
                tracing::error!(reason = %lost, "this cluster node is lost; stopping");
                if let Some(r) = running {
                    r.leave().await;
                }
                http.stop(false).await;
                let mut out = crate::stdout();
                writeln!(out, "lost: {lost}")?;
                out.flush()?;
                // At once: a database call stuck on a cut network must not hold the exit (the
                // runtime would wait for its blocking thread).
                std::process::exit(crate::Exit::Lost.code().into());
            }
        }
        // The fleet closes first, with the HTTP server still answering: an orchestrator
        // carries out the runtime's close commands over it. A cluster node takes no more work
        // meanwhile, and keeps its lease until its fleet is closed; then it leaves, and what it
        // still owns is adopted by another node.
        if let Some(r) = &running {
            r.stop_taking_work();
        }
        let report = fleet.supervisor.shutdown(args.grace).await;
        if let Some(r) = running {
            r.leave().await;
        }
        tracker.close();
        http.stop(false).await;
        let mut out = crate::stdout();
        if report.clean {
            writeln!(out, "stopped: every session closed")?;
        } else {
            writeln!(
                out,
                "stopped: {} sessions still open after --grace (the journal keeps their work items)",
                report.remaining
            )?;
        }
        anyhow::Ok(stop.signal())
    })?;
    Ok(stopped.map_or(crate::Exit::Success, crate::signals::Signal::exit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_trimmed_from_the_environment_and_a_missing_one_is_a_usage_error() {
        let t = read_token(None, Some("  0123456789abcdef\n".into())).unwrap();
        assert!(t.matches(b"0123456789abcdef"));
        let e = read_token(None, None).unwrap_err();
        assert_eq!(crate::finish(Err(e)), crate::Exit::Usage);
    }

    #[test]
    fn a_short_token_is_a_usage_error_that_does_not_show_it() {
        let e = read_token(None, Some("hunter2".into())).unwrap_err();
        let message = crate::chain_message(&e);
        assert!(!message.contains("hunter2"), "{message}");
        assert!(message.contains("too short"), "{message}");
        assert_eq!(crate::finish(Err(e)), crate::Exit::Usage);
    }

    #[test]
    fn the_token_file_wins_and_only_its_first_line_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "0123456789abcdef\nsecond line\n").unwrap();
        let t = read_token(Some(&path), Some("fedcba9876543210".into())).unwrap();
        assert!(t.matches(b"0123456789abcdef"));
    }

    #[test]
    fn the_webhook_secret_is_the_first_line_and_an_empty_one_is_a_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "  s3cret \nsecond line\n").unwrap();
        assert_eq!(read_secret(&path).unwrap(), b"s3cret");
        std::fs::write(&path, "\n").unwrap();
        let e = read_secret(&path).unwrap_err();
        assert_eq!(crate::finish(Err(e)), crate::Exit::Usage);
    }
}
