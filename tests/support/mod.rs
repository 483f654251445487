//! Helpers shared by the integration tests.
#![allow(dead_code)]

/// insta settings for this project: snapshots live in the top-level `snapshots/` folder and
/// are named after the behaviour alone.
pub fn snapshot_settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    s.set_prepend_module_to_snapshot(false);
    s.set_omit_expression(true);
    s
}

pub mod chat;
pub mod cli;
pub mod file_runtime;
pub mod fleet;
pub mod llama;
pub mod stores;
pub mod stub;

/// Captures everything `tracing` logs on this thread (all levels, every target) while the
/// returned guard lives, into the returned buffer.
pub fn capture_logs() -> (
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    tracing::subscriber::DefaultGuard,
) {
    use tracing_subscriber::util::SubscriberInitExt;
    let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = buf.clone();
    let guard = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || LogSink(sink.clone()))
        .finish()
        .set_default();
    (buf, guard)
}

/// A `Write` into a shared buffer, for [`capture_logs`].
pub struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
