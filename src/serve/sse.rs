//! Server-sent events framing (the `text/event-stream` format of the HTML standard): one event
//! as `id:`, `event:` and `data:` lines, or a comment line, each frame ending in a blank line.
//!
//! Small enough to write here rather than pull in a crate for it. Field values never carry a
//! line break into the stream: `data` is split into one `data:` line per line (a client joins
//! them back with `\n`), and `id` and `event` have their line breaks removed.

use actix_web::web::Bytes;

/// The response's content type.
pub const CONTENT_TYPE: &str = "text/event-stream";

/// One event: `id: ID`, `event: KIND` (omitted when empty), then `data` as `data:` lines.
pub fn event(id: u64, kind: &str, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + kind.len() + 32);
    out.push_str("id: ");
    out.push_str(&id.to_string());
    out.push('\n');
    if !kind.is_empty() {
        out.push_str("event: ");
        out.extend(kind.chars().filter(|c| *c != '\n' && *c != '\r'));
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// A comment frame (`: TEXT`), which clients ignore: keep-alives and notes for people.
pub fn comment(text: &str) -> Bytes {
    let mut out = String::with_capacity(text.len() + 4);
    for line in text.split('\n') {
        out.push_str(": ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_id_kind_and_data_lines_then_a_blank_line() {
        assert_eq!(
            event(7, "rotation", r#"{"a":1}"#),
            Bytes::from_static(b"id: 7\nevent: rotation\ndata: {\"a\":1}\n\n")
        );
    }

    #[test]
    fn line_breaks_never_end_a_field_early() {
        assert_eq!(
            event(1, "a\nb", "x\r\ny"),
            Bytes::from_static(b"id: 1\nevent: ab\ndata: x\ndata: y\n\n")
        );
        assert_eq!(
            comment("keep\nalive"),
            Bytes::from_static(b": keep\n: alive\n\n")
        );
    }
}
