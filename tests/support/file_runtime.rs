//! An agent runtime whose state lives in a file, so that it outlives the process that uses it:
//! the stand-in for real agents (which do not die with baton) in the crash tests.
//!
//! Every call that changes something rewrites the file (write a temporary, rename over) before
//! it returns, so a process killed at any moment leaves the file as of its last completed call.
//! A hook is called after each call's effect is saved and before the call returns: the crash
//! tests stop the process there ("the runtime acted, baton did not hear back").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use baton::runtime::{AgentRuntime, RuntimeError};
use baton::{
    AgentType, Handoff, SessionId, SpawnKey, Summary, SummaryPurpose, Usage, UsageSource, WorkItem,
};
use serde::{Deserialize, Serialize};

/// A simulated session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sim {
    /// Its agent type's name.
    pub agent_type: String,
    /// Its window.
    pub window: u64,
    /// Tokens in use.
    pub used: u64,
    /// Tokens it started with (prompt, work item, handoff): a summary's floor.
    pub base: u64,
    /// The work item it was given.
    pub item: Option<WorkItem>,
    /// The handoff it was given.
    pub handoff: Option<Handoff>,
    /// Whether it was closed.
    pub closed: bool,
    /// Histories replaced.
    pub replaced: u32,
    /// Assign calls that reached it.
    pub assigns: u32,
    /// The spawn key that made it.
    pub key: u64,
}

/// Everything the runtime knows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The last session id handed out (ids are never reused, across processes too).
    pub next_id: u64,
    /// Spawn key -> the session it made.
    pub spawned: BTreeMap<u64, u64>,
    /// Spawn key -> spawn calls made with it.
    pub spawn_calls: BTreeMap<u64, u32>,
    /// Every session ever spawned, by id.
    pub sessions: BTreeMap<u64, Sim>,
}

impl State {
    pub fn load(path: &Path) -> State {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).expect("runtime state parses"),
            Err(_) => State::default(),
        }
    }

    pub fn open_sessions(&self) -> Vec<SessionId> {
        self.sessions
            .iter()
            .filter(|(_, s)| !s.closed)
            .map(|(id, _)| SessionId(*id))
            .collect()
    }
}

pub type Hook = Arc<dyn Fn(&str) + Send + Sync>;

pub struct FileRuntime {
    /// The state file, rewritten after every change.
    path: PathBuf,
    /// The state, as last saved.
    state: Mutex<State>,
    /// Called after each call took effect, before it returns (where crash tests stop).
    hook: Hook,
    /// Tokens a fresh session starts with.
    base_tokens: u64,
}

fn tokens_of(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

impl FileRuntime {
    pub fn open(path: PathBuf, hook: Hook) -> Self {
        let state = State::load(&path);
        Self {
            path,
            state: Mutex::new(state),
            hook,
            base_tokens: 100,
        }
    }

    pub fn state(&self) -> State {
        self.state.lock().unwrap().clone()
    }

    fn save(&self, state: &State) {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(state).unwrap()).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    /// Changes a live session and saves, then calls the hook.
    fn change<T>(
        &self,
        session: SessionId,
        point: &str,
        f: impl FnOnce(&mut Sim) -> T,
    ) -> Result<T, RuntimeError> {
        let out = {
            let mut st = self.state.lock().unwrap();
            let out = match st.sessions.get_mut(&session.0) {
                Some(s) if !s.closed => f(s),
                _ => return Err(RuntimeError::UnknownSession(session)),
            };
            self.save(&st);
            out
        };
        (self.hook)(point);
        Ok(out)
    }

    /// The agent works: its context grows to `used` tokens.
    pub fn grow_to(&self, session: SessionId, used: u64) -> Result<Usage, RuntimeError> {
        let mut st = self.state.lock().unwrap();
        let s = match st.sessions.get_mut(&session.0) {
            Some(s) if !s.closed => s,
            _ => return Err(RuntimeError::UnknownSession(session)),
        };
        s.used = s.used.max(used);
        let usage = Usage::new(s.used, s.window, UsageSource::Reported).unwrap();
        self.save(&st);
        Ok(usage)
    }
}

#[async_trait]
impl AgentRuntime for FileRuntime {
    async fn summarise(
        &self,
        session: SessionId,
        purpose: SummaryPurpose,
    ) -> Result<Summary, RuntimeError> {
        let summary = {
            let st = self.state.lock().unwrap();
            match st.sessions.get(&session.0) {
                Some(s) if !s.closed => {
                    let tokens =
                        ((s.used.saturating_sub(s.base) as f64 * 0.1) as u64).clamp(20, 4000);
                    Summary {
                        text: format!("{purpose:?} summary of {session}: {tokens} tokens"),
                        tokens,
                    }
                }
                _ => return Err(RuntimeError::UnknownSession(session)),
            }
        };
        let point = match purpose {
            SummaryPurpose::Compaction => "summarise_compaction",
            SummaryPurpose::Handoff => "summarise_handoff",
        };
        (self.hook)(point);
        Ok(summary)
    }

    async fn replace_history(
        &self,
        session: SessionId,
        summary: &Summary,
    ) -> Result<u64, RuntimeError> {
        self.change(session, "replace_history", |s| {
            s.used = s.base + summary.tokens;
            s.replaced += 1;
            s.used
        })
    }

    async fn close(&self, session: SessionId) -> Result<(), RuntimeError> {
        self.change(session, "close", |s| s.closed = true)
    }

    async fn spawn(&self, agent: &AgentType, key: SpawnKey) -> Result<SessionId, RuntimeError> {
        let id = {
            let mut st = self.state.lock().unwrap();
            *st.spawn_calls.entry(key.0).or_default() += 1;
            let id = match st.spawned.get(&key.0) {
                Some(id) => *id,
                None => {
                    st.next_id += 1;
                    let id = st.next_id;
                    st.spawned.insert(key.0, id);
                    st.sessions.insert(
                        id,
                        Sim {
                            agent_type: agent.name.to_string(),
                            window: agent.window,
                            used: self.base_tokens,
                            base: self.base_tokens,
                            item: None,
                            handoff: None,
                            closed: false,
                            replaced: 0,
                            assigns: 0,
                            key: key.0,
                        },
                    );
                    id
                }
            };
            self.save(&st);
            id
        };
        (self.hook)("spawn");
        Ok(SessionId(id))
    }

    async fn assign(
        &self,
        session: SessionId,
        item: &WorkItem,
        handoff: Option<&Handoff>,
    ) -> Result<(), RuntimeError> {
        self.change(session, "assign", |s| {
            let added = tokens_of(&item.text) + handoff.map_or(0, |h| h.tokens);
            s.used += added;
            s.base += added;
            s.item = Some(item.clone());
            s.handoff = handoff.cloned();
            s.assigns += 1;
        })
    }
}
