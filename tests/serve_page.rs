//! The live fleet page at `/`, loaded in headless Chromium (Debian's `chromium`, installed by
//! `scripts/chromium.sh`) against a running fleet of two agent types: a gauge per live session
//! with its phase, one group per agent type, a row per rotation with both session ids; and a
//! screenshot (`UPDATE_SCREENSHOT=1 cargo test --test serve_page` keeps it as
//! `docs/fleet-page.png`, the README's).
//!
//! Without /usr/bin/chromium the test fails (it never passes silently): run
//! `bash scripts/chromium.sh`.

mod serve_common;

use std::path::Path;
use std::process::Command;

use baton::runtime::memory::{Fault, FaultKind, MemoryConfig, RuntimeOp};
use baton::serve::events::EventsConfig;
use baton::{FleetEvent, Phase, UsageSource};
use serve_common::{Served, TOKEN};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs headless Chromium on `url` with `args`; returns its standard output.
async fn chromium(url: String, args: Vec<String>) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run `bash scripts/chromium.sh` to install Debian's chromium"
    );
    let profile = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        // `timeout` as a safety net only: Chromium exits by itself once done.
        Command::new("timeout")
            .arg("120")
            .arg(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(args)
            .arg(url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A fleet to look at: two agent types, sessions at several usages, one of them compacting
/// (its summary never comes back), and one rotation per agent type.
async fn fleet() -> Served {
    let memory = MemoryConfig {
        base_tokens: 100,
        // The fifth summary (item 4's compaction) hangs: that session stays compacting.
        faults: vec![Fault {
            op: RuntimeOp::Summarise,
            calls: 5..=5,
            kind: FaultKind::Hang,
        }],
        ..MemoryConfig::default()
    };
    let mut served =
        Served::start_with(true, &["coder", "writer"], EventsConfig::default(), memory).await;
    let (_, c1) = served.compact_and_rotate(1, "coder").await;
    served.report(c1, 300).await;
    let (_, w2) = served.compact_and_rotate(2, "writer").await;
    served.report(w2, 560).await;
    for (id, agent, used) in [(3, "coder", 640), (5, "coder", 450), (4, "writer", 870)] {
        served
            .supervisor
            .submit(serve_common::item(id, agent))
            .await
            .unwrap();
        let s = served.started(id).await;
        let now = served.runtime.session(s).unwrap().used;
        served.runtime.grow(s, used - now).unwrap();
        let handle = served.supervisor.session(s).await.unwrap();
        handle
            .report_usage_and_wait(used, None, UsageSource::Reported)
            .await;
    }
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_page_shows_every_live_session_by_agent_type_and_the_rotations() {
    let mut served = fleet().await;
    let url = format!("{}/#token={TOKEN}", served.base);
    let dom = chromium(
        url.clone(),
        vec!["--virtual-time-budget=5000".into(), "--dump-dom".into()],
    )
    .await;

    let live = served.supervisor.sessions().await;
    assert_eq!(live.len(), 5, "five live sessions");
    assert!(
        live.iter().any(|s| s.phase == Phase::Compacting),
        "one is compacting"
    );
    for agent in ["coder", "writer"] {
        assert!(
            dom.contains(&format!(r#"class="group" data-agent-type="{agent}""#)),
            "{agent}'s group"
        );
    }
    for s in &live {
        let phase = format!("{:?}", s.phase).to_lowercase();
        let gauge = format!(
            r#"class="gauge phase-{phase}" data-session="{}""#,
            s.session.0
        );
        assert!(
            dom.contains(&gauge),
            "a gauge for session {}: {gauge}",
            s.session.0
        );
    }
    served.drain();
    let rotations: Vec<_> = served
        .seen
        .iter()
        .filter_map(|e| match &e.event {
            FleetEvent::Rotation(r) => Some((r.old_session.0, r.new_session.unwrap().0)),
            _ => None,
        })
        .collect();
    assert_eq!(rotations.len(), 2);
    for (old, new) in rotations {
        let row = format!(r#"class="rotation" data-old="{old}" data-new="{new}""#);
        assert!(dom.contains(&row), "a rotation row {old} -> {new}");
        assert!(dom.contains(&format!(r#"<span class="old">#{old}</span>"#)));
        assert!(dom.contains(&format!(r#"<span class="new">#{new}</span>"#)));
    }
    assert!(
        dom.contains(r#"class="compactions""#),
        "the chart has compaction bars"
    );
    assert!(
        dom.contains(r#"class="rotations""#),
        "the chart has rotation bars"
    );
    assert!(
        dom.contains(r#"<span id="status" class="status live">live</span>"#),
        "following the stream"
    );
    assert!(!dom.contains(TOKEN), "the token is not in the page");

    let shots = tempfile::tempdir().unwrap();
    let png = shots.path().join("fleet-page.png");
    chromium(
        url,
        vec![
            "--virtual-time-budget=5000".into(),
            "--window-size=1280,660".into(),
            format!("--screenshot={}", png.display()),
        ],
    )
    .await;
    let written = std::fs::read(&png).unwrap();
    assert!(
        written.starts_with(b"\x89PNG\r\n\x1a\n"),
        "a PNG screenshot"
    );
    let size = |at: usize| u32::from_be_bytes(written[at..at + 4].try_into().unwrap());
    assert_eq!((size(16), size(20)), (1280, 660), "the window's size");
    // The README's screenshot is refreshed on request only, so that a test run leaves the
    // tree as it was.
    if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        let kept = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/fleet-page.png");
        std::fs::copy(&png, kept).unwrap();
    }
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shell_is_served_without_a_token_and_holds_no_data() {
    let served = Served::start(false, &["coder"], EventsConfig::default()).await;
    let r = served
        .http
        .get(format!("{}/", served.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = r.text().await.unwrap();
    assert!(
        page.contains("Authorization: 'Bearer '"),
        "the page sends the token itself"
    );
    // Only `/` is open: its data is not.
    let r = served
        .http
        .get(format!("{}/v1/events", served.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    served.stop().await;
}

#[test]
fn the_page_inserts_what_the_server_sends_as_text_never_as_markup() {
    let page = include_str!("../src/serve/page/index.html");
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!page.contains(sink), "the page uses {sink}");
    }
    assert!(page.contains("textContent"));
}
