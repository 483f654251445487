//! Embedding baton in an orchestrator: a supervisor over the in-memory runtime.
//!
//! Run: `cargo run --example embed`, or `cargo run --example embed -- --journal run.db` to also
//! write everything to a journal file (then list it with `cargo run -- log run.db`).
//!
//! Three work items run on two agent types. The "agents" are simulated by `MemoryRuntime`:
//! each turn, the orchestrator grows a session's context and reports the new usage, as it would
//! after each real model response. baton compacts sessions at 80%, rotates them at 95%, and
//! publishes every transition, compaction and rotation on the event stream printed here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton::runtime::memory::{MemoryConfig, MemoryRuntime, SummaryModel};
use baton::{
    AgentType, FleetEvent, Journal, Settled, Supervisor, SupervisorHandle, UsageSource, WorkItem,
    WorkItemId,
};

/// Turns each work item takes in all (its sessions share them).
const TURNS: u64 = 60;

#[tokio::main]
async fn main() {
    // ===== The runtime: your agents (here simulated) =====
    // Summaries keep about half of a session's own conversation.
    let runtime = Arc::new(MemoryRuntime::new(MemoryConfig {
        base_tokens: 1_500,
        summary: SummaryModel {
            ratio: 0.5,
            ..SummaryModel::default()
        },
        ..MemoryConfig::default()
    }));

    // ===== The supervisor: agent types, a journal if asked for, then work =====
    let mut builder = Supervisor::builder(runtime.clone())
        .agent_type(AgentType::new("sonnet", 20_000))
        .agent_type(AgentType::new("local-qwen", 8_000));
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, path] = &args[..]
        && flag == "--journal"
    {
        // The simulated agents live in this process and number their sessions from 1, so
        // they cannot be recovered by a later run: start each run with a new journal.
        if std::path::Path::new(path).exists() {
            eprintln!("{path} exists; give a new file (the simulated agents do not outlive a run)");
            std::process::exit(2);
        }
        let journal = Journal::open(path).expect("the journal opens");
        builder = builder.journal(journal).expect("the journal reads");
    }
    let mut events = builder.subscribe();
    let supervisor = builder.start();
    let items = [(1, "sonnet"), (2, "sonnet"), (3, "local-qwen")];
    for (id, agent_type) in items {
        let item = WorkItem {
            id: WorkItemId(id),
            agent_type: agent_type.into(),
            text: format!("issue #{id}: make the parser accept trailing commas"),
        };
        supervisor.submit(item).await.expect("known agent type");
    }

    // ===== The orchestrator: one task per session, events printed as they come =====
    let progress = Arc::new(Mutex::new(HashMap::new()));
    let mut done = 0;
    while done < items.len() {
        let Some(event) = events.recv().await else {
            break;
        };
        print_event(&event);
        match event {
            FleetEvent::SessionStarted {
                session, work_item, ..
            } => {
                let (supervisor, runtime, progress) =
                    (supervisor.clone(), runtime.clone(), progress.clone());
                tokio::spawn(agent(supervisor, runtime, progress, session, work_item));
            }
            FleetEvent::WorkItemDone { .. } | FleetEvent::DeadLetter { .. } => done += 1,
            _ => {}
        }
    }

    // ===== Done: close everything =====
    let report = supervisor.shutdown(Duration::from_secs(5)).await;
    println!(
        "shutdown: clean = {}, sessions left = {}",
        report.clean, report.remaining
    );
}

/// One session's agent: each turn, a model response adds some tokens to its context and the
/// new usage is reported; baton compacts at 80% and rotates at 95%, and `report_and_settle`
/// returns once that is over. After `TURNS` turns on the work item (its sessions' turns
/// together), the work is done.
async fn agent(
    supervisor: SupervisorHandle,
    runtime: Arc<MemoryRuntime>,
    progress: Arc<Mutex<HashMap<WorkItemId, u64>>>,
    session: baton::SessionId,
    item: WorkItemId,
) {
    let Some(handle) = supervisor.session(session).await else {
        return;
    };
    loop {
        let turn = {
            let mut progress = progress.lock().expect("lock");
            let turn = progress.entry(item).or_default();
            *turn += 1;
            *turn
        };
        if turn > TURNS {
            handle.close();
            return;
        }
        let Ok(usage) = runtime.grow(session, 250 + (turn * 37) % 400) else {
            return;
        };
        match handle
            .report_and_settle(usage.used(), None, UsageSource::Reported)
            .await
        {
            Ok(Settled::Normal) => {}
            // The successor's own start event gives it its agent task.
            Ok(Settled::Rotated { .. } | Settled::Closed) | Err(_) => return,
        }
    }
}

fn print_event(event: &FleetEvent) {
    match event {
        FleetEvent::SessionStarted {
            session,
            agent_type,
            work_item,
        } => {
            println!("started    {session} ({agent_type}) for {work_item}")
        }
        FleetEvent::Compaction(c) => println!(
            "compacted  {} {} -> {} tokens ({:.1}% freed)",
            c.session, c.before_tokens, c.after_tokens, c.reduction_percent
        ),
        FleetEvent::Rotation(r) => println!(
            "rotated    {} -> {} for {} ({}, {:.1}% full, handoff {} tokens)",
            r.old_session,
            r.new_session
                .map(|s| s.to_string())
                .unwrap_or_else(|| "none".into()),
            r.work_item,
            r.reason,
            r.before_percent,
            r.handoff_tokens
        ),
        FleetEvent::Transition(_) => {}
        other => println!("event      {other:?}"),
    }
}
