//! The stores the conformance suite runs on: SQLite in memory, and PostgreSQL in a database of
//! the test's own (created from `BATON_PG_URL`, dropped after).
//!
//! Without `BATON_PG_URL`, a PostgreSQL test fails under `CI=true` (the suite must not pass
//! without running half of itself) and is skipped elsewhere, with the reason printed.

use std::sync::atomic::{AtomicU32, Ordering};

use super::{Journal, JournalOptions, PgOptions, PgUrl};

/// A database of one test's own, dropped with it.
pub(crate) struct TestDb {
    /// The server's URL as given (its database is the one `CREATE DATABASE` runs in).
    admin: String,
    /// The database's name.
    name: String,
    /// The URL of the test's database.
    pub url: PgUrl,
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl TestDb {
    /// A new, empty database; `None` (with the reason printed) when no server is configured
    /// outside CI. Under `CI=true` a missing server fails the test.
    pub(crate) fn create() -> Option<Self> {
        let Ok(admin) = std::env::var("BATON_PG_URL") else {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "BATON_PG_URL is not set: the PostgreSQL half of the journal's suite cannot run \
                 (scripts/test.sh starts a server; or eval \"$(bash scripts/postgres.sh start)\")"
            );
            eprintln!("skipped: BATON_PG_URL is not set (no PostgreSQL server to test against)");
            return None;
        };
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let name = format!(
            "baton_t_{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut client =
            postgres::Client::connect(&admin, postgres::NoTls).expect("connect to BATON_PG_URL");
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create a test database");
        let url = PgUrl::parse(&with_database(&admin, &name)).expect("a test database's URL");
        Some(Self { admin, name, url })
    }

    /// A client of the test's database, for statements the journal does not make.
    pub(crate) fn client(&self) -> postgres::Client {
        postgres::Client::connect(self.url.expose(), postgres::NoTls).expect("connect")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match postgres::Client::connect(&self.admin, postgres::NoTls) {
            Ok(mut c) => {
                if let Err(e) = c.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                )) {
                    eprintln!("cannot drop the test database {}: {e}", self.name);
                }
            }
            Err(e) => eprintln!("cannot drop the test database {}: {e}", self.name),
        }
    }
}

/// Where a conformance test's journals live.
pub(crate) enum TestStore {
    /// SQLite in memory: each journal opened is a new, empty one.
    Memory,
    /// A PostgreSQL database of the test's own: each journal opened is on the same database.
    Postgres(TestDb),
}

impl TestStore {
    /// A journal with the default options.
    pub(crate) fn open(&self) -> Journal {
        self.open_with(JournalOptions::default())
    }

    /// A journal.
    pub(crate) fn open_with(&self, options: JournalOptions) -> Journal {
        match self {
            Self::Memory => Journal::in_memory_with(options).unwrap(),
            Self::Postgres(db) => {
                Journal::open_postgres(&db.url, options, PgOptions::default()).unwrap()
            }
        }
    }
}

/// Runs each named test (a `fn(&TestStore)`) on both stores: `sqlite::NAME` and
/// `postgres::NAME`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name(&$crate::journal::test_store::TestStore::Memory);
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    if let Some(db) = $crate::journal::test_store::TestDb::create() {
                        super::$name(&$crate::journal::test_store::TestStore::Postgres(db));
                    }
                }
            )*
        }
    };
}
pub(crate) use on_both_stores;
