//! The journal's two stores for the integration tests: a SQLite file in a temporary directory,
//! or a PostgreSQL database of the test's own (created from `BATON_PG_URL`, dropped after).
//!
//! A test written against a directory ([`Store::dir`]) opens its journal with [`journal`] and
//! reads it with [`reader`]: the directory says which store it is. Without `BATON_PG_URL`, the
//! PostgreSQL run fails under `CI=true` and is skipped elsewhere, with the reason printed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use baton::journal::{JournalOptions, JournalTarget, PgUrl};
use baton::{Journal, JournalReader};

/// The PostgreSQL database of each directory [`Store::dir`] made for a PostgreSQL test.
fn databases() -> &'static Mutex<HashMap<PathBuf, PgUrl>> {
    static MAP: OnceLock<Mutex<HashMap<PathBuf, PgUrl>>> = OnceLock::new();
    MAP.get_or_init(Mutex::default)
}

/// Where a test's journals live.
pub enum Store {
    /// A SQLite file, `baton.db` in each test directory.
    Sqlite,
    /// A PostgreSQL database of each test directory's own.
    Postgres,
}

impl Store {
    /// The PostgreSQL store, or `None` (the test is skipped) outside CI without a server.
    pub fn postgres() -> Option<Self> {
        TestDb::available().then_some(Self::Postgres)
    }

    /// A temporary directory for the test, and on PostgreSQL a new database for it, which
    /// [`journal`] and [`reader`] given the directory open.
    pub fn dir(&self) -> TestDir {
        let dir = tempfile::tempdir().unwrap();
        let db = match self {
            Self::Sqlite => None,
            Self::Postgres => {
                let db = TestDb::create().expect("BATON_PG_URL was checked");
                databases()
                    .lock()
                    .unwrap()
                    .insert(dir.path().to_owned(), db.url.clone());
                Some(db)
            }
        };
        TestDir { dir, db }
    }
}

/// A test's directory and, on PostgreSQL, its database (dropped with it).
pub struct TestDir {
    /// The directory.
    dir: tempfile::TempDir,
    /// The database, if any.
    db: Option<TestDb>,
}

impl TestDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if self.db.is_some() {
            databases().lock().unwrap().remove(self.dir.path());
        }
    }
}

/// Where the journal of the test directory `dir` is.
pub fn target(dir: &Path) -> JournalTarget {
    match databases().lock().unwrap().get(dir) {
        Some(url) => JournalTarget::Postgres(url.clone()),
        None => JournalTarget::File(dir.join("baton.db")),
    }
}

/// The journal of the test directory `dir` (see [`Store::dir`]).
pub fn journal(dir: &Path) -> Journal {
    Journal::open_target(&target(dir), JournalOptions::default()).expect("the journal opens")
}

/// A reader of the journal of the test directory `dir`.
pub fn reader(dir: &Path) -> JournalReader {
    JournalReader::open_target(&target(dir)).expect("the journal opens for reading")
}

/// A database of one test's own, dropped with it.
pub struct TestDb {
    /// The server's URL as given.
    admin: String,
    /// The database's name.
    name: String,
    /// The URL of the test's database.
    pub url: PgUrl,
}

impl TestDb {
    /// Whether a server is configured; `false` (with the reason printed) outside CI. Under
    /// `CI=true` a missing server fails the test.
    pub fn available() -> bool {
        if std::env::var("BATON_PG_URL").is_ok() {
            return true;
        }
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "BATON_PG_URL is not set: the PostgreSQL half of the journal's suite cannot run \
             (scripts/test.sh starts a server; or eval \"$(bash scripts/postgres.sh start)\")"
        );
        eprintln!("skipped: BATON_PG_URL is not set (no PostgreSQL server to test against)");
        false
    }

    /// A new, empty database; `None` when [`available`](Self::available) says no.
    pub fn create() -> Option<Self> {
        if !Self::available() {
            return None;
        }
        let admin = std::env::var("BATON_PG_URL").ok()?;
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let name = format!(
            "baton_it_{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        admin_sql(&admin, &format!("CREATE DATABASE {name}")).expect("create a test database");
        let (base, query) = match admin.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (admin.as_str(), String::new()),
        };
        let host_end = base.rfind('/').expect("a database in BATON_PG_URL");
        let url = PgUrl::parse(&format!("{}/{name}{query}", &base[..host_end]))
            .expect("a test database's URL");
        Some(Self { admin, name, url })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = admin_sql(&self.admin, &drop) {
            eprintln!("cannot drop the test database {}: {e}", self.name);
        }
    }
}

/// Runs `sql` on the server's own database, on a thread of its own (the synchronous client
/// cannot run inside the async tests' runtime).
fn admin_sql(admin: &str, sql: &str) -> Result<(), postgres::Error> {
    std::thread::scope(|s| {
        s.spawn(|| postgres::Client::connect(admin, postgres::NoTls)?.batch_execute(sql))
            .join()
            .expect("the admin thread")
    })
}

/// Runs each named test (a `fn(&Store)`) on both stores: `sqlite::NAME` and `postgres::NAME`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name(&$crate::support::stores::Store::Sqlite);
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    if let Some(store) = $crate::support::stores::Store::postgres() {
                        super::$name(&store);
                    }
                }
            )*
        }
    };
}
