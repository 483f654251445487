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
    doc.merge(super::cluster::ClusterDoc::openapi());
    common_errors(&mut doc);
    doc
}

/// The errors any operation may answer whatever its handler says, as `ErrorBody`: 401 (the
/// token guard) and 503 (the deadline) everywhere; 400 where there are parameters or a body;
/// 413 and 415 where there is a body. Added where a handler's own list lacks them, so that the
/// document never misses a status the server can send.
fn common_errors(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in operations.into_iter().flatten() {
            let body = op.request_body.is_some();
            let params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
            let common = [
                ("400", body || params, "A malformed request"),
                ("401", true, "No or a wrong token"),
                ("413", body, "The body is over the size cap"),
                ("415", body, "The body is not JSON"),
                ("503", true, "Shutting down, or the request timed out"),
            ];
            for (status, applies, description) in common {
                if applies {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(description).into());
                }
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every part, as `document` merges them.
    fn parts() -> Vec<utoipa::openapi::OpenApi> {
        vec![
            super::super::sessions::Api::openapi(),
            super::super::readings::Api::openapi(),
            super::super::agent_types::Api::openapi(),
            super::super::work_items::Api::openapi(),
            super::super::commands::CommandsApi::openapi(),
            super::super::events::EventsApi::openapi(),
            super::super::metrics::MetricsApi::openapi(),
            super::super::cluster::ClusterDoc::openapi(),
        ]
    }

    #[test]
    fn no_two_parts_define_a_schema_of_the_same_name_differently() {
        let doc = serde_json::to_value(document()).unwrap();
        for part in parts() {
            let part = serde_json::to_value(part).unwrap();
            let Some(schemas) = part["components"]["schemas"].as_object() else {
                continue;
            };
            for (name, schema) in schemas {
                assert_eq!(
                    &doc["components"]["schemas"][name], schema,
                    "schema {name} is shadowed by another part's"
                );
            }
        }
    }

    #[test]
    fn every_operation_documents_the_errors_the_guards_answer() {
        let doc = serde_json::to_value(document()).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                let mut expected = vec!["401", "503"];
                if op.get("requestBody").is_some() {
                    expected.extend(["400", "413", "415"]);
                }
                for status in expected {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} documents {status}"
                    );
                }
            }
        }
    }
}
