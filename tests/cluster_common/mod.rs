//! A database of its own for each `cluster_*` test, on the PostgreSQL that `BATON_PG_URL` names
//! (`scripts/postgres.sh`, started by `scripts/test.sh`): created at the start, dropped at the
//! end. Without `BATON_PG_URL` the test is skipped with a printed reason, except under
//! `CI=true`, where it fails.
#![allow(dead_code)]

pub mod node;
pub mod stream;

use std::sync::atomic::{AtomicU32, Ordering};

/// A database that lives as long as the value.
pub struct TestDb {
    /// The server's URL (its own database), to create and drop the test's.
    admin: String,
    /// The test's database.
    pub name: String,
    /// A URL to the test's database.
    pub url: String,
}

/// Runs `f` on a thread of its own: the synchronous client must not run inside a tokio runtime,
/// and tests call this from sync and async code alike.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().expect("the database call panicked"))
}

/// The server's URL, or `None` (printed) when the test must be skipped.
fn server() -> Option<String> {
    match std::env::var("BATON_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!(
                "BATON_PG_URL is not set: under CI=true the PostgreSQL tests never skip (scripts/test.sh starts a server)"
            )
        }
        _ => {
            eprintln!(
                "skipped: BATON_PG_URL is not set (eval \"$(bash scripts/postgres.sh start)\" to run it)"
            );
            None
        }
    }
}

/// `url` with its database replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let slash = base.rfind('/').expect("a URL with a database path");
    // `postgres://host` has its last slash in the scheme.
    let prefix = if base[..slash].ends_with('/') {
        base
    } else {
        &base[..slash]
    };
    format!("{prefix}/{db}{query}")
}

/// A new, empty database for the test `test`; `None` when skipped.
pub fn test_db(test: &str) -> Option<TestDb> {
    static N: AtomicU32 = AtomicU32::new(0);
    let admin = server()?;
    let name = format!(
        "baton_{}_{}_{}",
        test.chars()
            .filter(char::is_ascii_alphanumeric)
            .take(30)
            .collect::<String>()
            .to_lowercase(),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let url = with_database(&admin, &name);
    off_runtime(|| {
        let mut c =
            postgres::Client::connect(&admin, postgres::NoTls).expect("connect to BATON_PG_URL");
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create the test's database");
    });
    let db = TestDb { admin, name, url };
    db.fixture();
    Some(db)
}

impl TestDb {
    /// A connection to the test's database.
    pub fn client(&self) -> postgres::Client {
        let url = self.url.clone();
        off_runtime(move || postgres::Client::connect(&url, postgres::NoTls).expect("connect"))
    }

    /// Runs `f` with a connection to the test's database, off any runtime.
    pub fn with<T: Send>(&self, f: impl FnOnce(&mut postgres::Client) -> T + Send) -> T {
        let url = self.url.clone();
        off_runtime(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
            f(&mut c)
        })
    }

    /// The journal's schema, as the journal creates it (opened once, on a single host).
    fn fixture(&self) {
        let url = baton::journal::PgUrl::parse(&self.url).expect("a PostgreSQL URL");
        off_runtime(move || {
            let journal = baton::Journal::open_postgres(
                &url,
                baton::JournalOptions::default(),
                baton::journal::PgOptions::default(),
            )
            .expect("the journal creates its schema");
            drop(journal);
        });
    }

    /// The URL as the journal takes it.
    pub fn pg_url(&self) -> baton::journal::PgUrl {
        baton::journal::PgUrl::parse(&self.url).expect("a PostgreSQL URL")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        off_runtime(move || {
            if let Ok(mut c) = postgres::Client::connect(&admin, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        });
    }
}

#[test]
fn a_url_gets_the_test_database_in_place_of_its_own() {
    assert_eq!(
        with_database("postgres://u:p@h:1/baton", "t"),
        "postgres://u:p@h:1/t"
    );
    assert_eq!(
        with_database("postgres://u:p@h:1/baton?x=1", "t"),
        "postgres://u:p@h:1/t?x=1"
    );
    assert_eq!(with_database("postgres://h", "t"), "postgres://h/t");
}

/// `GET url` with `token`, its JSON body as `T` (a test fails on any error).
pub async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    token: &str,
) -> T {
    http.get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
