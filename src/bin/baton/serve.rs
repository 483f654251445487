//! `baton serve`: a supervisor served over HTTP, in one process (see `docs/http.md`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use baton::journal::{JournalOptions, JournalTarget};
use baton::serve::agent_types::AgentTypeView;
use baton::serve::events::EventHub;
use baton::serve::guard::Token;
use baton::serve::queue::CommandQueue;
use baton::serve::store::IdFloor;
use baton::serve::webhook::{WebhookConfig, WebhookRuntime};
use baton::serve::{self, Parts, ServeConfig, fleet};
use baton::{AgentRuntime, AgentType, Journal, SessionId, SupervisorConfig};

/// What `baton serve` does on the first signal.
const SERVE_STOPPING: &str = "closing the fleet's sessions (up to --grace) and the HTTP server";

/// The environment variable the bearer token is read from (unless --token-file is given).
const TOKEN_VAR: &str = "BATON_TOKEN";

/// The largest --token-file or --agent-types file read.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Serve a fleet over HTTP, for orchestrators in any language (docs/http.md).
///
/// Every request needs `Authorization: Bearer TOKEN`. The token is read from $BATON_TOKEN or
/// from --token-file (its first line), never from the command line; it must be at least 16
/// characters. Once the server listens, the first line on standard output is `listening on
/// http://ADDR`. The OpenAPI document is at /openapi.json.
///
/// Exit status: 0 when the server stopped by itself; 1 on an error; 2 on a usage error (no
/// token, a bad one, a bad flag); 130 after SIGINT and 143 after SIGTERM.
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

/// The agent runtime the fleet acts through (`docs/http.md`, "The agent runtime over HTTP"):
/// signed webhooks with `--webhook`, else the command queue, also returned to be served. With a
/// journal, either proposes session ids above every id the journal knows.
fn runtime(args: &Args, journal: Option<&Journal>) -> Result<Wired> {
    let first = match journal {
        Some(j) => j
            .next_session_id()
            .context("cannot read the journal's session ids")?,
        None => SessionId(1),
    };
    // Ids proposed before a crash may name sessions no journal knows: start above them too,
    // and reserve each block of ids durably before proposing from it.
    let floor = match journal.and_then(Journal::target) {
        Some(target) => Some(Arc::new(IdFloor::open_target(target)?)),
        None => None,
    };
    let first = match &floor {
        Some(f) => SessionId(first.0.max(f.load()?)),
        None => first,
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
    let supervisor_config = SupervisorConfig {
        max_sessions: args.max_sessions as usize,
        max_concurrent_compactions: args.max_concurrent_compactions as usize,
        ..SupervisorConfig::default()
    };
    let stopped = actix::System::new().block_on(async move {
        let stop =
            crate::signals::Stop::install(SERVE_STOPPING).context("cannot handle signals")?;
        let journal = if args.no_journal {
            None
        } else {
            let shown = crate::output::escape(&args.journal.to_string()).into_owned();
            Some(
                Journal::open_target(&args.journal, JournalOptions::default())
                    .with_context(|| format!("cannot open the journal {shown}"))?,
            )
        };
        let (runtime, commands) = runtime(&args, journal.as_ref())?;
        let fleet = fleet::start(runtime, journal, given, supervisor_config)?;
        fleet.metrics.spawn_feed();
        let parts = Parts {
            supervisor: fleet.supervisor.clone(),
            store: fleet.store.clone(),
            commands,
            events: EventHub::new(&fleet.supervisor),
            metrics: fleet.metrics.clone(),
        };
        let (addr, server) = serve::bind(&config, parts)
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let mut out = crate::stdout();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
        drop(out);
        tracing::info!(%addr, "serving");
        let http = server.handle();
        let serving = actix::spawn(server);
        let requested = stop.requested();
        tokio::pin!(requested);
        tokio::select! {
            () = &mut requested => {}
            ended = serving => {
                ended.context("the HTTP server failed")?.context("the HTTP server failed")?;
            }
        }
        // The fleet closes first, with the HTTP server still answering: an orchestrator
        // carries out the runtime's close commands over it.
        let report = fleet.supervisor.shutdown(args.grace).await;
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
