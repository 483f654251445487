//! Properties of history rewriting and summary planning, over random agent histories: a tool
//! call is never separated from its results, and no summary request exceeds its budget.

use std::collections::BTreeSet;

use baton::runtime::chat::{
    CharEstimate, ChatMessage, ChatToolCall, CompactionError, History, Role, SummaryBudget,
    SummaryPlan, TokenCounter, request_tokens,
};
use proptest::prelude::*;

/// One step of a generated conversation.
#[derive(Debug, Clone)]
enum Step {
    User(String),
    Assistant(String),
    /// An assistant message calling tools, followed by one result per call (as servers require).
    ToolRound(Vec<(String, String)>),
    /// An assistant message calling a tool whose result has not arrived yet.
    PendingCall(String),
}

/// Up to `max_words` words, drawn cheaply from a fixed list by a seed (a regex strategy per word
/// makes generation, not the code under test, dominate the run time).
fn text(max_words: usize) -> impl Strategy<Value = String> {
    const WORDS: [&str; 12] = [
        "cargo", "test", "failed", "src", "parse", "rs", "error", "the", "fn", "ok", "assert", "é",
    ];
    (0..max_words, any::<u64>()).prop_map(|(n, mut seed)| {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            out.push(WORDS[(seed >> 33) as usize % WORDS.len()]);
        }
        out.join(" ")
    })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => text(60).prop_map(Step::User),
        3 => text(120).prop_map(Step::Assistant),
        // Rare and long, so that single segments must sometimes be cut to fit a chunk.
        1 => text(2500).prop_map(Step::Assistant),
        4 => prop::collection::vec((text(10), text(400)), 1..4).prop_map(Step::ToolRound),
        1 => text(10).prop_map(Step::PendingCall),
    ]
}

fn history() -> impl Strategy<Value = History> {
    (
        any::<bool>(),
        text(40),
        prop::collection::vec(step(), 0..40),
    )
        .prop_map(|(with_system, system, steps)| {
            let mut h = if with_system {
                History::new(system)
            } else {
                History::default()
            };
            let mut id = 0;
            for s in steps {
                match s {
                    Step::User(t) => h.push(ChatMessage::user(t)),
                    Step::Assistant(t) => h.push(ChatMessage::assistant(t)),
                    Step::ToolRound(calls) => {
                        let ids: Vec<String> =
                            (0..calls.len()).map(|k| format!("c{}", id + k)).collect();
                        id += calls.len();
                        h.push(ChatMessage::tool_calls(
                            calls
                                .iter()
                                .zip(&ids)
                                .map(|((args, _), id)| {
                                    ChatToolCall::function(id, "bash", args.clone())
                                })
                                .collect(),
                        ));
                        for ((_, output), id) in calls.iter().zip(&ids) {
                            h.push(ChatMessage::tool_result(id, output.clone()));
                        }
                    }
                    Step::PendingCall(args) => {
                        h.push(ChatMessage::tool_calls(vec![ChatToolCall::function(
                            format!("c{id}"),
                            "bash",
                            args,
                        )]));
                        id += 1;
                    }
                }
            }
            h
        })
}

/// For every call id: the index of its call and of its result, where present.
fn calls_and_results(messages: &[ChatMessage]) -> Vec<(String, Option<usize>, Option<usize>)> {
    let mut ids = BTreeSet::new();
    for m in messages {
        ids.extend(m.tool_calls.iter().map(|c| c.id.clone()));
        ids.extend(m.tool_call_id.clone());
    }
    ids.into_iter()
        .map(|id| {
            let call = messages
                .iter()
                .position(|m| m.tool_calls.iter().any(|c| c.id == id));
            let result = messages
                .iter()
                .position(|m| m.tool_call_id.as_deref() == Some(&*id));
            (id, call, result)
        })
        .collect()
}

/// A counter that is not a character estimate, to show the plan does not depend on one.
fn words(text: &str) -> usize {
    text.split_whitespace().count() + text.len() / 16
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// In the rewritten history, a call is kept exactly when its result is, and every result
    /// follows its call within the same run of tool messages.
    #[test]
    fn a_rewrite_never_separates_a_tool_call_from_its_result(
        h in history(),
        keep in 0usize..600,
        cpt in 1usize..5,
    ) {
        let counter = CharEstimate { chars_per_token: cpt };
        let split = h.split(&counter, keep);
        let out = h.rewrite(&split, "the summary");
        let before = calls_and_results(h.messages());
        let after = calls_and_results(out.messages());
        for (id, call, result) in &before {
            let kept_call = after.iter().any(|(i, c, _)| i == id && c.is_some());
            let kept_result = after.iter().any(|(i, _, r)| i == id && r.is_some());
            if call.is_some() && result.is_some() {
                prop_assert_eq!(kept_call, kept_result, "call {} split from its result", id);
            }
        }
        let msgs = out.messages();
        for (id, call, result) in &after {
            if let Some(r) = result {
                let c = call.expect("a kept result has its call");
                prop_assert!(c < *r, "result of {} before its call", id);
                prop_assert!(msgs[c + 1..*r].iter().all(|m| m.role == Role::Tool));
            }
        }
    }

    /// The rewrite keeps the system prompt first, then the summary, then the latest user
    /// message, and ends with the kept tail verbatim.
    #[test]
    fn a_rewrite_keeps_system_prompt_summary_and_latest_user_message(
        h in history(),
        keep in 0usize..600,
    ) {
        let counter = CharEstimate::default();
        let split = h.split(&counter, keep);
        let out = h.rewrite(&split, "the summary");
        let msgs = out.messages();
        let mut at = 0;
        if let Some(s) = split.system {
            prop_assert_eq!(&msgs[0], &h.messages()[s]);
            at = 1;
        }
        prop_assert!(msgs[at].text().ends_with("the summary"));
        if let Some(u) = split.latest_user {
            prop_assert_eq!(&msgs[at + 1], &h.messages()[u]);
        }
        let tail = &h.messages()[split.tail.clone()];
        prop_assert_eq!(&msgs[msgs.len() - tail.len()..], tail);
    }

    /// Every request of a plan, first and later parts alike (with a running summary of any
    /// length), fits the input budget; a call and its result always land in the same chunk.
    #[test]
    fn a_summary_request_never_exceeds_its_budget(
        h in history(),
        keep in 0usize..400,
        window in 3072usize..8192,
        cpt in 2usize..5,
        running_words in 0usize..3000,
        use_words in any::<bool>(),
    ) {
        let chars = CharEstimate { chars_per_token: cpt };
        let counter: &dyn TokenCounter = if use_words { &words } else { &chars };
        let split = h.split(counter, keep);
        let budget = SummaryBudget::for_window(window);
        let plan = match SummaryPlan::build(&h, &split, counter, budget) {
            Ok(plan) => plan,
            Err(CompactionError::NothingToSummarise) => {
                prop_assert!((0..h.messages().len()).all(|i| !split.is_summarised(i)));
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
        };
        let running = "word ".repeat(running_words);
        let mut chunks = Vec::new();
        for part in 0..plan.parts() {
            let messages = plan.messages(part, (part > 0).then_some(running.as_str()), counter);
            let tokens = request_tokens(counter, &messages);
            prop_assert!(tokens <= budget.input_tokens(), "part {}: {} > {}", part, tokens, budget.input_tokens());
            chunks.push(messages[1].text().to_owned());
        }
        for (id, call, result) in calls_and_results(h.messages()) {
            if let (Some(c), Some(r)) = (call, result)
                && split.is_summarised(c)
            {
                prop_assert!(split.is_summarised(r));
                let with_call: Vec<usize> = (0..chunks.len()).filter(|&i| chunks[i].contains(&format!("[tool call {id}:"))).collect();
                let with_result: Vec<usize> = (0..chunks.len()).filter(|&i| chunks[i].contains(&format!("[tool result {id}]"))).collect();
                prop_assert_eq!(with_call.len(), 1);
                prop_assert_eq!(with_call, with_result);
            }
        }
    }
}
