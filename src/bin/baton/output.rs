//! What reaches the user from outside data: escaped text, bounded inputs, and outputs that never
//! destroy an input.
//!
//! Every subcommand prints strings that came from outside (trace ids, server error messages,
//! journal fields, work-item text). [`escape`] makes them inert before they reach a terminal:
//! an ESC sequence in a trace's `instance_id` must not clear the screen or set the window title.
//!
//! Every file an output flag names is written through [`write_atomic`]: to a temporary file in
//! the same directory, then renamed over the target, so a failure leaves the old file whole. It
//! refuses a target that *is* one of the command's inputs (compared by device and inode, so
//! `./j.db`, `j.db` and a hard link are all caught): `baton log j.db --export -o j.db` used to
//! leave the journal at 0 bytes.
//!
//! Inputs are read through [`read_capped`]: `-` is standard input, and nothing larger than the
//! cap is read into memory (`replay /dev/zero` used to grow without bound).

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Whether `c` must not reach a terminal raw: C0 and C1 controls, DEL, and the bidirectional
/// overrides and isolates that reorder what is shown ("Trojan Source").
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every control character (newlines and tabs included), DEL, C1 control and
/// bidirectional override written as a visible escape (`\n`, `\t`, `\u{1b}`). Text without
/// any is returned as it is, without copying.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) {
            // `escape_default` writes `\n`, `\r`, `\t` and `\u{..}` for the rest.
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`escape`] as a `Display` adapter, for `format!("{}", Escaped(&s))` without an allocation
/// when nothing needs escaping.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(self.0))
    }
}

/// serde_json's compact formatter, with every character [`escape`] would escape also written
/// as a `\uXXXX` escape: serde_json escapes C0 controls itself, but not DEL, the C1 controls
/// (U+009B is a one-character CSI) or the bidirectional overrides. They are all in the Basic
/// Multilingual Plane, so one `\uXXXX` each; the JSON reads back to the same strings.
pub struct TerminalSafeJson;

impl serde_json::ser::Formatter for TerminalSafeJson {
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices().filter(|(_, c)| is_unsafe(*c)) {
            writer.write_all(&fragment.as_bytes()[start..i])?;
            write!(writer, "\\u{:04x}", u32::from(c))?;
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// The path a user wrote that means standard input (or output).
pub const STDIO: &str = "-";

/// Whether `path` is the `-` that stands for standard input.
pub fn is_stdio(path: &Path) -> bool {
    path.as_os_str() == STDIO
}

/// Why an output was not written.
#[derive(Debug, Error)]
pub enum OutputError {
    /// The output is one of the command's inputs: writing it would destroy what is being read.
    #[error("{output}: refusing to overwrite an input of this command ({input})", output = .output.display(), input = .input.display())]
    WouldOverwriteInput {
        /// The output path, as given.
        output: PathBuf,
        /// The input it is the same file as.
        input: PathBuf,
    },
    /// Creating, writing or renaming failed.
    #[error("{path}: cannot write: {source}", path = .path.display())]
    Io {
        /// The output path, as given.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Whether `a` and `b` name the same existing file (same device and inode). A path that does not
/// exist is the same as nothing.
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Refuses `output` when it is the same file as any of `inputs` (`-` is never compared).
pub fn refuse_overwrite<'a>(
    output: &Path,
    inputs: impl IntoIterator<Item = &'a Path>,
) -> Result<(), OutputError> {
    if is_stdio(output) {
        return Ok(());
    }
    for input in inputs {
        if !is_stdio(input) && same_file(output, input) {
            return Err(OutputError::WouldOverwriteInput {
                output: output.to_owned(),
                input: input.to_owned(),
            });
        }
    }
    Ok(())
}

/// Writes `path` atomically: `write` fills a temporary file beside it, which is flushed, synced
/// and renamed over `path` only when `write` succeeded. Refuses first when `path` is one of
/// `inputs`. On any error the old file (if any) is untouched and the temporary file is removed.
///
/// The result looks as if written in place: an existing file keeps its permissions, a new one
/// gets the usual `0666` less the umask, and a symbolic link is written through (its target is
/// replaced, the link stays).
pub fn write_atomic<'a>(
    path: &Path,
    inputs: impl IntoIterator<Item = &'a Path>,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), OutputError> {
    use std::os::unix::fs::PermissionsExt;
    refuse_overwrite(path, inputs)?;
    let io_err = |source| OutputError::Io {
        path: path.to_owned(),
        source,
    };
    // Through a symbolic link to the file it names, so the link survives the rename.
    let target = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(path).map_err(io_err)?,
        _ => path.to_owned(),
    };
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(io_err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no directory {}", dir.display()),
        )));
    }
    let permissions = match std::fs::metadata(&target) {
        Ok(m) => m.permissions(),
        // Created with open(2)'s mode, so the umask applies as for any new file.
        Err(_) => std::fs::Permissions::from_mode(0o666),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".baton-")
        .suffix(".tmp")
        .permissions(permissions.clone())
        .tempfile_in(dir)
        .map_err(|e| {
            io_err(io::Error::new(
                e.kind(),
                "cannot create a file in its directory",
            ))
        })?;
    let mut out = BufWriter::new(tmp);
    write(&mut out).map_err(io_err)?;
    let tmp = out.into_inner().map_err(|e| io_err(e.into_error()))?;
    // The mode given at creation was cut by the umask; an existing file's is restored whole.
    if std::fs::metadata(&target).is_ok() {
        tmp.as_file().set_permissions(permissions).map_err(io_err)?;
    }
    tmp.as_file().sync_all().map_err(io_err)?;
    tmp.persist(&target).map_err(|e| io_err(e.error))?;
    Ok(())
}

/// Why an input was not read.
#[derive(Debug, Error)]
pub enum InputError {
    /// The input holds more than the cap allows.
    #[error("{path}: larger than the {cap}-byte limit{hint}", path = .path.display())]
    TooLarge {
        /// The input, as given.
        path: PathBuf,
        /// The cap in bytes.
        cap: u64,
        /// How to raise the cap, when a flag does (for example `; raise it with --max-bytes`).
        hint: String,
    },
    /// The input is a directory.
    #[error("{path}: is a directory", path = .path.display())]
    IsDirectory {
        /// The input, as given.
        path: PathBuf,
    },
    /// Opening or reading failed.
    #[error("{path}: cannot read: {source}", path = .path.display())]
    Io {
        /// The input, as given.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Reads `path` whole (`-`: standard input), refusing anything above `cap` bytes without reading
/// more than `cap + 1` of it. `hint` is appended to the size error (for example
/// `"; raise it with --max-input-bytes"`).
pub fn read_capped(path: &Path, cap: u64, hint: &str) -> Result<Vec<u8>, InputError> {
    let io_err = |source| InputError::Io {
        path: path.to_owned(),
        source,
    };
    let reader: Box<dyn Read> = if is_stdio(path) {
        Box::new(io::stdin().lock())
    } else {
        if std::fs::metadata(path).map(|m| m.is_dir()).unwrap_or(false) {
            return Err(InputError::IsDirectory {
                path: path.to_owned(),
            });
        }
        Box::new(File::open(path).map_err(io_err)?)
    };
    let mut bytes = Vec::new();
    reader
        .take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > cap {
        return Err(InputError::TooLarge {
            path: path.to_owned(),
            cap,
            hint: hint.to_owned(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_makes_terminal_sequences_visible() {
        let hostile = "id\u{1b}]0;pwned\u{7}\u{1b}[2J\r\nnext\u{9b}\u{202E}";
        let shown = escape(hostile);
        assert!(!shown.chars().any(is_unsafe), "{shown:?}");
        assert_eq!(
            shown,
            "id\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\r\\nnext\\u{9b}\\u{202e}"
        );
    }

    #[test]
    fn terminal_safe_json_escapes_what_a_terminal_acts_on_and_reads_back_the_same() {
        let text = "a\u{7f}b\u{9b}2J\u{202e}c\u{1b}d ✓";
        let mut line = Vec::new();
        serde::Serialize::serialize(
            &text,
            &mut serde_json::Serializer::with_formatter(&mut line, TerminalSafeJson),
        )
        .unwrap();
        let line = String::from_utf8(line).unwrap();
        assert!(!line.chars().any(is_unsafe), "{line}");
        assert!(
            line.contains("\\u009b") && line.contains("\\u202e"),
            "{line}"
        );
        assert_eq!(serde_json::from_str::<String>(&line).unwrap(), text);
    }

    #[test]
    fn escape_borrows_clean_text() {
        assert!(matches!(escape("héllo wörld ✓"), Cow::Borrowed(_)));
        assert_eq!(Escaped("a\tb").to_string(), "a\\tb");
    }

    #[test]
    fn write_atomic_refuses_an_input_by_inode_and_leaves_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("j.db");
        std::fs::write(&input, b"precious").unwrap();
        let link = dir.path().join("alias.db");
        std::fs::hard_link(&input, &link).unwrap();
        let err = write_atomic(&link, [input.as_path()], |w| w.write_all(b"x")).unwrap_err();
        assert!(
            matches!(err, OutputError::WouldOverwriteInput { .. }),
            "{err}"
        );
        assert_eq!(std::fs::read(&input).unwrap(), b"precious");
    }

    #[test]
    fn write_atomic_keeps_the_old_file_when_writing_fails() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.csv");
        std::fs::write(&out, b"old").unwrap();
        let err = write_atomic(&out, [], |w| {
            w.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_eq!(std::fs::read(&out).unwrap(), b"old");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "the temporary file is removed");
        write_atomic(&out, [], |w| w.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"new");
    }

    #[test]
    fn write_atomic_looks_like_a_write_in_place() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let kept = dir.path().join("kept.jsonl");
        std::fs::write(&kept, b"old").unwrap();
        std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&kept, [], |w| w.write_all(b"new")).unwrap();
        let mode = std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "an existing file keeps its permissions");

        let fresh = dir.path().join("fresh.svg");
        write_atomic(&fresh, [], |w| w.write_all(b"<svg/>")).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_ne!(
            mode & 0o044,
            0,
            "a new file is readable as any new file is: {mode:o}"
        );

        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink(&kept, &link).unwrap();
        write_atomic(&link, [], |w| w.write_all(b"through")).unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&kept).unwrap(), b"through");

        let err = write_atomic(&dir.path().join("none/x.jsonl"), [], |_| Ok(())).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.contains("none/x.jsonl") && !shown.contains(".baton-"),
            "{shown}"
        );
    }

    #[test]
    fn read_capped_refuses_endless_input_after_cap_bytes() {
        let err = read_capped(Path::new("/dev/zero"), 1024, "; raise it with --x").unwrap_err();
        assert!(
            matches!(err, InputError::TooLarge { cap: 1024, .. }),
            "{err}"
        );
        assert!(err.to_string().ends_with("raise it with --x"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let err = read_capped(dir.path(), 1024, "").unwrap_err();
        assert!(matches!(err, InputError::IsDirectory { .. }), "{err}");
        let file = dir.path().join("f");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_capped(&file, 5, "").unwrap(), b"12345");
        assert!(read_capped(&file, 4, "").is_err());
    }
}
