//! When to send a failed request again, and how long to wait first.
//!
//! The waits themselves are backon's ([`ExponentialBuilder`], with jitter, so that a fleet of
//! sessions that failed together does not retry together). What this module keeps is the one
//! thing backon cannot know: a server's own requested wait, `retry-after-ms` (OpenAI) or
//! `Retry-After` in seconds (the HTTP standard), which replaces the computed wait up to a limit
//! ([`wait_before_retry`]). The HTTP-date form of `Retry-After` is not used by any chat server
//! seen so far and is ignored.

use std::time::Duration;

use backon::ExponentialBuilder;
use reqwest::header::HeaderMap;

/// The default retries of a chat request: 3 after the first attempt, waits from about 0.5 s
/// doubling up to 30 s, with jitter.
pub fn default_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(30))
        .with_max_times(3)
        .with_jitter()
}

/// The server's requested wait: `retry-after-ms` (milliseconds, OpenAI) first, then
/// `Retry-After` in (possibly fractional) seconds.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| -> Option<f64> {
        let v: f64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
        (v.is_finite() && (0.0..=86_400_000.0).contains(&v)).then_some(v)
    };
    number("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| number("retry-after").map(Duration::from_secs_f64))
}

/// The wait before the next retry: `computed` (backon's, `None` once the retries are spent),
/// replaced by the server's `requested` wait when it gave one. `None` ends the retries: none
/// left, or the server asks for longer than `max_requested`.
pub fn wait_before_retry(
    computed: Option<Duration>,
    requested: Option<Duration>,
    max_requested: Duration,
) -> Option<Duration> {
    let computed = computed?;
    match requested {
        Some(wait) if wait > max_requested => None,
        Some(wait) => Some(wait),
        None => Some(computed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_prefers_milliseconds_and_ignores_dates() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        let mut d = HeaderMap::new();
        d.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&d), None);
    }

    #[test]
    fn an_absurd_retry_after_is_ignored_rather_than_overflowing() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("1e300"));
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("-3"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn a_server_wait_replaces_the_computed_one_up_to_the_limit() {
        let max = Duration::from_secs(60);
        let computed = Some(Duration::from_millis(500));
        assert_eq!(
            wait_before_retry(computed, Some(Duration::from_secs(3)), max),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            wait_before_retry(computed, Some(Duration::from_secs(61)), max),
            None
        );
        assert_eq!(wait_before_retry(computed, None, max), computed);
        assert_eq!(
            wait_before_retry(None, Some(Duration::from_secs(1)), max),
            None,
            "a server's wait never adds retries"
        );
    }
}
