//! Embedding baton with real agents: `ChatRuntime` under the supervisor.
//!
//! Run against any OpenAI-compatible endpoint (a local llama-server, vLLM, Ollama, OpenAI, ...):
//!
//! ```sh
//! BATON_ENDPOINT=http://127.0.0.1:8080/v1 cargo run --example chat -- smollm2
//! ```
//!
//! The first argument is the model (default `smollm2`); `BATON_API_KEY`, when set, is sent as
//! the bearer token. One agent works on one work item for a few turns. Each reply's usage is
//! reported to baton by the runtime itself: the session compacts at 80% of its window and rotates
//! into a fresh agent (which starts from a handoff) at 95%, and the loop below just follows the
//! work item to whichever session holds it.

use std::sync::Arc;
use std::time::Duration;

use baton::run::take_turn;
use baton::runtime::chat::{ApiKey, ChatClient, ChatRuntime, ClientConfig};
use baton::{AgentType, FleetEvent, Supervisor, WorkItem, WorkItemId};

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint =
        std::env::var("BATON_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:8080/v1".into());
    let model = std::env::args().nth(1).unwrap_or_else(|| "smollm2".into());

    // ===== The runtime: a client for the endpoint, and baton holding each conversation =====
    let client = ChatClient::new(ClientConfig {
        api_key: ApiKey::from_env("BATON_API_KEY")?,
        ..ClientConfig::new(endpoint)
    })?;
    let runtime = Arc::new(ChatRuntime::new(client));

    // ===== The supervisor over it; the runtime reports usage to its sessions =====
    // The window: the endpoint's (llama.cpp /props, /v1/models), else a well-known model's,
    // else 8192. A window given here instead of `None` would win over both.
    let window = runtime
        .window_for("engineer", &model, None)
        .await
        .map_or(8192, |w| w.tokens);
    let agent = AgentType {
        model,
        system_prompt: "You are a concise software engineer.".into(),
        ..AgentType::new("engineer", window)
    };
    let builder = Supervisor::builder(runtime.clone()).agent_type(agent);
    let mut events = builder.subscribe();
    let fleet = builder.start();
    fleet
        .submit(WorkItem {
            id: WorkItemId(1),
            agent_type: "engineer".into(),
            text: "Plan a command-line tool that counts words in files, step by step.".into(),
        })
        .await?;

    // ===== The orchestrator: talk to the agent; each turn is reported through the session's
    // handle, and baton compacts and rotates underneath =====
    let mut session = loop {
        if let Some(FleetEvent::SessionStarted { session, .. }) = events.recv().await {
            break session;
        }
    };
    let mut handle = fleet.session(session).await.ok_or("no session")?;
    let mut turn = take_turn(&runtime, &handle, None).await?;
    for _ in 0..6 {
        let usage = turn.reading.map(|r| r.usage);
        println!(
            "{session}: {} [{}]",
            turn.text().lines().next().unwrap_or(""),
            usage.map_or("overflow".into(), |u| format!("{:.0}% used", u.percent()))
        );
        if turn.next_session() != Some(session) {
            session = turn.next_session().ok_or("the work item has no session")?;
            handle = fleet.session(session).await.ok_or("no session")?;
        }
        turn = take_turn(&runtime, &handle, Some("Go on with the next step.")).await?;
    }

    // ===== What baton did =====
    fleet.shutdown(Duration::from_secs(30)).await;
    while let Ok(event) = events.try_recv() {
        match event {
            FleetEvent::Compaction(c) => println!(
                "compacted {}: {} -> {} tokens",
                c.session, c.before_tokens, c.after_tokens
            ),
            FleetEvent::Rotation(r) => println!(
                "rotated {} -> {:?} ({})",
                r.old_session, r.new_session, r.reason
            ),
            _ => {}
        }
    }
    Ok(())
}
