//! The summary request of a compaction, budgeted up front so that it never overflows.
//!
//! A compaction asks a model to summarise the part of a history that a [`Split`] does not keep.
//! That request must itself fit the summariser's window, and finding out by error would waste
//! the one moment when the window is tight. So [`SummaryPlan::build`] decides everything before
//! anything is sent:
//!
//! 1. The **input budget** is the window minus the tokens reserved for the summary (also sent
//!    as `max_tokens`) minus a safety margin for the difference between the local
//!    [`TokenCounter`] and the server's tokenizer ([`SummaryBudget`]).
//! 2. Every request carries the instructions, the agent's system prompt and its latest user
//!    message (each shortened middle-out to a fixed share of the budget: they say what the goal
//!    is), and a transcript of summarised messages.
//! 3. If the transcript does not fit, old **tool outputs are shortened first**, oldest first, each
//!    to a small head and tail with the middle cut out (tool outputs are the bulk of an agent's
//!    history and the least worth keeping word for word).
//! 4. If it still does not fit, the transcript is **summarised in chunks**: cut at segment
//!    boundaries (a tool call always travels with its result), each chunk summarised in turn
//!    together with the summary of the chunks before it (that running summary has its own
//!    reserved share). A single segment larger than a chunk is shortened middle-out to fit.
//!
//! Every request is counted after it is assembled, and [`SummaryPlan::messages`] never returns
//! one above the input budget: the bound is checked, not assumed.

use serde::Serialize;
use thiserror::Error;

use super::client::ChatClient;
use super::error::ChatError;
use super::history::{History, Split, TokenCounter, request_tokens};
use super::wire::{ChatMessage, ChatRequest, Role, UsageReading};

/// What the summariser is asked to write. Its headings are what a successor needs to continue
/// without the history.
pub const SUMMARY_INSTRUCTIONS: &str = "\
You compact the working memory of an AI agent. The conversation you are shown will be deleted. \
The agent will continue from your summary alone, together with what it keeps: its instructions, \
its assignment and the user's latest request. Write the summary it needs, under these headings:
1. Goal: what the user wants, and what finished looks like.
2. Completed work: what has been done so far, and the results.
3. Decisions: choices made, and why.
4. Patterns: conventions, approaches and facts learned about the code or the environment.
5. Open problems: what is failing or unresolved, with the exact error messages.
6. Next steps: the concrete next actions, in order.
7. Files: every file path that was touched or matters, exactly as written.
Quote file paths, commands, identifiers and error messages exactly. Be brief and factual. Never \
invent anything that is not in the conversation.";

/// Tokens an old tool output is shortened to in step 3.
pub const TOOL_OUTPUT_KEEP: usize = 48;

/// The smallest transcript share a request may have; below it, summarising is pointless.
const MIN_TRANSCRIPT: usize = 64;

/// Introduces the running summary in the requests after the first.
const RUNNING_HEADER: &str = "Summary of the earlier parts:\n";

/// How big a summary request may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SummaryBudget {
    /// The summariser's window, in tokens (the same model's window, usually).
    pub window: usize,
    /// Tokens reserved for the summary; sent as `max_tokens`.
    pub summary_tokens: usize,
    /// Tokens kept free for the local counter's error against the server's tokenizer.
    pub margin: usize,
}

impl SummaryBudget {
    /// A budget for `window`: an eighth of it for the summary (64 to 4,096 tokens) and a tenth
    /// as margin.
    pub fn for_window(window: usize) -> Self {
        Self {
            window,
            summary_tokens: (window / 8).clamp(64, 4096),
            margin: window / 10,
        }
    }

    /// Tokens one request may carry: `window - summary_tokens - margin`.
    pub fn input_tokens(&self) -> usize {
        self.window
            .saturating_sub(self.summary_tokens)
            .saturating_sub(self.margin)
    }
}

/// Why no summary request could be planned.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CompactionError {
    /// The split keeps everything: there is nothing to replace with a summary.
    #[error("nothing to summarise: the split keeps every message")]
    NothingToSummarise,
    /// The window is too small for even a minimal summary request.
    #[error(
        "a summary request needs at least {needed} input tokens, but the budget allows {available}"
    )]
    BudgetTooSmall {
        /// Tokens the smallest useful request takes.
        needed: usize,
        /// [`SummaryBudget::input_tokens`].
        available: usize,
    },
}

/// What building the plan had to give up, for records and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct PlanStats {
    /// Messages summarised.
    pub messages: usize,
    /// Estimated tokens of their transcript before any shortening.
    pub transcript_tokens: usize,
    /// Tool outputs shortened in step 3.
    pub tool_outputs_shortened: usize,
    /// Segments shortened to fit a chunk in step 4.
    pub segments_shortened: usize,
}

/// The summary requests for one compaction, decided up front.
#[derive(Debug, Clone)]
pub struct SummaryPlan {
    /// The budget it was built for.
    budget: SummaryBudget,
    /// The goal context every request carries: system prompt and latest user message, shortened.
    context: String,
    /// The transcript, cut into the parts summarised one after another.
    chunks: Vec<String>,
    /// Tokens reserved in later requests for the summary of the earlier chunks.
    running_reserve: usize,
    /// What was given up.
    stats: PlanStats,
}

/// One rendered message of the transcript.
#[derive(Debug, Clone)]
struct Item {
    /// `[assistant]`, `[tool result c1]`, ...: never shortened.
    header: String,
    /// The text, shortened when needed.
    body: String,
    /// A tool result: the first thing shortened.
    tool_output: bool,
}

impl Item {
    fn render(&self) -> String {
        if self.body.is_empty() {
            self.header.clone()
        } else {
            format!("{}\n{}", self.header, self.body)
        }
    }
}

fn item(message: &ChatMessage) -> Item {
    let mut header = match message.role {
        Role::System => "[system]".to_owned(),
        Role::User => "[user]".to_owned(),
        Role::Assistant => "[assistant]".to_owned(),
        Role::Tool => format!(
            "[tool result {}]",
            message.tool_call_id.as_deref().unwrap_or("?")
        ),
    };
    for call in &message.tool_calls {
        header.push_str(&format!(
            "\n[tool call {}: {}({})]",
            call.id, call.function.name, call.function.arguments
        ));
    }
    Item {
        header,
        body: message.text().to_owned(),
        tool_output: message.role == Role::Tool,
    }
}

fn render_segment(items: &[Item]) -> String {
    items
        .iter()
        .map(Item::render)
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Shortens `text` to at most `max_tokens` by cutting out its middle, which is marked. Keeps
/// the head (what a command printed first) and the tail (where errors and results usually
/// are). Returns `""` when not even the marker fits.
pub fn truncate_middle(text: &str, max_tokens: usize, counter: &dyn TokenCounter) -> String {
    let total = counter.count(text);
    if total <= max_tokens {
        return text.to_owned();
    }
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    let chars = bounds.len() - 1;
    let marker = format!("\n[... about {} tokens cut ...]\n", total - max_tokens);
    let mut keep = chars * max_tokens / total.max(1);
    loop {
        let head = keep.div_ceil(2);
        let tail = keep - head;
        let out = format!(
            "{}{marker}{}",
            &text[..bounds[head]],
            &text[bounds[chars - tail]..]
        );
        if counter.count(&out) <= max_tokens {
            return out;
        }
        if keep == 0 {
            return String::new();
        }
        keep = keep * 4 / 5;
    }
}

impl SummaryPlan {
    /// Plans the summary of what `split` does not keep of `history`, within `budget`.
    pub fn build(
        history: &History,
        split: &Split,
        counter: &dyn TokenCounter,
        budget: SummaryBudget,
    ) -> Result<Self, CompactionError> {
        let messages = history.messages();
        let input = budget.input_tokens();
        // Items per segment, summarised messages only, in order.
        let mut segments: Vec<Vec<Item>> = history
            .segments()
            .into_iter()
            .map(|seg| {
                seg.filter(|&i| split.is_summarised(i))
                    .map(|i| item(&messages[i]))
                    .collect::<Vec<_>>()
            })
            .filter(|items| !items.is_empty())
            .collect();
        let summarised = segments.iter().map(Vec::len).sum();
        if summarised == 0 {
            return Err(CompactionError::NothingToSummarise);
        }

        let context = goal_context(history, split, counter, input);
        let mut plan = Self {
            budget,
            context,
            chunks: Vec::new(),
            running_reserve: 0,
            stats: PlanStats {
                messages: summarised,
                ..PlanStats::default()
            },
        };
        let fixed = plan.cost("", None, 1, 1, counter);
        if fixed + MIN_TRANSCRIPT > input {
            return Err(CompactionError::BudgetTooSmall {
                needed: fixed + MIN_TRANSCRIPT,
                available: input,
            });
        }
        let whole = |segments: &[Vec<Item>]| {
            segments
                .iter()
                .map(|s| render_segment(s))
                .collect::<Vec<_>>()
                .join("\n\n")
        };

        // Step 2: everything in one request. Costs are tracked per segment and added up (cheap);
        // the assembled request is counted for real only when the sum says it fits.
        let join = counter.count("\n\n");
        let mut seg_costs: Vec<usize> = segments
            .iter()
            .map(|s| counter.count(&render_segment(s)))
            .collect();
        plan.stats.transcript_tokens = seg_costs.iter().sum::<usize>() + join * seg_costs.len();
        let estimate = |costs: &[usize]| fixed + costs.iter().sum::<usize>() + join * costs.len();
        let fits_one = |plan: &Self, segments: &[Vec<Item>]| {
            plan.cost(&whole(segments), None, 1, 1, counter) <= input
        };
        let mut fits = estimate(&seg_costs) <= input && fits_one(&plan, &segments);
        if !fits {
            // Step 3: shorten tool outputs, oldest first, until the whole fits.
            'shorten: for seg in 0..segments.len() {
                for it in 0..segments[seg].len() {
                    let item = &mut segments[seg][it];
                    if item.tool_output && counter.count(&item.body) > TOOL_OUTPUT_KEEP {
                        item.body = truncate_middle(&item.body, TOOL_OUTPUT_KEEP, counter);
                        plan.stats.tool_outputs_shortened += 1;
                        seg_costs[seg] = counter.count(&render_segment(&segments[seg]));
                        if estimate(&seg_costs) <= input && fits_one(&plan, &segments) {
                            fits = true;
                            break 'shorten;
                        }
                    }
                }
            }
        }
        if fits {
            plan.chunks = vec![whole(&segments)];
            return Ok(plan);
        }

        // Step 4: chunks, each with room for the running summary of the ones before.
        plan.running_reserve = budget.summary_tokens + counter.count(RUNNING_HEADER) + 2;
        let fixed = plan.cost("", None, 2, 2, counter) + plan.running_reserve;
        if fixed + MIN_TRANSCRIPT > input {
            return Err(CompactionError::BudgetTooSmall {
                needed: fixed + MIN_TRANSCRIPT,
                available: input,
            });
        }
        let mut capacity = input - fixed;
        loop {
            let chunks = plan.pack(&mut segments, capacity, counter);
            let n = chunks.len();
            let worst = chunks
                .iter()
                .enumerate()
                .map(|(i, c)| plan.cost(c, None, i + 1, n, counter) + plan.running_reserve)
                .max()
                .unwrap_or(0);
            if worst <= input {
                plan.chunks = chunks;
                return Ok(plan);
            }
            // The counter is not additive (rendering joins texts): pack tighter and try again.
            capacity = capacity * 9 / 10;
            if capacity < MIN_TRANSCRIPT {
                return Err(CompactionError::BudgetTooSmall {
                    needed: worst,
                    available: input,
                });
            }
        }
    }

    /// Packs segments greedily into chunks of at most `capacity` estimated tokens, shortening
    /// any segment that is larger than a chunk on its own.
    fn pack(
        &mut self,
        segments: &mut [Vec<Item>],
        capacity: usize,
        counter: &dyn TokenCounter,
    ) -> Vec<String> {
        let join = counter.count("\n\n");
        let mut chunks = Vec::new();
        let mut current = String::new();
        let mut current_cost = 0;
        for seg in segments.iter_mut() {
            let mut text = render_segment(seg);
            let mut cost = counter.count(&text);
            if cost > capacity {
                shrink_segment(seg, capacity, counter);
                self.stats.segments_shortened += 1;
                text = render_segment(seg);
                cost = counter.count(&text);
            }
            if current.is_empty() {
                (current, current_cost) = (text, cost);
            } else if current_cost + join + cost <= capacity {
                current.push_str("\n\n");
                current.push_str(&text);
                current_cost += join + cost;
            } else {
                chunks.push(std::mem::replace(&mut current, text));
                current_cost = cost;
            }
        }
        if !current.is_empty() {
            chunks.push(current);
        }
        chunks
    }

    /// Estimated tokens of the request for a transcript part, as [`Self::messages`] builds it.
    fn cost(
        &self,
        chunk: &str,
        running: Option<&str>,
        part: usize,
        parts: usize,
        counter: &dyn TokenCounter,
    ) -> usize {
        request_tokens(counter, &self.assemble(chunk, running, part, parts))
    }

    fn assemble(
        &self,
        chunk: &str,
        running: Option<&str>,
        part: usize,
        parts: usize,
    ) -> Vec<ChatMessage> {
        let mut user = if parts > 1 {
            format!(
                "Summarise part {part} of {parts} of the conversation of an AI agent, merging in \
                 the summary of the earlier parts when one is given.\n\n"
            )
        } else {
            "Summarise the conversation of an AI agent.\n\n".to_owned()
        };
        user.push_str(&self.context);
        if let Some(running) = running {
            user.push_str(RUNNING_HEADER);
            user.push_str(running);
            user.push_str("\n\n");
        }
        user.push_str("Conversation:\n");
        user.push_str(chunk);
        vec![
            ChatMessage::system(SUMMARY_INSTRUCTIONS),
            ChatMessage::user(user),
        ]
    }

    /// The budget the plan was built for.
    pub fn budget(&self) -> SummaryBudget {
        self.budget
    }

    /// Requests the plan makes: 1, or one per chunk.
    pub fn parts(&self) -> usize {
        self.chunks.len()
    }

    /// What building the plan gave up.
    pub fn stats(&self) -> PlanStats {
        self.stats
    }

    /// The messages of request `part` (0-based), with the summary of the earlier parts when
    /// `part > 0`. The running summary is shortened middle-out to its reserve, so the request
    /// never exceeds [`SummaryBudget::input_tokens`] as `counter` counts it.
    pub fn messages(
        &self,
        part: usize,
        running: Option<&str>,
        counter: &dyn TokenCounter,
    ) -> Vec<ChatMessage> {
        let parts = self.chunks.len();
        let chunk = &self.chunks[part.min(parts - 1)];
        let input = self.budget.input_tokens();
        let mut reserve = self
            .running_reserve
            .saturating_sub(counter.count(RUNNING_HEADER) + 2);
        let mut running = running
            .filter(|r| !r.trim().is_empty() && self.running_reserve > 0)
            .map(|r| truncate_middle(r.trim(), reserve, counter));
        loop {
            let messages = self.assemble(chunk, running.as_deref(), part + 1, parts);
            if request_tokens(counter, &messages) <= input || running.is_none() {
                return messages;
            }
            // A counter that is not additive: give the running summary less room.
            reserve = reserve * 4 / 5;
            running = running
                .map(|r| truncate_middle(&r, reserve, counter))
                .filter(|r| !r.is_empty());
        }
    }
}

/// The agent's system prompt and assignment (each up to an eighth of the input budget) and its
/// latest user message (up to a quarter), each shortened middle-out: every summary request
/// needs the goal.
fn goal_context(
    history: &History,
    split: &Split,
    counter: &dyn TokenCounter,
    input: usize,
) -> String {
    let mut out = String::new();
    let messages = history.messages();
    if let Some(i) = split.system {
        out.push_str("The agent's instructions (it keeps them):\n");
        out.push_str(&truncate_middle(messages[i].text(), input / 8, counter));
        out.push_str("\n\n");
    }
    if let Some(i) = split.assignment.filter(|&i| Some(i) != split.latest_user) {
        out.push_str("The agent's assignment (it keeps it):\n");
        out.push_str(&truncate_middle(messages[i].text(), input / 8, counter));
        out.push_str("\n\n");
    }
    if let Some(i) = split.latest_user {
        out.push_str("The user's latest request (it keeps it):\n");
        out.push_str(&truncate_middle(messages[i].text(), input / 4, counter));
        out.push_str("\n\n");
    }
    out
}

/// Shortens a segment's texts, tool outputs first then the rest, until it fits `capacity`.
fn shrink_segment(items: &mut [Item], capacity: usize, counter: &dyn TokenCounter) {
    for tool_outputs_only in [true, false] {
        loop {
            if counter.count(&render_segment(items)) <= capacity {
                return;
            }
            // Cut the longest eligible body by a third.
            let Some(longest) = items
                .iter_mut()
                .filter(|it| !tool_outputs_only || it.tool_output)
                .filter(|it| !it.body.is_empty())
                .max_by_key(|it| counter.count(&it.body))
            else {
                break;
            };
            let tokens = counter.count(&longest.body);
            longest.body = truncate_middle(&longest.body, tokens * 2 / 3, counter);
        }
    }
    // Headers alone (tool call arguments can be long) still too big: cut them as well.
    for it in items.iter_mut() {
        if counter.count(&render_segment(std::slice::from_ref(it))) > capacity / 2 {
            it.header = truncate_middle(&it.header, capacity / 4, counter);
        }
    }
}

/// One request of a summary, as sent and as answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryCall {
    /// Estimated prompt tokens (by the plan's counter).
    pub estimated_tokens: usize,
    /// The server's usage for it.
    pub usage: UsageReading,
}

/// A finished summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatSummary {
    /// The model's text, to put into [`History::rewrite`].
    pub text: String,
    /// Each request made, in order.
    pub calls: Vec<SummaryCall>,
}

/// Sends the plan's requests to `client`, one after another, each chunk's with the summary so
/// far, and returns the last one's text. Temperature 0; `max_tokens` is the budget's
/// `summary_tokens`. An empty summary is a [`ChatError::Malformed`].
pub async fn summarise(
    client: &ChatClient,
    model: &str,
    plan: &SummaryPlan,
    counter: &dyn TokenCounter,
) -> Result<ChatSummary, ChatError> {
    let mut running: Option<String> = None;
    let mut calls = Vec::with_capacity(plan.parts());
    for part in 0..plan.parts() {
        let messages = plan.messages(part, running.as_deref(), counter);
        let estimated_tokens = request_tokens(counter, &messages);
        let max_tokens = u32::try_from(plan.budget.summary_tokens).unwrap_or(u32::MAX);
        let request = ChatRequest::new(model, messages)
            .max_tokens(max_tokens)
            .temperature(0.0);
        let completion = client.chat(&request).await?;
        let text = completion.response.text().trim().to_owned();
        tracing::debug!(
            part,
            parts = plan.parts(),
            estimated_tokens,
            usage = ?completion.usage(),
            "summary part"
        );
        calls.push(SummaryCall {
            estimated_tokens,
            usage: completion.usage(),
        });
        if text.is_empty() {
            return Err(ChatError::Malformed {
                endpoint: client.config().base_url.clone(),
                reason: format!("summary part {} of {} is empty", part + 1, plan.parts()),
            });
        }
        running = Some(text);
    }
    Ok(ChatSummary {
        text: running.unwrap_or_default(),
        calls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::chat::history::CharEstimate;
    use crate::runtime::chat::wire::ChatToolCall;

    fn long_history(turns: usize, tool_output_chars: usize) -> History {
        let mut h = History::new("You are a coding agent working on baton.");
        h.push(ChatMessage::user("Make the test suite pass."));
        for t in 0..turns {
            let id = format!("call_{t}");
            h.push(ChatMessage::tool_calls(vec![ChatToolCall::function(
                &id,
                "bash",
                format!(r#"{{"cmd":"cargo test -- case_{t}"}}"#),
            )]));
            h.push(ChatMessage::tool_result(
                &id,
                format!("line {t}\n").repeat(tool_output_chars / 8),
            ));
            h.push(ChatMessage::assistant(format!(
                "Turn {t}: case_{t} fails in src/case_{t}.rs"
            )));
        }
        h
    }

    #[test]
    fn a_history_that_fits_is_one_request_with_nothing_shortened() {
        let h = long_history(3, 80);
        let c = CharEstimate::default();
        let plan =
            SummaryPlan::build(&h, &h.split(&c, 0), &c, SummaryBudget::for_window(8192)).unwrap();
        assert_eq!(plan.parts(), 1);
        assert_eq!(plan.stats().tool_outputs_shortened, 0);
        let text = plan.messages(0, None, &c)[1].text().to_owned();
        assert!(text.contains("src/case_2.rs") && text.contains("Make the test suite pass."));
    }

    #[test]
    fn tool_outputs_are_shortened_before_chunking() {
        let h = long_history(6, 2400);
        let c = CharEstimate::default();
        let budget = SummaryBudget::for_window(4096);
        let plan = SummaryPlan::build(&h, &h.split(&c, 0), &c, budget).unwrap();
        assert_eq!(plan.parts(), 1);
        assert!(plan.stats().tool_outputs_shortened > 0);
        assert!(request_tokens(&c, &plan.messages(0, None, &c)) <= budget.input_tokens());
        // The assistant's findings survive; only tool outputs were cut.
        assert!(
            plan.messages(0, None, &c)[1]
                .text()
                .contains("src/case_5.rs")
        );
    }

    #[test]
    fn a_long_history_is_chunked_and_every_request_fits() {
        let h = long_history(80, 100);
        let c = CharEstimate::default();
        let budget = SummaryBudget::for_window(2048);
        let plan = SummaryPlan::build(&h, &h.split(&c, 0), &c, budget).unwrap();
        assert!(plan.parts() > 1, "{:?}", plan.stats());
        let running = "summary so far ".repeat(400);
        for part in 0..plan.parts() {
            let m = plan.messages(part, (part > 0).then_some(running.as_str()), &c);
            assert!(request_tokens(&c, &m) <= budget.input_tokens());
        }
    }

    #[test]
    fn a_window_too_small_for_the_instructions_is_refused() {
        let h = long_history(2, 10);
        let c = CharEstimate::default();
        let err = SummaryPlan::build(&h, &h.split(&c, 0), &c, SummaryBudget::for_window(300))
            .unwrap_err();
        assert!(matches!(err, CompactionError::BudgetTooSmall { .. }));
    }

    #[test]
    fn nothing_to_summarise_is_an_error() {
        let mut h = History::new("sys");
        h.push(ChatMessage::user("hello"));
        let c = CharEstimate::default();
        let err = SummaryPlan::build(&h, &h.split(&c, 0), &c, SummaryBudget::for_window(4096))
            .unwrap_err();
        assert_eq!(err, CompactionError::NothingToSummarise);
    }

    #[test]
    fn truncate_middle_keeps_head_and_tail_within_the_limit() {
        let c = CharEstimate::default();
        let text = format!("HEAD {} TAIL", "x".repeat(3000));
        let out = truncate_middle(&text, 100, &c);
        assert!(c.count(&out) <= 100);
        assert!(out.starts_with("HEAD") && out.ends_with("TAIL") && out.contains("cut"));
        assert_eq!(truncate_middle("short", 100, &c), "short");
        assert_eq!(truncate_middle(&text, 1, &c), "");
        let multibyte = "é".repeat(900);
        assert!(c.count(&truncate_middle(&multibyte, 50, &c)) <= 50);
    }
}
