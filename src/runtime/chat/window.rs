//! The context window, as the endpoint states it.
//!
//! llama.cpp's `GET /props` gives the window each slot actually has
//! (`default_generation_settings.n_ctx`: `-c` divided among `--parallel` slots) and the number of
//! slots. `GET /v1/models` gives vLLM's `max_model_len`, and for llama.cpp `meta.n_ctx` (the
//! whole KV cache, all slots together) and `meta.n_ctx_train` (what the model was trained for,
//! which says nothing about what the server allows). Where several are known, the one that the
//! server enforces on a request wins, in that order. These parsers are deliberately small and
//! self-contained; the `provider` module may absorb them.

use serde::Serialize;
use serde_json::Value;

/// Which figure a window was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowSource {
    /// llama.cpp `/props` `default_generation_settings.n_ctx`: the per-slot window it enforces.
    PropsSlot,
    /// vLLM `/v1/models` `data[].max_model_len`: the window it enforces.
    MaxModelLen,
    /// llama.cpp `/v1/models` `data[].meta.n_ctx`: the whole cache; a slot may have less.
    MetaCtx,
    /// llama.cpp `/v1/models` `data[].meta.n_ctx_train`: the model's trained context, an upper
    /// bound only (the server may run with a smaller `-c`).
    MetaCtxTrain,
}

/// A window read from an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EndpointWindow {
    /// The window in tokens.
    pub tokens: u64,
    /// Where it was read, which says how far to trust it.
    pub source: WindowSource,
    /// Slots serving requests concurrently (llama.cpp `total_slots`), when known: K concurrent
    /// sessions need K slots, or they share one cache and fail with HTTP 500.
    pub slots: Option<u64>,
}

/// The per-slot window from llama.cpp's `/props`.
pub fn window_from_props(props: &Value) -> Option<EndpointWindow> {
    let tokens = positive(props.pointer("/default_generation_settings/n_ctx"))?;
    Some(EndpointWindow {
        tokens,
        source: WindowSource::PropsSlot,
        slots: positive(props.get("total_slots")),
    })
}

/// The window from `/v1/models` for `model` (matched by `id` or llama.cpp `aliases`), or for the
/// first model listed when `model` is `None` or not listed (llama.cpp serves one model whatever
/// the request names).
pub fn window_from_models(models: &Value, model: Option<&str>) -> Option<EndpointWindow> {
    let data = models.get("data")?.as_array()?;
    let named = |m: &&Value| {
        let name = model.unwrap_or_default();
        m.get("id").and_then(Value::as_str) == Some(name)
            || m.get("aliases")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(name)))
    };
    let entry = data.iter().find(named).or_else(|| data.first())?;
    [
        ("/max_model_len", WindowSource::MaxModelLen),
        ("/meta/n_ctx", WindowSource::MetaCtx),
        ("/meta/n_ctx_train", WindowSource::MetaCtxTrain),
    ]
    .into_iter()
    .find_map(|(pointer, source)| {
        positive(entry.pointer(pointer)).map(|tokens| EndpointWindow {
            tokens,
            source,
            slots: None,
        })
    })
}

fn positive(v: Option<&Value>) -> Option<u64> {
    v?.as_u64().filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn props_give_the_slot_window_and_slot_count() {
        let props =
            json!({"default_generation_settings":{"params":{},"n_ctx":4096},"total_slots":4});
        assert_eq!(
            window_from_props(&props),
            Some(EndpointWindow {
                tokens: 4096,
                source: WindowSource::PropsSlot,
                slots: Some(4)
            })
        );
        assert_eq!(window_from_props(&json!({"total_slots": 4})), None);
    }

    #[test]
    fn vllm_max_model_len_wins_for_the_named_model() {
        let models = json!({"object":"list","data":[
            {"id":"other","max_model_len":8192},
            {"id":"qwen","max_model_len":32768}]});
        let w = window_from_models(&models, Some("qwen")).unwrap();
        assert_eq!((w.tokens, w.source), (32768, WindowSource::MaxModelLen));
        let w = window_from_models(&models, Some("unlisted")).unwrap();
        assert_eq!(w.tokens, 8192);
    }

    #[test]
    fn llama_cpp_models_prefer_the_runtime_context_to_the_trained_one() {
        // Measured on llama-server with -c 4096 (local-llm.md).
        let models = json!({"object":"list","data":[{"id":"smollm2","aliases":["smollm2"],
            "meta":{"n_ctx":4096,"n_ctx_train":8192}}]});
        let w = window_from_models(&models, Some("smollm2")).unwrap();
        assert_eq!((w.tokens, w.source), (4096, WindowSource::MetaCtx));
        let older = json!({"data":[{"id":"m","meta":{"n_ctx_train":8192}}]});
        let w = window_from_models(&older, None).unwrap();
        assert_eq!((w.tokens, w.source), (8192, WindowSource::MetaCtxTrain));
    }

    #[test]
    fn no_model_or_no_figure_is_no_window() {
        assert_eq!(window_from_models(&json!({"data":[]}), None), None);
        assert_eq!(
            window_from_models(&json!({"data":[{"id":"x"}]}), None),
            None
        );
        assert_eq!(
            window_from_models(&json!({"data":[{"max_model_len":0}]}), None),
            None
        );
    }
}
