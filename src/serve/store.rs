//! What `baton serve` keeps in the journal file: the agent types it was given (at start or over
//! HTTP), so that a restarted server knows them before it recovers; and the floor of the session
//! ids it proposes ([`IdFloor`]), so that a restart never proposes an id used before a crash.
//!
//! The supervisor's journal records work items and events, not agent types: an embedding program
//! passes its types to the builder each time. A server learns its types from its clients, so it
//! keeps them itself, in a table of its own (`baton_serve_agent_types`, one JSON row per name)
//! in the same SQLite file, through a connection of its own (the journal's writer thread keeps
//! its own; SQLite's WAL lets both write, one transaction at a time), as `baton run` keeps its
//! ledger.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, params};
use thiserror::Error;

use crate::vocab::AgentType;

/// A failure of the agent-type table.
#[derive(Debug, Error)]
#[error("{path}: the served agent types: {message}")]
pub struct StoreError {
    /// The journal file.
    pub path: PathBuf,
    /// What SQLite or the decoder said.
    pub message: String,
}

/// The agent types a server keeps in its journal file.
#[derive(Debug)]
pub struct AgentTypeStore {
    /// The server's own connection to the journal file.
    conn: Mutex<Connection>,
    /// The file, for errors.
    path: PathBuf,
    /// Held from a change's acceptance by the supervisor to its row's write, so that rows are
    /// written in the order the supervisor accepted the changes.
    writes: tokio::sync::Mutex<()>,
}

impl AgentTypeStore {
    /// Opens the table in the journal file at `path` (created if missing). Open the
    /// [`Journal`](crate::Journal) first: it refuses files that are not baton journals.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = connect(
            path,
            "CREATE TABLE IF NOT EXISTS baton_serve_agent_types (
                 name TEXT PRIMARY KEY,
                 agent_type TEXT NOT NULL);",
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
            path: path.to_owned(),
            writes: tokio::sync::Mutex::new(()),
        })
    }

    /// Every stored agent type, by name. A row that no longer decodes (written by another
    /// version, or edited by hand) is an error: starting without a type the journal's items
    /// need would leave them unrecovered.
    pub fn load(&self) -> Result<Vec<AgentType>, StoreError> {
        let err = error(&self.path);
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn
            .prepare("SELECT name, agent_type FROM baton_serve_agent_types ORDER BY name")
            .map_err(&err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(&err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(&err)?;
        rows.into_iter()
            .map(|(name, json)| {
                serde_json::from_str(&json).map_err(|e| StoreError {
                    path: self.path.clone(),
                    message: format!("agent type {name:?} does not decode: {e}"),
                })
            })
            .collect()
    }

    /// Held across accepting a change and storing it: changes are stored in the order they
    /// were accepted.
    pub async fn writing(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.writes.lock().await
    }

    /// Stores `agent` (replacing the row of the same name), durably.
    pub fn put(&self, agent: &AgentType) -> Result<(), StoreError> {
        let json = serde_json::to_string(agent).map_err(|e| StoreError {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute(
            "INSERT INTO baton_serve_agent_types (name, agent_type) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET agent_type = excluded.agent_type",
            params![&*agent.name, json],
        )
        .map_err(error(&self.path))?;
        Ok(())
    }
}

/// The floor of the session ids a server may propose: every id below it may have been proposed
/// before, by this server or one that crashed. Kept in the journal file (table
/// `baton_serve_ids`), raised a block at a time before ids are proposed
/// ([`IdReservation`](super::queue::IdReservation)), and read at start.
#[derive(Debug)]
pub struct IdFloor {
    /// The server's own connection to the journal file.
    conn: Mutex<Connection>,
    /// The file, for errors.
    path: PathBuf,
}

/// The row of the floor in `baton_serve_ids`.
const PROPOSALS: &str = "session_proposals";

impl IdFloor {
    /// Opens the floor in the journal file at `path` (the table is created if missing).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = connect(
            path,
            "CREATE TABLE IF NOT EXISTS baton_serve_ids (
                 name TEXT PRIMARY KEY,
                 value INTEGER NOT NULL);",
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
            path: path.to_owned(),
        })
    }

    /// The floor: 0 when nothing was ever reserved.
    pub fn load(&self) -> Result<u64, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let value: Option<i64> = conn
            .query_row(
                "SELECT value FROM baton_serve_ids WHERE name = ?1",
                [PROPOSALS],
                |r| r.get(0),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(error(&self.path))?;
        u64::try_from(value.unwrap_or(0)).map_err(|_| StoreError {
            path: self.path.clone(),
            message: "the session id floor is negative".into(),
        })
    }
}

impl super::queue::IdReservation for IdFloor {
    fn reserve(&self, until: u64) -> Result<(), String> {
        let until = i64::try_from(until).map_err(|_| "session ids are exhausted".to_owned())?;
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute(
            "INSERT INTO baton_serve_ids (name, value) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET value = max(value, excluded.value)",
            params![PROPOSALS, until],
        )
        .map(drop)
        .map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

/// The server's own connection to the journal file at `path`, waiting up to 30 s on the
/// journal writer's locks, with `table` created if missing.
fn connect(path: &Path, table: &str) -> Result<Connection, StoreError> {
    let err = error(path);
    let conn = Connection::open(path).map_err(&err)?;
    conn.busy_timeout(Duration::from_secs(30)).map_err(&err)?;
    conn.execute_batch(table).map_err(&err)?;
    Ok(conn)
}

fn error(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;
    use crate::serve::queue::IdReservation;

    #[test]
    fn the_id_floor_only_rises_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let floor = IdFloor::open(&path).unwrap();
        assert_eq!(floor.load().unwrap(), 0);
        floor.reserve(2048).unwrap();
        floor.reserve(1024).unwrap();
        drop(floor);
        assert_eq!(IdFloor::open(&path).unwrap().load().unwrap(), 2048);
    }

    #[test]
    fn stored_agent_types_survive_a_reopen_and_a_put_replaces_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let store = AgentTypeStore::open(&path).unwrap();
        let coder = AgentType::new("coder", 1000);
        store.put(&coder).unwrap();
        store.put(&AgentType::new("alpha", 2000)).unwrap();
        let stricter = coder
            .clone()
            .with_policy(Policy::builder().compact_at(0.7).build().unwrap());
        store.put(&stricter).unwrap();
        drop(store);
        let again = AgentTypeStore::open(&path).unwrap().load().unwrap();
        assert_eq!(again, vec![AgentType::new("alpha", 2000), stricter]);
    }
}
