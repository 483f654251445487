//! What `baton serve` keeps in the journal's store: the agent types it was given (at start or
//! over HTTP), so that a restarted server knows them before it recovers; and the floor of the
//! session ids it proposes ([`IdFloor`]), so that a restart never proposes an id used before a
//! crash.
//!
//! The supervisor's journal records work items and events, not agent types: an embedding program
//! passes its types to the builder each time. A server learns its types from its clients, so it
//! keeps them itself, in a table of its own (`baton_serve_agent_types`, one JSON row per name)
//! in the same store as the journal (the SQLite file, or the PostgreSQL database), through a
//! connection of its own (the journal's writer thread keeps its own; SQLite's WAL lets both
//! write, one transaction at a time), as `baton run` keeps its ledger.
//!
//! On PostgreSQL several servers share the tables: the id floor also hands out whole blocks of
//! ids atomically ([`IdFloor::reserve_block`]), so that no two nodes propose the same id.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::Connection;
use thiserror::Error;

use crate::journal::JournalTarget;
use crate::journal::db::{Db, DbError, Val, vals};
use crate::journal::pg::{self, PgConn};
use crate::vocab::AgentType;

/// A failure of the agent-type table or the id floor.
#[derive(Debug, Error)]
#[error("{path}: the served agent types: {message}")]
pub struct StoreError {
    /// The journal file (or the PostgreSQL URL, without its password).
    pub path: PathBuf,
    /// What the database or the decoder said.
    pub message: String,
}

/// A server's own connection to the journal's store.
type Conn = Mutex<Box<dyn Db + Send>>;

/// The agent types a server keeps in its journal's store.
pub struct AgentTypeStore {
    /// The server's own connection to the journal's store.
    conn: Conn,
    /// The file (or the redacted URL), for errors.
    path: PathBuf,
    /// Held from a change's acceptance by the supervisor to its row's write, so that rows are
    /// written in the order the supervisor accepted the changes.
    writes: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for AgentTypeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentTypeStore")
            .field("path", &self.path)
            .finish()
    }
}

const AGENT_TYPES: &str = "CREATE TABLE IF NOT EXISTS baton_serve_agent_types (
    name TEXT PRIMARY KEY,
    agent_type TEXT NOT NULL);";

impl AgentTypeStore {
    /// Opens the table in the journal file at `path` (created if missing). Open the
    /// [`Journal`](crate::Journal) first: it refuses files that are not baton journals.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_target(&JournalTarget::File(path.to_owned()))
    }

    /// Opens the table in the journal's store at `target` (created if missing). Open the
    /// [`Journal`](crate::Journal) first: it refuses stores that are not baton journals.
    pub fn open_target(target: &JournalTarget) -> Result<Self, StoreError> {
        let (conn, path) = connect(target, AGENT_TYPES, AGENT_TYPES)?;
        Ok(Self {
            conn,
            path,
            writes: tokio::sync::Mutex::new(()),
        })
    }

    /// Every stored agent type, by name. A row that no longer decodes (written by another
    /// version, or edited by hand) is an error: starting without a type the journal's items
    /// need would leave them unrecovered.
    pub fn load(&self) -> Result<Vec<AgentType>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let rows = conn
            .query(
                "SELECT name, agent_type FROM baton_serve_agent_types ORDER BY name",
                &[],
            )
            .map_err(error(&self.path))?;
        rows.rows
            .iter()
            .map(|r| {
                let read = |i| {
                    r.get::<String>(i).map_err(|e| StoreError {
                        path: self.path.clone(),
                        message: format!("column {}: {}", e.column, e.message),
                    })
                };
                let (name, json) = (read(0)?, read(1)?);
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
            &vals![&*agent.name, json],
        )
        .map_err(error(&self.path))?;
        Ok(())
    }
}

/// The floor of the session ids a server may propose: every id below it may have been proposed
/// before, by this server or one that crashed (or, on PostgreSQL, by another node). Kept in the
/// journal's store (table `baton_serve_ids`), raised a block at a time before ids are proposed
/// ([`IdReservation`](super::queue::IdReservation)), and read at start.
pub struct IdFloor {
    /// The server's own connection to the journal's store.
    conn: Conn,
    /// The file (or the redacted URL), for errors.
    path: PathBuf,
}

impl std::fmt::Debug for IdFloor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdFloor").field("path", &self.path).finish()
    }
}

/// The row of the floor in `baton_serve_ids`.
const PROPOSALS: &str = "session_proposals";

impl IdFloor {
    /// Opens the floor in the journal file at `path` (the table is created if missing).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_target(&JournalTarget::File(path.to_owned()))
    }

    /// Opens the floor in the journal's store at `target` (the table is created if missing).
    pub fn open_target(target: &JournalTarget) -> Result<Self, StoreError> {
        let (conn, path) = connect(
            target,
            "CREATE TABLE IF NOT EXISTS baton_serve_ids (
                 name TEXT PRIMARY KEY,
                 value INTEGER NOT NULL);",
            "CREATE TABLE IF NOT EXISTS baton_serve_ids (
                 name TEXT PRIMARY KEY,
                 value BIGINT NOT NULL);",
        )?;
        Ok(Self { conn, path })
    }

    /// The floor: 0 when nothing was ever reserved.
    pub fn load(&self) -> Result<u64, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let value: Option<i64> = conn
            .query_opt(
                "SELECT value FROM baton_serve_ids WHERE name = ?1",
                &vals![PROPOSALS],
            )
            .map_err(error(&self.path))?
            .map(|r| r.get(0))
            .transpose()
            .map_err(|e| StoreError {
                path: self.path.clone(),
                message: e.message,
            })?;
        u64::try_from(value.unwrap_or(0)).map_err(|_| StoreError {
            path: self.path.clone(),
            message: "the session id floor is negative".into(),
        })
    }

    /// Takes the next `n` ids for this process alone, atomically (one `UPDATE ... RETURNING`):
    /// answers the first; the ids from it up to `first + n` are this caller's, and the floor is
    /// above them. However many servers share the store, no two get an id in common. The block
    /// starts at `at_least` or above (the journal's next id, for a start).
    pub fn reserve_block(&self, n: u64, at_least: u64) -> Result<u64, StoreError> {
        let too_big = |_| StoreError {
            path: self.path.clone(),
            message: "session ids are exhausted".into(),
        };
        let n = i64::try_from(n).map_err(too_big)?;
        let at_least = i64::try_from(at_least).map_err(too_big)?;
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let end: i64 = conn
            .query_opt(
                "INSERT INTO baton_serve_ids (name, value)
                 VALUES (?1, CAST(?2 AS BIGINT) + CAST(?3 AS BIGINT))
                 ON CONFLICT(name) DO UPDATE SET value =
                     CASE WHEN baton_serve_ids.value > CAST(?2 AS BIGINT)
                          THEN baton_serve_ids.value ELSE CAST(?2 AS BIGINT) END
                     + CAST(?3 AS BIGINT)
                 RETURNING value",
                &vals![PROPOSALS, at_least, n],
            )
            .map_err(error(&self.path))?
            .map(|r| r.get(0))
            .transpose()
            .map_err(|e| StoreError {
                path: self.path.clone(),
                message: e.message,
            })?
            .ok_or_else(|| StoreError {
                path: self.path.clone(),
                message: "the id floor's row is missing".into(),
            })?;
        Ok((end - n) as u64)
    }
}

impl super::queue::IdReservation for IdFloor {
    fn reserve(&self, until: u64) -> Result<(), String> {
        let until = i64::try_from(until).map_err(|_| "session ids are exhausted".to_owned())?;
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute(
            "INSERT INTO baton_serve_ids (name, value) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET value =
                 CASE WHEN baton_serve_ids.value > excluded.value
                      THEN baton_serve_ids.value ELSE excluded.value END",
            &vals![PROPOSALS, until],
        )
        .map(drop)
        .map_err(|e| format!("{}: {}", self.path.display(), error(&self.path)(e).message))
    }
}

/// The server's own connection to the journal's store at `target`, with its table created if
/// missing (`sqlite` or `postgres`, the table in each dialect). A SQLite connection waits up to
/// 30 s on the journal writer's locks; on PostgreSQL the table is created under the schema's
/// advisory lock, so that nodes starting together create it once.
fn connect(
    target: &JournalTarget,
    sqlite: &str,
    postgres: &str,
) -> Result<(Conn, PathBuf), StoreError> {
    match target {
        JournalTarget::File(path) => {
            let err = error(path);
            let conn = Connection::open(path).map_err(|e| err(e.into()))?;
            conn.busy_timeout(Duration::from_secs(30))
                .map_err(|e| err(e.into()))?;
            conn.execute_batch(sqlite).map_err(|e| err(e.into()))?;
            Ok((Mutex::new(Box::new(conn)), path.clone()))
        }
        JournalTarget::Postgres(url) => {
            let path = pg::place(url);
            let failed = |message: String| StoreError {
                path: path.clone(),
                message,
            };
            let conn = PgConn::connect(url, None, false).map_err(|e| failed(e.to_string()))?;
            let created = conn.begin().and_then(|()| {
                (&conn as &dyn Db).execute(
                    "SELECT pg_advisory_xact_lock(?1)",
                    &[Val::Int(pg::SCHEMA_LOCK)],
                )?;
                conn.batch(postgres)?;
                conn.commit()
            });
            if let Err(e) = created {
                conn.rollback();
                return Err(failed(conn.error(e, &path).to_string()));
            }
            Ok((Mutex::new(Box::new(conn)), path))
        }
    }
}

/// Names a failure of the store (SQLite's message; PostgreSQL's classified, without the
/// password).
fn error(path: &Path) -> impl Fn(DbError) -> StoreError + '_ {
    move |e| StoreError {
        path: path.to_owned(),
        message: match e {
            DbError::Sqlite(e) => e.to_string(),
            DbError::Pg(e) => pg::pg_message(&e),
            DbError::Convert(m) => m,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;
    use crate::journal::test_store::TestDb;
    use crate::serve::queue::IdReservation;

    /// Runs `test` on a SQLite file, and on a PostgreSQL database of its own (see
    /// `journal::test_store` for when that is skipped).
    fn on_both_stores(test: impl Fn(&JournalTarget)) {
        let dir = tempfile::tempdir().unwrap();
        test(&JournalTarget::File(dir.path().join("j.db")));
        if let Some(db) = TestDb::create() {
            test(&JournalTarget::Postgres(db.url.clone()));
        }
    }

    #[test]
    fn the_id_floor_only_rises_and_survives_a_reopen() {
        on_both_stores(|target| {
            let floor = IdFloor::open_target(target).unwrap();
            assert_eq!(floor.load().unwrap(), 0);
            floor.reserve(2048).unwrap();
            floor.reserve(1024).unwrap();
            drop(floor);
            assert_eq!(IdFloor::open_target(target).unwrap().load().unwrap(), 2048);
        });
    }

    #[test]
    fn stored_agent_types_survive_a_reopen_and_a_put_replaces_by_name() {
        on_both_stores(|target| {
            let store = AgentTypeStore::open_target(target).unwrap();
            let coder = AgentType::new("coder", 1000);
            store.put(&coder).unwrap();
            store.put(&AgentType::new("alpha", 2000)).unwrap();
            let stricter = coder
                .clone()
                .with_policy(Policy::builder().compact_at(0.7).build().unwrap());
            store.put(&stricter).unwrap();
            drop(store);
            let again = AgentTypeStore::open_target(target).unwrap().load().unwrap();
            assert_eq!(again, vec![AgentType::new("alpha", 2000), stricter]);
        });
    }

    #[test]
    fn servers_sharing_a_store_reserve_disjoint_blocks_of_ids() {
        on_both_stores(|target| {
            let floor = IdFloor::open_target(target).unwrap();
            floor.reserve(100).unwrap();
            assert_eq!(floor.reserve_block(10, 50).unwrap(), 100, "above the floor");
            assert_eq!(
                floor.reserve_block(10, 500).unwrap(),
                500,
                "at the journal's next id when that is higher"
            );
            assert_eq!(floor.load().unwrap(), 510);
            // Four servers, each with its own connection, taking blocks at once.
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let floor = IdFloor::open_target(target).unwrap();
                    std::thread::spawn(move || {
                        (0..25)
                            .map(|_| floor.reserve_block(8, 1).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let mut starts: Vec<u64> = threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect();
            starts.sort_unstable();
            let expected: Vec<u64> = (0..100).map(|k| 510 + 8 * k).collect();
            assert_eq!(starts, expected, "every block once, none shared");
        });
    }
}
