//! SIGINT and SIGTERM for the subcommands that run a fleet (`run`, `simulate`): the first asks
//! for a graceful stop (the subcommand finishes what is under way, prints its report and exits
//! 130 or 143); the second ends the process at once, with the same status. The journal is
//! consistent either way: SQLite commits are atomic, so a process ended between two commits
//! leaves the last one whole.

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// What `baton run` does on the first signal.
pub const RUN_STOPPING: &str = "finishing the turns under way (up to --grace)";
/// What `baton simulate` does on the first signal: what it does when `--duration` is up.
pub const SIMULATE_STOPPING: &str =
    "taking no new turn and closing the fleet, as when --duration is up";

/// A signal that stops a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl Signal {
    /// How a run stopped by it exits (after its report): 130 or 143, 128 plus the signal's
    /// number.
    pub fn exit(self) -> crate::Exit {
        match self {
            Self::Interrupt => crate::Exit::Interrupted,
            Self::Terminate => crate::Exit::Terminated,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        }
    }
}

/// The first stop signal, once it arrives.
#[derive(Clone)]
pub struct Stop {
    rx: watch::Receiver<Option<Signal>>,
}

impl Stop {
    /// Installs the handlers; must be called inside the async runtime that runs the fleet.
    /// From now on SIGINT and SIGTERM no longer end the process by themselves. `stopping` says
    /// on stderr what the subcommand does on the first signal (before the report), e.g.
    /// [`RUN_STOPPING`].
    pub fn install(stopping: &'static str) -> std::io::Result<Self> {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let (tx, rx) = watch::channel(None);
        tracing::debug!("SIGINT and SIGTERM now stop the fleet gracefully");
        tokio::spawn(async move {
            let first = tokio::select! {
                _ = interrupt.recv() => Signal::Interrupt,
                _ = terminate.recv() => Signal::Terminate,
            };
            eprintln!(
                "baton: {}: {stopping}, then the report; send it again to stop at once",
                first.name()
            );
            let _ = tx.send(Some(first));
            let second = tokio::select! {
                _ = interrupt.recv() => Signal::Interrupt,
                _ = terminate.recv() => Signal::Terminate,
            };
            eprintln!("baton: {} again: stopping at once", second.name());
            std::process::exit(i32::from(second.exit().code()));
        });
        Ok(Self { rx })
    }

    /// Completes when the first signal has arrived.
    pub fn requested(&self) -> impl Future<Output = ()> + 'static {
        let mut rx = self.rx.clone();
        async move {
            let _ = rx.wait_for(Option::is_some).await;
        }
    }

    /// The first signal, if one arrived.
    pub fn signal(&self) -> Option<Signal> {
        *self.rx.borrow()
    }
}
