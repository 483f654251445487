//! `GET /`: the live fleet page, served from files embedded in the binary (no build step).
//!
//! The page is a static shell that holds no data, which is why it is the one path served
//! without a token (see `guard.rs`). It asks for the token (or takes it from the URL fragment
//! `#token=...`, which browsers never send to a server), keeps it in `sessionStorage`, and sends
//! it with each of its own requests: `/v1/sessions` and `/v1/agent-types` for the fleet as it
//! is, then `/v1/events/stream` read with `fetch()` (an `EventSource` cannot send headers),
//! resuming with `Last-Event-ID` when the connection drops. Everything it shows that came from
//! the server is inserted as text (`textContent`), never as markup.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

/// The page: markup, style and script in one file.
const INDEX: &str = include_str!("page/index.html");

/// The fleet page.
async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(INDEX)
}

/// Registers `GET /`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index));
}
