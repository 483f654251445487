//! Honest token accounting: what a provider says a session occupies, what baton counts itself,
//! and how large the window really is.
//!
//! Most trigger bugs in agents come from wrong usage figures: reading only `input_tokens` on
//! Anthropic with caching on, trusting Ollama's `prompt_tokens: 0` on a cache hit, summing usage
//! across calls (a billing total, not occupancy), or taking the window from the wrong place. This
//! module gets each of those right and says which source produced every figure.
//!
//! | module | what it is for |
//! | --- | --- |
//! | [`reported`] | [`ReportedUsage`]: a response's `usage` object of any common provider, normalised to prompt + completion |
//! | [`window`] | [`Window`]: the window from `/v1/models`, llama.cpp `/props`, a table of well-known models, or the user; the slot count |
//! | [`estimate`] | [`Encoding`], [`Message`], [`PromptCounter`]: a local count with tiktoken and OpenAI's chat formula, incremental |
//! | [`calibration`] | [`Calibration`]: `reported ~ estimate + a + b * messages`, refitted from every report |
//! | [`tracker`] | [`UsageTracker`]: one session's accounting; flags untrustworthy reports and falls back to the estimate |
//!
//! Only bodies are parsed here: fetching `/v1/models` or `/props` over HTTP belongs to the chat
//! client ([`ChatClient::window`](crate::runtime::chat::ChatClient::window)), which hands the
//! bodies to [`window_from_props`] and [`window_from_models`].
//!
//! The guarantees (which figure is occupancy for each provider, when a figure is distrusted) are
//! stated in `docs/semantics.md`.

pub mod calibration;
pub mod estimate;
pub mod reported;
pub mod tracker;
pub mod window;

pub use calibration::Calibration;
pub use estimate::{Encoding, Message, MessageError, PromptCounter, Synced, ToolCall};
pub use reported::{
    Provider, ProviderError, ReportedUsage, detect_provider, parse_usage, parse_usage_json,
};
pub use tracker::{Distrust, Reading, UsageTracker};
pub use window::{
    Window, WindowError, WindowSource, known_window, resolve_window, slots_from_props,
    window_from_models, window_from_props,
};
