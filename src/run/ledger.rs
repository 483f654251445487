//! What `baton run` keeps in its journal beside the supervisor's own records, so that running
//! it again on the same journal continues where it stopped.
//!
//! The supervisor's journal knows each work item's place (queued, live, done, dead) but not how
//! the driver ended it: a session closed after a failed turn or at the turn limit is "done" to
//! the supervisor. So the run keeps two tables of its own in the same SQLite file, through a
//! connection of its own (the journal's writer thread keeps its own; SQLite's WAL lets both
//! write, one transaction at a time):
//!
//! * `baton_run_items`: the run's work items, in file order, written once before the first is
//!   submitted. A later run on the journal must bring the same items: any difference (an id, an
//!   agent type, a text, the count) is refused, naming the first one.
//! * `baton_run_ends`: how each item ended (done, turn limit, failed), with its turns and
//!   sessions, written before its session is closed. Dead letters need no row: the journal
//!   holds them with their reason.
//!
//! On a resumed run, items with an end are not taken again; items the journal holds unfinished
//! are the supervisor's to recover (a fresh session from the item and its last handoff, or a
//! rotation resumed from its last durable step); items it never received (a run stopped while
//! submitting) are submitted.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, params};

use super::{ItemEnd, RunError};
use crate::journal::WorkItemPlace;
use crate::journal::{Filter, Journal};
use crate::vocab::{WorkItem, WorkItemId};

/// How an earlier run ended one item.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PriorEnd {
    /// How it ended.
    pub end: ItemEnd,
    /// Turns it took.
    pub turns: u32,
    /// Sessions that held it.
    pub sessions: u32,
}

/// A journal opened for `baton run`: the supervisor's journal and the run's own tables.
pub struct RunJournal {
    /// The supervisor's journal.
    journal: Journal,
    /// The run's connection to the same file, for its own tables.
    ledger: Mutex<Connection>,
    /// The file.
    path: PathBuf,
    /// Items the journal held when the run started.
    pub(crate) known: HashSet<WorkItemId>,
    /// How earlier runs ended items (and the journal's dead letters).
    pub(crate) ends: HashMap<WorkItemId, PriorEnd>,
    /// The first session id above every id the journal holds.
    next_session: u64,
}

fn ledger_error(path: &Path) -> impl Fn(rusqlite::Error) -> RunError + '_ {
    move |e| RunError::Ledger(format!("{}: {e}", path.display()))
}

/// At most 60 characters of `text`, for naming a difference.
fn excerpt(text: &str) -> String {
    let short: String = text.chars().take(60).collect();
    if short.len() < text.len() {
        format!("{short}…")
    } else {
        short
    }
}

/// The first difference between the items a journal's run was given (`stored`) and `items`.
fn difference(stored: &[(u64, String, String)], items: &[WorkItem]) -> Option<String> {
    for (n, ((id, agent_type, text), item)) in stored.iter().zip(items).enumerate() {
        let n = n + 1;
        if *id != item.id.0 {
            return Some(format!(
                "work item {n} is {} in ITEMS but {} in the journal",
                item.id,
                WorkItemId(*id)
            ));
        }
        if agent_type.as_str() != &*item.agent_type {
            return Some(format!(
                "work item {}'s agent type is {:?} in ITEMS but {agent_type:?} in the journal",
                item.id, item.agent_type
            ));
        }
        if *text != item.text {
            return Some(format!(
                "work item {}'s text differs: {:?} in ITEMS, {:?} in the journal",
                item.id,
                excerpt(&item.text),
                excerpt(text)
            ));
        }
    }
    (stored.len() != items.len()).then(|| {
        format!(
            "ITEMS holds {} work items, the journal's run {}",
            items.len(),
            stored.len()
        )
    })
}

impl RunJournal {
    /// Opens (or creates) the journal at `path` for a run of `items`: refuses a journal whose
    /// run had other items, or that holds work items `baton run` did not write; records the
    /// items when the journal is new to the run.
    pub async fn open(path: &Path, items: &[WorkItem]) -> Result<Self, RunError> {
        let journal = Journal::open(path)?;
        let err = ledger_error(path);
        let mut conn = Connection::open(path).map_err(&err)?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(&err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS baton_run_items (
                 position INTEGER PRIMARY KEY,
                 work_item INTEGER NOT NULL UNIQUE,
                 agent_type TEXT NOT NULL,
                 text TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS baton_run_ends (
                 work_item INTEGER PRIMARY KEY,
                 end TEXT NOT NULL,
                 turns INTEGER NOT NULL,
                 sessions INTEGER NOT NULL);",
        )
        .map_err(&err)?;
        let stored: Vec<(u64, String, String)> = {
            let mut stmt = conn
                .prepare(
                    "SELECT work_item, agent_type, text FROM baton_run_items ORDER BY position",
                )
                .map_err(&err)?;
            stmt.query_map([], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?))
            })
            .map_err(&err)?
            .collect::<Result<_, _>>()
            .map_err(&err)?
        };
        let (rows, sessions) = journal
            .read(|v| {
                let all = Filter::default();
                Ok((v.work_items(&all)?, v.sessions(&all)?))
            })
            .await?;
        if stored.is_empty() {
            if !rows.is_empty() {
                return Err(RunError::OtherJournal {
                    path: path.to_owned(),
                    difference: format!(
                        "it holds {} work items that baton run did not record",
                        rows.len()
                    ),
                });
            }
            let tx = conn.transaction().map_err(&err)?;
            {
                let mut insert = tx
                    .prepare(
                        "INSERT INTO baton_run_items (position, work_item, agent_type, text)
                         VALUES (?1, ?2, ?3, ?4)",
                    )
                    .map_err(&err)?;
                for (n, item) in items.iter().enumerate() {
                    insert
                        .execute(params![
                            n as i64,
                            item.id.0 as i64,
                            &*item.agent_type,
                            item.text
                        ])
                        .map_err(&err)?;
                }
            }
            tx.commit().map_err(&err)?;
        } else if let Some(difference) = difference(&stored, items) {
            return Err(RunError::OtherJournal {
                path: path.to_owned(),
                difference,
            });
        }
        let mut ends: HashMap<WorkItemId, PriorEnd> = HashMap::new();
        {
            let mut stmt = conn
                .prepare("SELECT work_item, end, turns, sessions FROM baton_run_ends")
                .map_err(&err)?;
            let found = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })
                .map_err(&err)?;
            for row in found {
                let (id, end, turns, sessions) = row.map_err(&err)?;
                let end: ItemEnd = serde_json::from_str(&end).map_err(|e| {
                    RunError::Ledger(format!(
                        "{}: the end of work item {} is unreadable: {e}",
                        path.display(),
                        WorkItemId(id)
                    ))
                })?;
                ends.insert(
                    WorkItemId(id),
                    PriorEnd {
                        end,
                        turns: u32::try_from(turns).unwrap_or(u32::MAX),
                        sessions: u32::try_from(sessions).unwrap_or(u32::MAX),
                    },
                );
            }
        }
        for row in &rows {
            let sessions = sessions
                .iter()
                .filter(|s| s.work_item == row.work_item)
                .count() as u32;
            let end = match row.place {
                WorkItemPlace::Dead => ItemEnd::Dead {
                    reason: row.reason.clone().unwrap_or_default(),
                },
                // Closed without an end of the run's: taken as done.
                WorkItemPlace::Done => ItemEnd::Done,
                _ => continue,
            };
            ends.entry(row.work_item).or_insert(PriorEnd {
                end,
                turns: 0,
                sessions,
            });
        }
        let next_session = journal.next_session_id()?.0;
        Ok(Self {
            journal,
            ledger: Mutex::new(conn),
            path: path.to_owned(),
            known: rows.iter().map(|r| r.work_item).collect(),
            ends,
            next_session,
        })
    }

    /// The supervisor's journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The first session id above every id the journal holds: give it to the runtime, so that
    /// no new session takes an id an earlier run used.
    pub fn next_session_id(&self) -> u64 {
        self.next_session
    }

    /// Whether an earlier run left anything in the journal.
    pub fn is_resumed(&self) -> bool {
        !self.known.is_empty()
    }

    /// Records how the run ended `item`, durably, before its session is closed.
    pub(crate) fn record_end(
        &self,
        item: WorkItemId,
        end: &ItemEnd,
        turns: u32,
        sessions: u32,
    ) -> Result<(), RunError> {
        let end = serde_json::to_string(end).expect("an end serialises");
        self.ledger
            .lock()
            .expect("lock")
            .execute(
                "INSERT OR REPLACE INTO baton_run_ends (work_item, end, turns, sessions)
                 VALUES (?1, ?2, ?3, ?4)",
                params![item.0 as i64, end, i64::from(turns), i64::from(sessions)],
            )
            .map(|_| ())
            .map_err(ledger_error(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: u64, text: &str) -> WorkItem {
        WorkItem {
            id: WorkItemId(id),
            agent_type: "a".into(),
            text: text.into(),
        }
    }

    #[test]
    fn the_first_difference_is_named() {
        let stored = vec![
            (1, "a".to_owned(), "fix x".to_owned()),
            (2, "a".to_owned(), "fix y".to_owned()),
        ];
        assert_eq!(
            difference(&stored, &[item(1, "fix x"), item(2, "fix y")]),
            None
        );
        assert_eq!(
            difference(&stored, &[item(1, "fix x"), item(2, "fix z")]).unwrap(),
            "work item w2's text differs: \"fix z\" in ITEMS, \"fix y\" in the journal"
        );
        assert_eq!(
            difference(&stored, &[item(1, "fix x"), item(3, "fix y")]).unwrap(),
            "work item 2 is w3 in ITEMS but w2 in the journal"
        );
        assert_eq!(
            difference(&stored, &[item(1, "fix x")]).unwrap(),
            "ITEMS holds 1 work items, the journal's run 2"
        );
    }
}
