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
use std::sync::Arc;
use std::time::Duration;

use baton::runtime::memory::{MemoryConfig, MemoryRuntime, SummaryModel};
use baton::{AgentType, FleetEvent, Journal, Supervisor, UsageSource, WorkItem, WorkItemId};

#[actix::main]
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
    let supervisor = builder.start();
    let mut events = supervisor.subscribe();
    for (id, agent_type) in [(1, "sonnet"), (2, "sonnet"), (3, "local-qwen")] {
        let item = WorkItem {
            id: WorkItemId(id),
            agent_type: agent_type.into(),
            text: format!("issue #{id}: make the parser accept trailing commas"),
        };
        supervisor.submit(item).await.expect("known agent type");
    }

    // ===== The orchestrator loop: agents work, usage is reported =====
    let mut holder = HashMap::new();
    for turn in 0..60u64 {
        while let Ok(event) = events.try_recv() {
            print_event(&event);
            if let FleetEvent::SessionStarted {
                session, work_item, ..
            } = event
            {
                holder.insert(work_item, session);
            }
        }
        for session in holder.values() {
            // A model response added some tokens to this session's context.
            if let Ok(usage) = runtime.grow(*session, 250 + (turn * 37) % 400) {
                let _ = supervisor
                    .report_usage(*session, usage.used(), None, UsageSource::Reported)
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // ===== Done: close everything =====
    let report = supervisor.shutdown(Duration::from_secs(5)).await;
    while let Ok(event) = events.try_recv() {
        print_event(&event);
    }
    println!(
        "shutdown: clean = {}, sessions left = {}",
        report.clean, report.remaining
    );
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
