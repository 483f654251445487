//! `/v1/agent-types`: the agent types work items may name, each with its policy.
//!
//! An agent type on the wire is
//! `{"name", "window", "model", "system_prompt", "policy"}` where `policy` is the library's
//! [`Policy`] in its serde form (every key optional, validated when parsed).

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::store::AgentTypeStore;
use crate::policy::Policy;
use crate::supervisor::{PutOutcome, SupervisorHandle};
use crate::usage::Usage;
use crate::vocab::AgentType;

/// The longest agent-type name accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// The most readings a session may be asked to keep (`history_len`): each live session keeps
/// this many, so a client must not be able to make it unbounded.
pub const MAX_HISTORY_LEN: usize = 4096;
/// The longest compaction or rotation timeout accepted: deadlines are computed from them.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest model name or system prompt accepted, in bytes.
pub const MAX_TEXT_BYTES: usize = 256 * 1024;

/// An agent type as clients see it, and as `--agent-types FILE` lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentTypeView {
    /// The type's name; a successor has the same one.
    #[schema(min_length = 1, max_length = 128)]
    pub name: String,
    /// The model's context window in tokens.
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    pub window: u64,
    /// The model the runtime should run (opaque to baton).
    #[serde(default)]
    pub model: String,
    /// The system prompt a new session starts with (opaque to baton).
    #[serde(default)]
    pub system_prompt: String,
    /// The policy; absent keys take their defaults.
    #[serde(default)]
    #[schema(value_type = PolicyDoc)]
    pub policy: Policy,
}

/// The body of `PUT /v1/agent-types/{name}`: an agent type without its name (the path has it).
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentTypeBody {
    /// The model's context window in tokens.
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    pub window: u64,
    /// The model the runtime should run (opaque to baton).
    #[serde(default)]
    pub model: String,
    /// The system prompt a new session starts with (opaque to baton).
    #[serde(default)]
    pub system_prompt: String,
    /// The policy; absent keys take their defaults.
    #[serde(default)]
    #[schema(value_type = PolicyDoc)]
    pub policy: Policy,
}

/// The library's [`Policy`] in its serde form, for the OpenAPI document only: every key is
/// optional and takes its default when absent; invalid combinations are refused with 400.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PolicyDoc {
    /// Ratio at which a session compacts, in (0, 1); default 0.8.
    #[schema(required = false, exclusive_minimum = 0.0, exclusive_maximum = 1.0)]
    compact_at: f64,
    /// Ratio at which a session rotates, in (0, 1], above `compact_at`; default 0.95.
    #[schema(required = false, exclusive_minimum = 0.0, maximum = 1.0)]
    rotate_at: f64,
    /// Smallest share of the context a compaction must free, in [0, 1); default 0.2.
    #[schema(required = false, minimum = 0.0, exclusive_maximum = 1.0)]
    min_reduction: f64,
    /// Compactions a session may do before it rotates instead; default 3.
    #[schema(required = false, minimum = 0, maximum = 4294967295_u64)]
    max_compactions: u32,
    /// The reduction band aimed for, `[low, high]`, each in [0, 1); default [0.4, 0.5].
    #[schema(required = false, min_items = 2, max_items = 2)]
    target_reduction: Vec<f64>,
    /// Deadline of one compaction (default 120 s; at most 7 days).
    #[schema(required = false)]
    compaction_timeout: DurationDoc,
    /// Deadline of one rotation (default 300 s; at most 7 days).
    #[schema(required = false)]
    rotation_timeout: DurationDoc,
    /// Readings kept per session, 1 to 4096; default 16.
    #[schema(required = false, minimum = 1, maximum = 4096)]
    history_len: u64,
    /// Largest share of the successor's window a handoff may take, in (0, 1); default 0.25.
    #[schema(required = false, exclusive_minimum = 0.0, exclusive_maximum = 1.0)]
    handoff_share: f64,
}

/// A duration in serde's form, for the OpenAPI document only.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DurationDoc {
    /// Whole seconds.
    #[schema(minimum = 0)]
    secs: u64,
    /// Nanoseconds beyond them.
    #[schema(minimum = 0, maximum = 999999999)]
    nanos: u32,
}

impl AgentTypeView {
    /// The wire form of `agent`.
    pub fn from_agent(agent: &AgentType) -> Self {
        Self {
            name: agent.name.to_string(),
            window: agent.window,
            model: agent.model.clone(),
            system_prompt: agent.system_prompt.clone(),
            policy: (*agent.policy).clone(),
        }
    }

    /// The library's agent type, checked by [`check`].
    pub fn into_agent(self) -> Result<AgentType, String> {
        let agent = AgentType {
            name: self.name.into(),
            window: self.window,
            policy: Arc::new(self.policy),
            model: self.model,
            system_prompt: self.system_prompt,
        };
        check(&agent)?;
        Ok(agent)
    }
}

impl AgentTypeBody {
    /// The library's agent type named `name`, checked by [`check`].
    pub fn into_agent(self, name: &str) -> Result<AgentType, String> {
        AgentTypeView {
            name: name.to_owned(),
            window: self.window,
            model: self.model,
            system_prompt: self.system_prompt,
            policy: self.policy,
        }
        .into_agent()
    }
}

/// What the HTTP interface accepts beyond the library's own checks (the policy's are done
/// when it is parsed): a name of 1 to [`MAX_NAME_BYTES`] bytes without control characters, a
/// window of 1 to [`Usage::MAX_TOKENS`], bounded texts, history and timeouts.
pub fn check(agent: &AgentType) -> Result<(), String> {
    let name = &*agent.name;
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "an agent type's name must be 1 to {MAX_NAME_BYTES} bytes"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("an agent type's name must not hold control characters".into());
    }
    if agent.window == 0 || agent.window > Usage::MAX_TOKENS {
        return Err(format!(
            "window must be 1 to {} tokens, not {}",
            Usage::MAX_TOKENS,
            agent.window
        ));
    }
    if agent.model.len() > MAX_TEXT_BYTES || agent.system_prompt.len() > MAX_TEXT_BYTES {
        return Err(format!(
            "model and system_prompt must be at most {MAX_TEXT_BYTES} bytes each"
        ));
    }
    let p = &agent.policy;
    if p.history_len() > MAX_HISTORY_LEN {
        return Err(format!(
            "policy.history_len must be at most {MAX_HISTORY_LEN}, not {}",
            p.history_len()
        ));
    }
    if p.compaction_timeout() > MAX_TIMEOUT || p.rotation_timeout() > MAX_TIMEOUT {
        return Err("policy timeouts must be at most 7 days".into());
    }
    Ok(())
}

/// `GET /v1/agent-types`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentTypeList {
    /// Every agent type, by name.
    pub agent_types: Vec<AgentTypeView>,
}

/// Every agent type, by name.
#[utoipa::path(
    get,
    path = "/v1/agent-types",
    tag = "agent types",
    responses(
        (status = 200, description = "Every agent type, by name", body = AgentTypeList)
    )
)]
async fn list(supervisor: web::Data<SupervisorHandle>) -> web::Json<AgentTypeList> {
    let agent_types = supervisor
        .agent_types()
        .await
        .iter()
        .map(AgentTypeView::from_agent)
        .collect();
    web::Json(AgentTypeList { agent_types })
}

/// One agent type.
#[utoipa::path(
    get,
    path = "/v1/agent-types/{name}",
    tag = "agent types",
    params(("name" = String, Path, description = "The agent type's name")),
    responses(
        (status = 200, description = "The agent type", body = AgentTypeView),
        (status = 404, description = "No agent type has this name", body = ErrorBody)
    )
)]
async fn get(
    supervisor: web::Data<SupervisorHandle>,
    name: web::Path<String>,
) -> Result<web::Json<AgentTypeView>, ApiError> {
    supervisor
        .agent_type(&name)
        .await
        .map(|a| web::Json(AgentTypeView::from_agent(&a)))
        .ok_or_else(|| ApiError::not_found(format!("no agent type {:?}", name.as_str())))
}

/// Creates an agent type, or changes its policy: the new policy decides every reading from
/// then on, live sessions included. Kept in the journal, so a restarted server knows it.
#[utoipa::path(
    put,
    path = "/v1/agent-types/{name}",
    tag = "agent types",
    params(("name" = String, Path, description = "The agent type's name (1 to 128 bytes)")),
    request_body = AgentTypeBody,
    responses(
        (status = 201, description = "Created", body = AgentTypeView),
        (status = 200, description = "Updated (its policy), or unchanged", body = AgentTypeView),
        (status = 400, description = "A malformed body, an invalid policy or a value out of range", body = ErrorBody),
        (status = 409, description = "The type exists with another window, model or system prompt", body = ErrorBody),
        (status = 503, description = "Shutting down, the journal failed, or the request timed out", body = ErrorBody)
    )
)]
async fn put(
    supervisor: web::Data<SupervisorHandle>,
    store: web::Data<Option<Arc<AgentTypeStore>>>,
    name: web::Path<String>,
    body: web::Json<AgentTypeBody>,
) -> Result<HttpResponse, ApiError> {
    let agent = body
        .into_inner()
        .into_agent(&name)
        .map_err(ApiError::bad_request)?;
    let view = AgentTypeView::from_agent(&agent);
    let store = store.get_ref().clone();
    let _writing = match &store {
        Some(s) => Some(s.writing().await),
        None => None,
    };
    let outcome = supervisor.put_agent_type(agent.clone()).await?;
    if outcome != PutOutcome::Unchanged
        && let Some(store) = store.clone()
    {
        web::block(move || store.put(&agent))
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?
            .map_err(|e| {
                tracing::error!(error = %e, "an agent type could not be stored");
                ApiError::unavailable("the journal could not store the agent type")
            })?;
    }
    let mut response = match outcome {
        PutOutcome::Created => HttpResponse::Created(),
        PutOutcome::Updated | PutOutcome::Unchanged => HttpResponse::Ok(),
    };
    Ok(response.json(view))
}

/// This module's part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    paths(list, get, put),
    components(schemas(AgentTypeList, AgentTypeView, AgentTypeBody, PolicyDoc, DurationDoc))
)]
pub struct Api;

/// Registers `/v1/agent-types` and `/v1/agent-types/{name}`; `store` keeps what `PUT`
/// creates or changes.
pub fn configure(cfg: &mut web::ServiceConfig, store: Option<Arc<AgentTypeStore>>) {
    cfg.service(web::resource("/v1/agent-types").route(web::get().to(list)))
        .service(
            web::resource("/v1/agent-types/{name}")
                .app_data(web::Data::new(store))
                .route(web::get().to(get))
                .route(web::put().to(put)),
        );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(json: &str) -> Result<AgentType, String> {
        serde_json::from_str::<AgentTypeView>(json)
            .map_err(|e| e.to_string())?
            .into_agent()
    }

    #[test]
    fn an_agent_type_takes_the_default_policy_and_round_trips() {
        let a = view(r#"{"name": "coder", "window": 1000}"#).unwrap();
        assert_eq!(a, AgentType::new("coder", 1000));
        let back = serde_json::to_value(AgentTypeView::from_agent(&a)).unwrap();
        assert_eq!(back["policy"]["compact_at"], 0.8);
        assert_eq!(view(&back.to_string()).unwrap(), a);
    }

    #[test]
    fn out_of_range_agent_types_are_refused() {
        for bad in [
            r#"{"name": "", "window": 1000}"#,
            r#"{"name": "a\u001b", "window": 1000}"#,
            r#"{"name": "a", "window": 0}"#,
            r#"{"name": "a", "window": 4294967296}"#,
            r#"{"name": "a", "window": 10, "policy": {"history_len": 100000}}"#,
            r#"{"name": "a", "window": 10, "policy": {"rotation_timeout": {"secs": 18446744073709551615, "nanos": 0}}}"#,
            r#"{"name": "a", "window": 10, "policy": {"compact_at": 0.99}}"#,
            r#"{"name": "a", "window": 10, "colour": "red"}"#,
        ] {
            assert!(view(bad).is_err(), "{bad}");
        }
    }
}
