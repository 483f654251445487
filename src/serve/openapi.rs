//! The OpenAPI 3 document, generated from the handlers (utoipa), served at `/openapi.json`.
//!
//! Each resource module derives its own part (`#[derive(OpenApi)]` over its `#[utoipa::path]`
//! handlers); [`document`] merges them, so the document cannot drift from the code.

use actix_web::{HttpResponse, web};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::{ErrorBody, ErrorCode};

/// The document's frame: its title, the bearer scheme and the shared error schema.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "baton serve",
        description = "Keeps fleets of LLM agent sessions inside their context windows, over HTTP."
    ),
    paths(openapi_json),
    components(schemas(ErrorBody, ErrorCode)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct Frame;

/// Adds the `bearer` security scheme that every operation requires.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The whole document: the frame merged with every resource module's part.
pub fn document() -> utoipa::openapi::OpenApi {
    // Resource modules merge their parts here, one line each.
    let mut doc = Frame::openapi();
    doc.merge(super::sessions::Api::openapi());
    doc.merge(super::readings::Api::openapi());
    doc.merge(super::agent_types::Api::openapi());
    doc.merge(super::work_items::Api::openapi());
    doc.merge(super::commands::CommandsApi::openapi());
    doc.merge(super::events::EventsApi::openapi());
    doc.merge(super::metrics::MetricsApi::openapi());
    doc
}

/// The OpenAPI 3 document of this server.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    responses(
        (status = 200, description = "The OpenAPI 3 document", content_type = "application/json"),
        (status = 401, description = "No or a wrong token", body = ErrorBody)
    )
)]
async fn openapi_json(doc: web::Data<utoipa::openapi::OpenApi>) -> HttpResponse {
    HttpResponse::Ok().json(doc.get_ref())
}

/// Serves `/openapi.json`, built once.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::Data::new(document()))
        .service(web::resource("/openapi.json").route(web::get().to(openapi_json)));
}
