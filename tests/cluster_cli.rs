//! `baton serve --cluster` as a user runs it: the real binary on a real PostgreSQL (skipped
//! without `BATON_PG_URL`, as every `cluster_*` test). Without `--advertise` a node advertises
//! the address it bound, so `--listen 127.0.0.1:0` advertises the port picked; an address other
//! hosts cannot reach (`0.0.0.0`, `[::]`) without `--advertise` is a usage error. No sleeping:
//! the test reads the child's announced address and waits for it to exit.

mod cluster_common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use baton::serve::cluster::NodeList;
use cluster_common::{get_json, test_db};

const TOKEN: &str = "cluster-cli-token-0123456789";

fn baton_serve(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_baton"));
    cmd.arg("serve")
        .args(args)
        .env("BATON_TOKEN", TOKEN)
        .env_remove("RUST_LOG")
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

#[test]
fn an_address_other_hosts_cannot_reach_without_advertise_is_a_usage_error() {
    // Refused before any connection: the database is never asked.
    for listen in ["0.0.0.0:0", "[::]:7070"] {
        let o = baton_serve(&[
            "--cluster",
            "--journal",
            "postgres://baton:secret@127.0.0.1:1/baton",
            "--listen",
            listen,
        ])
        .output()
        .unwrap();
        assert_eq!(o.status.code(), Some(2), "{listen}");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains("--advertise"), "{listen}: {stderr}");
        assert!(!stderr.contains("secret"), "{stderr}");
        assert!(o.stdout.is_empty());
    }
}

#[tokio::test]
async fn a_node_without_advertise_advertises_the_address_it_bound() {
    let Some(db) = test_db("clicadvertise") else {
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut child = baton_serve(&[
        "--cluster",
        "--journal",
        &db.url,
        "--listen",
        "127.0.0.1:0",
        "--node",
        "cli",
        "--grace",
        "1s",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("baton starts");
    let mut err = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    });
    // The first line, read on a thread and waited for with a bound: a node that hangs before it
    // announces its address fails the test (and is killed) instead of hanging it.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = BufReader::new(stdout);
        let mut first = String::new();
        let _ = out.read_line(&mut first);
        let _ = tx.send(first);
        // Drained to the end, so that the node's later lines (its stop report) find a reader.
        let _ = std::io::copy(&mut out, &mut std::io::sink());
    });
    let Ok(first) = rx.recv_timeout(std::time::Duration::from_secs(60)) else {
        let _ = child.kill();
        panic!("baton serve announced no address within 60 s");
    };
    let base = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("the first line announces the address: {first:?}"))
        .to_owned();
    assert!(!base.ends_with(":0"), "a port was picked: {base}");

    let nodes: NodeList = get_json(
        &reqwest::Client::new(),
        &format!("{base}/v1/cluster/nodes"),
        TOKEN,
    )
    .await;
    let this = nodes.nodes.iter().find(|n| n.this).expect("this node");
    assert_eq!(this.name, "cli");
    assert_eq!(this.addr.as_deref(), Some(base.as_str()));

    // SAFETY: kill with our own child's pid.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let status = child.wait().unwrap();
    let stderr = stderr.join().unwrap();
    assert_eq!(status.code(), Some(143), "{stderr}");
}
