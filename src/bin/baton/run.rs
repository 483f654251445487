//! `baton run`: a fleet of real chat agents working through a file of work items.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use baton::run::{
    self, CONTINUE_PROMPT, DONE_MARKER, ItemEnd, RunConfig, RunJournal, RunReport, SYSTEM_PROMPT,
};
use baton::runtime::chat::{
    ApiKey, ChatClient, ChatError, ChatRuntime, ChatRuntimeConfig, ClientConfig, choose_window,
};
use baton::{AgentType, SupervisorConfig, Usage, WorkItem, WorkItemId};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Deserialize;

use crate::policy_args::PolicyArgs;

/// Run a fleet of chat agents through a file of work items, on an OpenAI-compatible endpoint.
///
/// Each work item goes to a session of its agent type. The agent answers the item, then keeps
/// working turn by turn (each reply is followed by --continue-prompt) until a reply has a line
/// that is the --done-marker, or the item has had --max-turns turns. Every reply's usage is
/// reported to baton: sessions compact at 80% and rotate into a fresh agent of the same type at
/// 95%, live. A progress bar runs on stderr; the results table (the same as `baton simulate`'s)
/// and one row per work item are printed at the end.
///
/// WORK_ITEMS is JSON Lines, one object per line: {"id": 7, "agent_type": "coder", "text":
/// "..."} ("id" defaults to the line's position, "agent_type" to the first --agent-type); or
/// plain text: every non-blank line that does not start with '#' is one work item. The format is
/// told by the first non-blank line: JSON Lines when it starts with '{'. A leading byte-order
/// mark is ignored; `-` reads standard input.
///
/// Exit status: 0 when every work item is done (its agent said so, or it used its
/// --max-turns); 1 when any failed, was dead-lettered or is unfinished, or on an error; 2 on a
/// usage error.
#[derive(clap::Args)]
pub struct Args {
    /// The file of work items (JSON Lines or plain text, see above; `-`: standard input).
    #[arg(value_name = "WORK_ITEMS")]
    items: PathBuf,
    /// The largest work-item file read, in MiB.
    #[arg(long, default_value_t = 64, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=65536))]
    max_items_mib: u64,
    /// The endpoint's API root with its version: http://127.0.0.1:8080/v1 (llama-server),
    /// https://api.openai.com/v1, https://openrouter.ai/api/v1. A bare host gets /v1.
    #[arg(long, value_name = "URL")]
    endpoint: String,
    /// The model every request names (llama-server serves its one model whatever this says).
    #[arg(long)]
    model: String,
    /// An agent type as NAME[:WINDOW][=SYSTEM PROMPT]; repeat for several. A WINDOW given here
    /// is used as is, even above what the endpoint states (with a warning). Without one, the
    /// window the endpoint states (llama.cpp /props, /v1/models), else baton's table of
    /// well-known models (gpt-4o, claude-*, ...). Work items that name no agent type go to the
    /// first.
    #[arg(
        long = "agent-type",
        value_name = "NAME[:WINDOW][=PROMPT]",
        default_value = "agent"
    )]
    agent_types: Vec<String>,
    /// The system prompt of agent types that give none.
    #[arg(long, default_value = SYSTEM_PROMPT, hide_default_value = true)]
    system_prompt: String,
    /// Read the API key from this environment variable (keys are never taken on the command
    /// line, and never logged).
    #[arg(long, value_name = "VAR")]
    api_key_env: Option<String>,
    /// Turns a work item may take across its sessions.
    #[arg(long, default_value_t = 20, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_turns: u32,
    /// Agents working at once (default: the endpoint's slots when it says, else 4).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    sessions: Option<u32>,
    /// The longest reply of one turn, in tokens.
    #[arg(long, default_value_t = 256, value_name = "TOKENS", value_parser = clap::value_parser!(u32).range(1..))]
    reply_tokens: u32,
    /// Sampling temperature, 0 to 2 (default: the server's).
    #[arg(long, value_parser = temperature)]
    temperature: Option<f32>,
    /// Sampling seed, for servers that honour it.
    #[arg(long)]
    seed: Option<u64>,
    /// The longest one request may take (e.g. 90s, 5m).
    #[arg(long, default_value = "120s", value_parser = positive_duration, value_name = "DURATION")]
    request_timeout: Duration,
    /// The largest response body accepted from the endpoint, in MiB (chat replies, /models,
    /// /props); a larger one is refused after reading this much.
    #[arg(long, default_value_t = 16, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=4096))]
    max_response_mib: u64,
    /// What the agent is told after each reply until it is done.
    #[arg(long, default_value = CONTINUE_PROMPT, hide_default_value = true)]
    continue_prompt: String,
    /// A reply with a line that is this marker finishes its work item.
    #[arg(long, default_value = DONE_MARKER)]
    done_marker: String,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Keep a journal in FILE (SQLite, created if missing): every event, work item and
    /// rotation step, durably, for `baton log FILE`. Run again with the same WORK_ITEMS and the
    /// same FILE to continue where a run stopped: items it ended are not taken again, items in
    /// flight resume through the journal's recovery. Other work items on the same journal are
    /// refused.
    #[arg(long, value_name = "FILE")]
    journal: Option<PathBuf>,
    /// After the first SIGINT or SIGTERM, how long the turns under way may take to finish
    /// before they are cut short (a second signal stops at once).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    grace: Duration,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// A sampling temperature: a number from 0 to 2 (NaN and infinities refused).
fn temperature(s: &str) -> Result<f32, String> {
    let t: f32 = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if !(0.0..=2.0).contains(&t) {
        return Err(format!("{s:?} is not between 0 and 2"));
    }
    Ok(t)
}

/// A duration above zero (`90s`, `5m`).
fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if d.is_zero() {
        return Err(format!("{s:?} is zero; give a duration above zero"));
    }
    Ok(d)
}

/// An agent type from `NAME[:WINDOW][=PROMPT]`.
#[derive(Clone)]
struct AgentSpec {
    name: String,
    window: Option<u64>,
    prompt: Option<String>,
}

fn agent_spec(spec: &str) -> Result<AgentSpec> {
    let (head, prompt) = match spec.split_once('=') {
        Some((head, prompt)) => (head, Some(prompt.trim().to_owned())),
        None => (spec, None),
    };
    let (name, window) = match head.split_once(':') {
        Some((name, window)) => {
            let window: u64 = window.trim().parse().with_context(|| {
                format!("--agent-type {spec:?}: window {window:?} is not a number")
            })?;
            if window == 0 || window > Usage::MAX_TOKENS {
                bail!(
                    "--agent-type {spec:?}: the window must be 1 to {} tokens",
                    Usage::MAX_TOKENS
                );
            }
            (name.trim(), Some(window))
        }
        None => (head.trim(), None),
    };
    if name.is_empty() {
        bail!("--agent-type {spec:?} has no name (NAME[:WINDOW][=PROMPT])");
    }
    Ok(AgentSpec {
        name: name.to_owned(),
        window,
        prompt: prompt.filter(|p| !p.is_empty()),
    })
}

/// One line of a JSON Lines work-item file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemLine {
    id: Option<u64>,
    agent_type: Option<String>,
    text: String,
}

/// Reads the work items (see [`Args`] for the formats) from `path` (`-`: standard input), at
/// most `cap` bytes.
fn read_items(path: &Path, cap: u64, agent_types: &[String]) -> Result<Vec<WorkItem>> {
    let shown = crate::output::escape(&path.to_string_lossy()).into_owned();
    let bytes = crate::output::read_capped(path, cap, "; raise it with --max-items-mib")
        .with_context(|| format!("cannot read the work items in {shown}"))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("the work items in {shown} are not UTF-8 text: {e}"))?;
    parse_items(&text, &shown, agent_types)
}

/// Parses work items (see [`Args`] for the formats), checking ids and agent types; `source`
/// names the input in errors.
fn parse_items(text: &str, source: &str, agent_types: &[String]) -> Result<Vec<WorkItem>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let json = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| l.trim_start().starts_with('{'));
    let default_type = agent_types[0].as_str();
    let mut items = Vec::new();
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() || (!json && line.starts_with('#')) {
            continue;
        }
        let at = || format!("{source} line {n}");
        let (id, agent_type, text) = if json {
            let parsed: ItemLine = serde_json::from_str(line).with_context(|| {
                format!(
                    "{}: not a work item ({{\"id\": N, \"agent_type\": \"NAME\", \"text\": \"...\"}})",
                    at()
                )
            })?;
            (
                parsed.id.unwrap_or(items.len() as u64 + 1),
                parsed.agent_type.unwrap_or_else(|| default_type.to_owned()),
                parsed.text,
            )
        } else {
            (
                items.len() as u64 + 1,
                default_type.to_owned(),
                line.to_owned(),
            )
        };
        if text.trim().is_empty() {
            bail!("{}: the work item's text is empty", at());
        }
        if !agent_types.contains(&agent_type) {
            bail!(
                "{}: agent type {:?} is not one of --agent-type ({})",
                at(),
                crate::output::escape(&agent_type),
                agent_types.join(", ")
            );
        }
        if let Some(first) = seen.insert(id, n) {
            bail!(
                "{}: work item id {id} is already used on line {first}",
                at()
            );
        }
        items.push(WorkItem {
            id: WorkItemId(id),
            agent_type: agent_type.into(),
            text,
        });
    }
    if items.is_empty() {
        bail!("{source} holds no work items");
    }
    Ok(items)
}

/// The API root with its version: a bare `http://host:port` gets `/v1` (before a query, which
/// is kept).
fn api_root(endpoint: &str) -> String {
    let endpoint = endpoint.trim();
    let (url, query) = match endpoint.find('?') {
        Some(q) => endpoint.split_at(q),
        None => (endpoint, ""),
    };
    let trimmed = url.trim_end_matches('/');
    let path_empty = trimmed
        .split_once("://")
        .is_some_and(|(_, rest)| !rest.contains('/'));
    if path_empty {
        format!("{trimmed}/v1{query}")
    } else {
        format!("{trimmed}{query}")
    }
}

pub fn run(args: Args) -> Result<crate::Exit> {
    let policy = args.policy.checked()?;
    let specs = args
        .agent_types
        .iter()
        .map(|s| agent_spec(s).map_err(|e| crate::usage(format!("{e:#}"))))
        .collect::<Result<Vec<_>>>()?;
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    if let Some(dup) = crate::policy_args::first_duplicate(&names) {
        return Err(crate::usage(format!(
            "--agent-type {:?} is given twice",
            crate::output::escape(dup)
        )));
    }
    let items = read_items(&args.items, args.max_items_mib * 1024 * 1024, &names)?;
    let api_key = match &args.api_key_env {
        Some(var) => Some(
            ApiKey::from_env(var)?
                .with_context(|| format!("--api-key-env {var}: ${var} is not set or empty"))?,
        ),
        None => None,
    };
    let mut client_config = ClientConfig::new(api_root(&args.endpoint));
    client_config.api_key = api_key;
    client_config.request_timeout = args.request_timeout;
    client_config.max_body_bytes = args.max_response_mib * 1024 * 1024;
    let client = ChatClient::new(client_config).context("invalid --endpoint")?;
    let base_url = client.config().base_url.clone();

    let stopped = actix::System::new().block_on(async move {
        let stop = crate::signals::Stop::install(crate::signals::RUN_STOPPING)
            .context("cannot handle signals")?;
        let journal = match &args.journal {
            Some(path) => Some(Arc::new(RunJournal::open(path, &items).await?)),
            None => None,
        };
        // One cheap request first, so that an endpoint that is down or refuses the key is a
        // clear error rather than a run of failed turns.
        match client.models().await {
            Ok(_) => {}
            Err(e @ (ChatError::Unreachable { .. } | ChatError::Timeout { .. })) => {
                bail!("cannot reach the endpoint {base_url}: {e}")
            }
            Err(
                e @ ChatError::Refused {
                    status: 401 | 403, ..
                },
            ) => {
                bail!("the endpoint {base_url} refused the request: {e} (check --api-key-env)")
            }
            Err(e) => tracing::warn!(error = %e, "GET /models failed; going on"),
        }
        let runtime = Arc::new(ChatRuntime::with_config(
            client,
            ChatRuntimeConfig {
                reply_tokens: Some(args.reply_tokens),
                temperature: args.temperature,
                seed: args.seed,
                first_session_id: journal.as_ref().map_or(1, |j| j.next_session_id()),
                ..ChatRuntimeConfig::default()
            },
        ));
        // Every agent type shares the endpoint and the model: one lookup serves them all.
        let endpoint = runtime
            .endpoint_window_of(&specs[0].name, &args.model)
            .await;
        let mut agent_types = Vec::new();
        for spec in specs {
            let window =
                choose_window(spec.window, endpoint.as_ref(), &args.model).with_context(|| {
                    format!(
                        "agent type {:?} has no window, {base_url} states none, and {:?} is not \
                         among the well-known models: give it as NAME:WINDOW",
                        spec.name, args.model
                    )
                })?;
            tracing::info!(
                agent_type = %spec.name,
                window = window.tokens,
                source = ?window.source,
                "agent type window"
            );
            agent_types.push(AgentType {
                model: args.model.clone(),
                system_prompt: spec.prompt.unwrap_or_else(|| args.system_prompt.clone()),
                ..AgentType::new(&spec.name, window.tokens).with_policy(policy.clone())
            });
        }
        let sessions = args
            .sessions
            .map(|s| s as usize)
            .unwrap_or_else(|| {
                endpoint
                    .and_then(|e| e.slots)
                    .map_or(4, |s| s.min(100_000) as usize)
            })
            .clamp(1, items.len());
        if let Some(slots) = endpoint.and_then(|e| e.slots)
            && sessions as u64 > slots
        {
            tracing::warn!(
                sessions,
                slots,
                "more agents than the server has slots: requests will queue or fail"
            );
        }
        let config = RunConfig {
            max_turns: args.max_turns,
            continue_prompt: args.continue_prompt,
            done_marker: args.done_marker,
            supervisor: SupervisorConfig {
                max_sessions: sessions,
                ..SupervisorConfig::default()
            },
            seed: args.seed.unwrap_or(0),
            grace: args.grace,
            ..RunConfig::default()
        };
        let bar = crate::table::progress_bar(items.len() as u64);
        bar.enable_steady_tick(Duration::from_millis(200));
        let requested = stop.requested();
        let report = run::drive(
            runtime,
            agent_types,
            items,
            &config,
            journal,
            requested,
            |p| {
                bar.set_position(p.finished);
                bar.set_message(format!(
                    "{} turns, {} compactions, {} rotations",
                    p.turns, p.compactions, p.rotations
                ));
            },
        )
        .await?;
        bar.finish_and_clear();
        crate::table::write_report(args.json, &report, |out, r| {
            let title = format!("baton run, {} on {base_url}", args.model);
            crate::table::write_fleet_table(out, &title, &r.fleet, &r.outcomes)?;
            write_items(out, r)
        })?;
        if let Some(signal) = stop.signal() {
            return Ok(Some(signal));
        }
        let o = report.outcomes;
        if o.not_finished() > 0 {
            bail!(
                "{} of {} work items did not finish ({} failed, {} dead-lettered, {} unfinished)",
                o.not_finished(),
                o.total(),
                o.failed,
                o.dead_lettered,
                o.unfinished
            );
        }
        Ok(None)
    })?;
    Ok(stopped.map_or(crate::Exit::Success, crate::signals::Signal::exit))
}

fn write_items(out: &mut impl Write, r: &RunReport) -> Result<()> {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    t.set_header(["work item", "agent type", "turns", "sessions", "end"]);
    for i in &r.items {
        let end = match &i.end {
            ItemEnd::Failed { error } => format!("failed: {error}"),
            ItemEnd::Dead { reason } => format!("dead letter: {reason}"),
            other => other.as_str().to_owned(),
        };
        t.add_row([
            i.id.to_string(),
            crate::output::escape(&i.agent_type).into_owned(),
            i.turns.to_string(),
            i.sessions.to_string(),
            crate::output::escape(&end).into_owned(),
        ]);
    }
    if let Some(r) = &r.resumed {
        writeln!(
            out,
            "resumed from the journal: {} items ended before (not taken again), {} restarted, \
             {} rotations resumed, {} queued, {} submitted now",
            r.already_ended, r.requeued, r.rotations_resumed, r.queued, r.submitted
        )?;
    }
    // The overhead is summed over the turns taken (the items' turns): divided by them.
    let turns = r
        .items
        .iter()
        .map(|i| u64::from(i.turns))
        .sum::<u64>()
        .max(1) as f64;
    writeln!(
        out,
        "{t}\nrequests {:.1} s in all; baton's own time per turn {:.3} ms (mean)",
        r.request_seconds,
        r.overhead_seconds * 1e3 / turns
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a work-item file is made of: JSON structure, its keys, comments, marks and controls.
    const PIECES: &[&str] = &[
        "{",
        "}",
        "\"",
        ":",
        ",",
        "\n",
        "\r\n",
        " ",
        "#",
        "\u{feff}",
        "\"id\"",
        "\"text\"",
        "\"agent_type\"",
        "\"a\"",
        "\"b\"",
        "1",
        "-1",
        "1e300",
        "18446744073709551616",
        "null",
        "\"x\"",
        "fix it",
        "\u{1b}[2J",
        "\u{0}",
    ];

    fn check_parse(text: &str) {
        let names = ["a".to_owned(), "b".to_owned()];
        if let Ok(items) = parse_items(text, "items", &names) {
            assert!(!items.is_empty());
            let mut ids: Vec<_> = items.iter().map(|i| i.id).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), items.len(), "ids are unique");
            assert!(
                items
                    .iter()
                    .all(|i| names.iter().any(|n| **n == *i.agent_type))
            );
            assert!(items.iter().all(|i| !i.text.trim().is_empty()));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn work_item_files_of_arbitrary_bytes_parse_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            check_parse(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn work_item_files_of_json_lines_soup_parse_or_are_refused(pieces in proptest::collection::vec(0..PIECES.len(), 0..200)) {
            let text: String = pieces.iter().map(|&p| PIECES[p]).collect();
            check_parse(&text);
        }
    }

    #[test]
    fn a_byte_order_mark_does_not_hide_json_lines() {
        let items = parse_items(
            "\u{feff}{\"id\": 4, \"text\": \"fix\"}\n",
            "items",
            &["a".to_owned()],
        )
        .unwrap();
        assert_eq!(
            (items[0].id, items[0].text.as_str()),
            (WorkItemId(4), "fix")
        );
    }

    #[test]
    fn agent_specs_take_an_optional_window_and_prompt() {
        let a = agent_spec("coder:2048=You write Rust.").unwrap();
        assert_eq!(
            (a.name.as_str(), a.window, a.prompt.as_deref()),
            ("coder", Some(2048), Some("You write Rust."))
        );
        let b = agent_spec("plain").unwrap();
        assert_eq!((b.window, b.prompt), (None, None));
        assert!(agent_spec(":2048").is_err());
        assert!(agent_spec("x:big").is_err());
        assert!(agent_spec("x:0").is_err());
    }

    #[test]
    fn a_bare_host_gets_the_version() {
        assert_eq!(
            api_root("http://127.0.0.1:8080"),
            "http://127.0.0.1:8080/v1"
        );
        assert_eq!(
            api_root("http://127.0.0.1:8080/"),
            "http://127.0.0.1:8080/v1"
        );
        assert_eq!(
            api_root("https://openrouter.ai/api/v1/"),
            "https://openrouter.ai/api/v1"
        );
        assert_eq!(
            api_root("http://127.0.0.1:8080?key=k"),
            "http://127.0.0.1:8080/v1?key=k"
        );
    }
}
