//! Running the `baton` binary as a user would, from the project's root.
#![allow(dead_code)]

use std::process::{Command, Output};

/// Runs `baton` with `args` in the project's root and waits for it.
pub fn baton(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("baton runs")
}

/// What it printed on standard output.
/// The arguments of `baton run ITEMS` against a loopback stub at `endpoint` (model
/// `stub-model`), then `extra`.
pub fn stub_run_args(items: &str, endpoint: &str, extra: &[&str]) -> Vec<String> {
    [
        "run",
        items,
        "--endpoint",
        endpoint,
        "--model",
        "stub-model",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What it printed on standard error.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// What a child process left behind: its output, and its peak resident size.
pub struct Measured {
    /// Exit status, stdout and stderr.
    pub output: Output,
    /// The child's peak resident set, in bytes: `ru_maxrss` from `wait4`, which is the kernel's
    /// high-water mark of the process's resident pages, the figure `/proc/PID/status` shows as
    /// `VmHWM` while it lives (read here at exit, when `/proc` no longer has it).
    pub peak_rss_bytes: u64,
}

/// Runs `baton` with `args` (and `stdin` as its standard input, when given), from the project's
/// root, with `envs` set, and measures its peak memory. Blocking: call it off any async runtime
/// that must keep serving the child.
// The child is reaped by wait4, which std does not know about.
#[allow(clippy::zombie_processes)]
pub fn baton_measured(args: &[String], stdin: Option<Vec<u8>>, envs: &[(&str, &str)]) -> Measured {
    use std::io::{Read, Write};
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("baton starts");
    let feeder = stdin.map(|bytes| {
        let mut pipe = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        })
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        out.read_to_end(&mut b).unwrap();
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        err.read_to_end(&mut b).unwrap();
        b
    });
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: wait4 on our own child, with valid pointers to a status and a zeroed rusage.
    let (waited, usage) = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        let waited = libc::wait4(pid, &mut status, 0, &mut usage);
        (waited, usage)
    };
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    if let Some(f) = feeder {
        f.join().unwrap();
    }
    Measured {
        output: Output {
            status: std::process::ExitStatus::from_raw(status),
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
        },
        peak_rss_bytes: usage.ru_maxrss as u64 * 1024,
    }
}

/// A `baton` child still running, its standard error read line by line as it comes.
pub struct Running {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr_thread: std::thread::JoinHandle<()>,
    stdout_thread: std::thread::JoinHandle<Vec<u8>>,
}

/// Starts `baton` with `args` from the project's root, its stdout collected and its stderr
/// streamed (see [`Running::wait_for_stderr`]).
pub fn baton_spawn(args: &[String]) -> Running {
    use std::io::{BufRead, Read};
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("baton starts");
    let (tx, lines) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    let stderr_thread = std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut out = child.stdout.take().unwrap();
    let stdout_thread = std::thread::spawn(move || {
        let mut b = Vec::new();
        out.read_to_end(&mut b).unwrap();
        b
    });
    Running {
        child,
        lines,
        seen: Vec::new(),
        stderr_thread,
        stdout_thread,
    }
}

impl Running {
    /// Blocks until a line of standard error contains `text` (panics, with what it printed, if
    /// the child closes its standard error first).
    pub fn wait_for_stderr(&mut self, text: &str) {
        if self.seen.iter().any(|l| l.contains(text)) {
            return;
        }
        while let Ok(line) = self.lines.recv() {
            let found = line.contains(text);
            self.seen.push(line);
            if found {
                return;
            }
        }
        panic!(
            "baton ended without printing {text:?}:\n{}",
            self.seen.join("\n")
        );
    }

    /// Sends `signal` (`libc::SIGINT`, `libc::SIGTERM`) to the child.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill with our own child's pid.
        let done = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(done, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits for the child to end: its status, stdout, and all of its stderr.
    pub fn finish(mut self) -> Output {
        let status = self.child.wait().expect("baton ends");
        self.stderr_thread.join().unwrap();
        self.seen.extend(self.lines.try_iter());
        Output {
            status,
            stdout: self.stdout_thread.join().unwrap(),
            stderr: self.seen.join("\n").into_bytes(),
        }
    }
}
