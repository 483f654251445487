//! `baton::provider`: provider usage shapes, windows, the tiktoken estimate, its calibration and
//! the per-session tracker, against samples written from each provider's documented schema
//! (`tests/data/usage/`, `tests/data/windows/`) and the figures of a real trace (`tests/data/real/`).

mod support;

use std::path::Path;

use baton::UsageSource;
use baton::provider::{
    Calibration, Distrust, Encoding, Message, PromptCounter, Provider, ProviderError,
    ReportedUsage, UsageTracker, Window, WindowError, WindowSource, detect_provider, known_window,
    parse_usage, parse_usage_json, resolve_window, slots_from_props, window_from_models,
    window_from_props,
};
use serde_json::{Value, json};

fn data(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn usage(rel: &str) -> ReportedUsage {
    parse_usage_json(&data(rel), None).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// ===== provider usage shapes =====

#[test]
fn openai_chat_occupancy_is_prompt_plus_completion_with_cache_as_a_subset() {
    let r = usage("usage/openai-chat.json");
    assert_eq!(r.provider, Provider::OpenAiChat);
    assert_eq!((r.prompt_tokens, r.completion_tokens), (4210, 57));
    assert_eq!(r.cached_tokens, Some(3968));
    assert_eq!(r.occupancy(), 4267);
}

#[test]
fn openai_responses_reads_input_and_output_tokens() {
    let r = usage("usage/openai-responses.json");
    assert_eq!(r.provider, Provider::OpenAiResponses);
    assert_eq!((r.prompt_tokens, r.completion_tokens), (15_320, 812));
    assert_eq!(r.cached_tokens, Some(14_848));
    // The streaming `response.completed` event carries the same object under `response`.
    let e = usage("usage/openai-responses-completed-event.json");
    assert_eq!(
        (e.provider, e.occupancy()),
        (Provider::OpenAiResponses, 935)
    );
}

#[test]
fn anthropic_prompt_adds_both_cache_fields_to_input_tokens() {
    let r = usage("usage/anthropic.json");
    assert_eq!(r.provider, Provider::Anthropic);
    // input_tokens alone is 3: reading only it is the bug this guards against.
    assert_eq!(r.prompt_tokens, 3 + 412 + 17_804);
    assert_eq!(r.completion_tokens, 230);
    assert_eq!(r.cached_tokens, Some(17_804));
    // message_start: usage under `message`, creation only as the per-lifetime breakdown.
    let s = usage("usage/anthropic-message-start.json");
    assert_eq!(
        (s.provider, s.prompt_tokens),
        (Provider::Anthropic, 6 + 120 + 5000)
    );
}

#[test]
fn deepseek_prompt_is_hit_plus_miss() {
    let r = usage("usage/deepseek.json");
    assert_eq!(r.provider, Provider::DeepSeek);
    assert_eq!(r.prompt_tokens, 2048);
    assert_eq!(r.cached_tokens, Some(1920));
    // Without prompt_tokens, the two cache fields make it up.
    let parts = parse_usage(
        &json!({"usage": {"prompt_cache_hit_tokens": 30, "prompt_cache_miss_tokens": 12, "completion_tokens": 5}}),
        None,
    )
    .unwrap();
    assert_eq!((parts.prompt_tokens, parts.occupancy()), (42, 47));
}

#[test]
fn litellm_prompt_tokens_already_hold_the_cache_unless_smaller_than_it() {
    let r = usage("usage/litellm-anthropic.json");
    assert_eq!(r.provider, Provider::Litellm);
    assert_eq!(r.prompt_tokens, 7010, "folded: 10 + 500 + 6500");
    assert_eq!(r.cached_tokens, Some(6500));
    let raw = usage("usage/litellm-unfolded.json");
    assert_eq!(raw.prompt_tokens, 10 + 200 + 9000, "not folded: added");
}

#[test]
fn llama_cpp_context_is_prompt_n_plus_cache_n_plus_predicted_n() {
    let r = usage("usage/llama-cpp.json");
    assert_eq!(r.provider, Provider::LlamaCpp);
    assert_eq!((r.prompt_tokens, r.completion_tokens), (120 + 5000, 64));
    // A version without cache_n falls back to its `usage`, whose prompt_tokens is the whole
    // prompt; without either it is an error, not a guess.
    let old = json!({"usage": {"prompt_tokens": 700, "completion_tokens": 9}, "timings": {"prompt_n": 20, "predicted_n": 9}});
    assert_eq!(parse_usage(&old, None).unwrap().prompt_tokens, 700);
    let bare = json!({"timings": {"prompt_n": 20, "predicted_n": 9}});
    assert_eq!(
        parse_usage(&bare, None),
        Err(ProviderError::Missing {
            provider: Provider::LlamaCpp,
            field: "timings.cache_n"
        })
    );
}

#[test]
fn ollama_native_counts_and_a_cache_hit_reads_as_zero() {
    let r = usage("usage/ollama-native.json");
    assert_eq!(r.provider, Provider::Ollama);
    assert_eq!((r.prompt_tokens, r.completion_tokens), (2600, 298));
    let hit = usage("usage/ollama-cache-hit.json");
    assert_eq!((hit.prompt_tokens, hit.completion_tokens), (0, 41));
    // Ollama's /v1 looks like OpenAI's: detected as such, named by a hint.
    let v1 = data("usage/ollama-v1-zero.json");
    assert_eq!(
        parse_usage_json(&v1, None).unwrap().provider,
        Provider::OpenAiChat
    );
    let hinted = parse_usage_json(&v1, Some(Provider::Ollama)).unwrap();
    assert_eq!(
        (hinted.provider, hinted.prompt_tokens),
        (Provider::Ollama, 0)
    );
}

#[test]
fn the_shape_is_detected_from_the_keys() {
    let cases = [
        ("usage/openai-chat.json", Provider::OpenAiChat),
        ("usage/openai-responses.json", Provider::OpenAiResponses),
        ("usage/anthropic.json", Provider::Anthropic),
        ("usage/deepseek.json", Provider::DeepSeek),
        ("usage/litellm-anthropic.json", Provider::Litellm),
        ("usage/llama-cpp.json", Provider::LlamaCpp),
        ("usage/ollama-native.json", Provider::Ollama),
    ];
    for (rel, want) in cases {
        let body: Value = serde_json::from_str(&data(rel)).unwrap();
        assert_eq!(detect_provider(&body), Some(want), "{rel}");
    }
    assert_eq!(detect_provider(&json!({"choices": []})), None);
}

#[test]
fn a_usage_object_alone_is_read_too() {
    let r = parse_usage(&json!({"prompt_tokens": 5, "completion_tokens": 2}), None).unwrap();
    assert_eq!(r.occupancy(), 7);
    let a = parse_usage(
        &json!({"input_tokens": 5, "output_tokens": 2, "cache_read_input_tokens": 100}),
        None,
    )
    .unwrap();
    assert_eq!((a.provider, a.prompt_tokens), (Provider::Anthropic, 105));
}

#[test]
fn provider_hints_parse_from_names() {
    assert_eq!(
        "anthropic".parse::<Provider>().unwrap(),
        Provider::Anthropic
    );
    assert_eq!("vLLM".parse::<Provider>().unwrap(), Provider::OpenAiChat);
    assert_eq!("llama.cpp".parse::<Provider>().unwrap(), Provider::LlamaCpp);
    for p in Provider::ALL {
        assert_eq!(p.as_str().parse::<Provider>().unwrap(), p);
    }
    assert!(matches!(
        "gemini".parse::<Provider>(),
        Err(ProviderError::UnknownProvider { .. })
    ));
}

// ===== bad usage input: typed errors, never a panic =====

#[test]
fn truncated_usage_json_is_a_located_error() {
    let text = data("usage/openai-chat.json");
    let cut = &text[..text.len() / 2];
    match parse_usage_json(cut, None) {
        Err(ProviderError::Json { line, .. }) => assert!(line > 1),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        parse_usage_json("", None),
        Err(ProviderError::Json { .. })
    ));
}

#[test]
fn wrong_types_are_typed_errors() {
    let cases = [
        (
            json!({"usage": {"prompt_tokens": "12", "completion_tokens": 1}}),
            "prompt_tokens",
        ),
        (
            json!({"usage": {"input_tokens": 1, "output_tokens": true, "cache_read_input_tokens": 0}}),
            "output_tokens",
        ),
        (
            json!({"usage": {"prompt_tokens": 1, "completion_tokens": 1, "prompt_tokens_details": 7}}),
            "prompt_tokens_details.cached_tokens",
        ),
    ];
    for (body, field) in cases {
        match parse_usage(&body, None) {
            Err(ProviderError::WrongType { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{body}: {other:?}"),
        }
    }
    assert!(matches!(
        parse_usage(&json!({"usage": "lots"}), None),
        Err(ProviderError::NotAnObject { field: "usage", .. })
    ));
    assert!(matches!(
        parse_usage(&json!([1, 2]), None),
        Err(ProviderError::NotAnObject { field: "body", .. })
    ));
    assert!(matches!(
        parse_usage(
            &json!({"timings": 3, "usage": {"prompt_tokens": 1, "completion_tokens": 1}}),
            Some(Provider::LlamaCpp)
        ),
        Err(ProviderError::NotAnObject {
            field: "timings",
            ..
        })
    ));
}

#[test]
fn negative_fractional_and_absurd_figures_are_refused() {
    for (body, field) in [
        (
            json!({"usage": {"prompt_tokens": -5, "completion_tokens": 1}}),
            "prompt_tokens",
        ),
        (
            json!({"usage": {"prompt_tokens": 5, "completion_tokens": 1.5}}),
            "completion_tokens",
        ),
        (
            json!({"usage": {"input_tokens": 1, "output_tokens": 1, "cache_read_input_tokens": 1e12}}),
            "cache_read_input_tokens",
        ),
        (
            json!({"prompt_eval_count": -1, "eval_count": 3}),
            "prompt_eval_count",
        ),
    ] {
        match parse_usage(&body, None) {
            Err(ProviderError::BadFigure { field: f, .. }) => assert_eq!(f, field, "{body}"),
            other => panic!("{body}: {other:?}"),
        }
    }
}

#[test]
fn missing_fields_and_missing_usage_are_told_apart() {
    assert_eq!(
        parse_usage(&json!({"usage": {"prompt_tokens": 5}}), None),
        Err(ProviderError::Missing {
            provider: Provider::OpenAiChat,
            field: "completion_tokens"
        })
    );
    assert_eq!(
        parse_usage(
            &json!({"usage": {"output_tokens": 5}}),
            Some(Provider::Anthropic)
        ),
        Err(ProviderError::Missing {
            provider: Provider::Anthropic,
            field: "input_tokens"
        })
    );
    // A stream chunk with `usage: null`, and a body with no usage at all.
    assert_eq!(
        parse_usage_json(&data("usage/stream-chunk-without-usage.json"), None),
        Err(ProviderError::NoUsage)
    );
    assert_eq!(
        parse_usage(&json!({"choices": []}), Some(Provider::OpenAiChat)),
        Err(ProviderError::NoUsage)
    );
    let err = parse_usage(&json!({"usage": {"tokens": 5}}), None).unwrap_err();
    assert!(err.to_string().contains("tokens"), "{err}");
}

// ===== windows =====

#[test]
fn vllm_models_give_max_model_len_by_model_id() {
    let body = data("windows/vllm-models.json");
    let w = window_from_models(&body, None).unwrap();
    assert_eq!((w.tokens, w.source), (32_768, WindowSource::ServerModel));
    let lora = window_from_models(&body, Some("sql-lora")).unwrap();
    assert_eq!(lora.tokens, 16_384);
    let err = window_from_models(&body, Some("nope")).unwrap_err();
    assert!(
        matches!(&err, WindowError::NoSuchModel { listed, .. } if listed.contains("sql-lora")),
        "{err}"
    );
}

#[test]
fn llama_cpp_models_give_the_training_context() {
    let w = window_from_models(&data("windows/llamacpp-models.json"), None).unwrap();
    assert_eq!(
        (w.tokens, w.source),
        (32_768, WindowSource::TrainingContext)
    );
    let a = window_from_models(&data("windows/anthropic-model.json"), None).unwrap();
    assert_eq!((a.tokens, a.source), (200_000, WindowSource::ServerModel));
}

#[test]
fn llama_cpp_models_give_the_server_context_for_the_model_or_an_alias() {
    // Measured on llama-server -c 4096 -a smollm2 (local-llm.md).
    let body = r#"{"object":"list","data":[{"id":"smollm2","aliases":["smollm2","small"],
        "meta":{"n_ctx":4096,"n_ctx_train":8192}}]}"#;
    let w = window_from_models(body, Some("small")).unwrap();
    assert_eq!((w.tokens, w.source), (4096, WindowSource::ServerContext));
    // llama.cpp serves its one model whatever a request names; vLLM routes by name.
    assert_eq!(
        window_from_models(body, Some("gpt-4o")).unwrap().tokens,
        4096
    );
    let vllm = r#"{"data":[{"id":"qwen","max_model_len":32768}]}"#;
    assert!(matches!(
        window_from_models(vllm, Some("gpt-4o")),
        Err(WindowError::NoSuchModel { .. })
    ));
}

#[test]
fn props_say_how_many_slots_serve_requests() {
    assert_eq!(
        slots_from_props(&data("windows/llamacpp-props.json")),
        Some(4)
    );
    assert_eq!(
        slots_from_props(r#"{"default_generation_settings":{"n_ctx":1}}"#),
        None
    );
    assert_eq!(slots_from_props("not json"), None);
}

#[test]
fn llama_cpp_props_give_the_per_slot_context() {
    // default_generation_settings.n_ctx is already one slot's share (--ctx-size 32768,
    // --parallel 4): it is not divided again.
    let w = window_from_props(&data("windows/llamacpp-props.json")).unwrap();
    assert_eq!((w.tokens, w.source), (8192, WindowSource::ServerSlot));
    // A body with only a server-wide n_ctx is divided among the slots.
    let total = window_from_props(&data("windows/props-total-only.json")).unwrap();
    assert_eq!(total.tokens, 8192);
}

#[test]
fn window_bodies_with_bad_content_are_typed_errors() {
    assert!(matches!(
        window_from_props("{\"default_generation_settings\": {\"n_ctx\": 0}}"),
        Err(WindowError::BadFigure { .. })
    ));
    assert!(matches!(
        window_from_props("{\"n_ctx\": -4096}"),
        Err(WindowError::BadFigure { .. })
    ));
    assert!(matches!(
        window_from_models(
            "{\"data\": [{\"id\": \"m\", \"max_model_len\": \"8k\"}]}",
            None
        ),
        Err(WindowError::WrongType {
            field: "max_model_len",
            ..
        })
    ));
    assert!(matches!(
        window_from_models("{\"data\": []}", None),
        Err(WindowError::NotFound { .. })
    ));
    assert!(matches!(
        window_from_props("{\"total_slots\": 1}"),
        Err(WindowError::NotFound { .. })
    ));
    assert!(matches!(
        window_from_models("{\"data\": [", None),
        Err(WindowError::Json { .. })
    ));
}

#[test]
fn known_models_have_their_input_windows() {
    let tokens = |m: &str| known_window(m).map(|w| w.tokens);
    assert_eq!(tokens("gpt-5"), Some(272_000), "input window, not the 400k");
    assert_eq!(tokens("openai/gpt-5-mini-2025-08-07"), Some(272_000));
    assert_eq!(tokens("gpt-4o-mini"), Some(128_000));
    assert_eq!(tokens("gpt-4-0613"), Some(8_192));
    assert_eq!(tokens("GPT-4.1"), Some(1_047_576));
    assert_eq!(
        tokens("anthropic/claude-sonnet-4-5-20250929"),
        Some(200_000)
    );
    assert_eq!(
        tokens("us.anthropic.claude-3-5-sonnet-20241022-v2:0"),
        Some(200_000)
    );
    assert_eq!(tokens("deepseek-chat"), Some(128_000));
    assert_eq!(tokens("my-local-finetune"), None);
    assert_eq!(
        known_window("gpt-5").unwrap().source,
        WindowSource::KnownModel
    );
}

#[test]
fn the_user_window_always_wins() {
    let table = known_window("gpt-5").unwrap();
    let server = window_from_props(&data("windows/llamacpp-props.json")).unwrap();
    let user = Window::user(50_000).unwrap();
    assert_eq!(resolve_window([table, server, user]), Some(user));
    assert_eq!(resolve_window([table, server]), Some(server));
    assert_eq!(resolve_window([]), None);
    assert!(Window::user(0).is_err());
}

// ===== estimation and calibration =====

/// The real mini-swe-agent DeepSeek trace as (prompt messages, reported prompt_tokens) per
/// call. Its texts are replaced by words of one o200k token each, as many as the original had
/// (`tests/data/real/README.md`), so every local count is the original's.
fn deepseek_calls() -> Vec<(Vec<Message>, u64)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/real/pydicom__pydicom-901.traj.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let messages = doc["messages"].as_array().unwrap();
    let mut calls = Vec::new();
    for (k, m) in messages.iter().enumerate() {
        if m["role"] == "assistant" {
            let prompt = messages[..k]
                .iter()
                .map(|m| Message::from_openai(m).unwrap())
                .collect();
            let reported = m["extra"]["response"]["usage"]["prompt_tokens"]
                .as_u64()
                .unwrap();
            calls.push((prompt, reported));
        }
    }
    calls
}

/// Fit on the first half of the real DeepSeek trace, predict the second half: the median error
/// against the reported prompt_tokens is at most 2% (uncalibrated o200k is 12-31% off).
#[test]
fn calibration_fitted_on_half_a_trace_predicts_the_rest_within_two_percent() {
    let calls = deepseek_calls();
    assert_eq!(calls.len(), 61);
    let mut counter = PromptCounter::new(Encoding::O200kBase);
    let estimates: Vec<(u64, usize, u64)> = calls
        .iter()
        .map(|(prompt, reported)| {
            counter.sync(prompt);
            (counter.prompt_tokens(), prompt.len(), *reported)
        })
        .collect();
    let (fit, held_out) = estimates.split_at(30);
    let mut cal = Calibration::default();
    for &(est, n, reported) in fit {
        cal.observe(est, n, reported);
    }
    let error = |predict: &dyn Fn(u64, usize) -> u64| {
        let mut errs: Vec<f64> = held_out
            .iter()
            .map(|&(est, n, reported)| {
                (predict(est, n) as f64 - reported as f64).abs() / reported as f64
            })
            .collect();
        errs.sort_by(f64::total_cmp);
        errs[errs.len() / 2]
    };
    let calibrated = error(&|est, n| cal.predict(est, n));
    let raw = error(&|est, _| est);
    let (a, b) = cal.coefficients();
    eprintln!(
        "held-out median error: calibrated {:.2}%, raw o200k {:.1}%; a = {a:.0}, b = {b:.1}",
        calibrated * 100.0,
        raw * 100.0
    );
    assert!(
        calibrated <= 0.02,
        "median error {:.2}%",
        calibrated * 100.0
    );
    assert!(
        raw > 0.05,
        "the raw estimate is far off ({:.1}%), so calibration matters",
        raw * 100.0
    );
    assert!(
        a > 0.0 && b > 0.0,
        "a fixed and a per-message part: {a} {b}"
    );
}

/// The tracker over the real trace, with every fifth report lost: readings between reports are
/// estimates anchored on the last report, within 2% of what was really reported.
#[test]
fn tracker_estimates_between_reports_stay_close_to_the_real_figures() {
    let calls = deepseek_calls();
    let mut t = UsageTracker::new(128_000, Encoding::O200kBase).unwrap();
    let mut worst: f64 = 0.0;
    for (i, (prompt, reported)) in calls.iter().enumerate() {
        let r = ReportedUsage {
            provider: Provider::DeepSeek,
            prompt_tokens: *reported,
            completion_tokens: 0,
            cached_tokens: None,
        };
        let lost = i > 0 && i % 5 == 0;
        let reading = t.observe(prompt, (!lost).then_some(&r)).unwrap();
        if lost {
            assert_eq!(reading.distrust, Some(Distrust::NoReport));
            assert_eq!(reading.usage.source(), UsageSource::Estimated);
            let err = (reading.usage.used() as f64 - *reported as f64).abs() / *reported as f64;
            worst = worst.max(err);
        } else {
            assert_eq!(reading.usage.used(), *reported);
        }
    }
    eprintln!("worst anchored error {:.2}%", worst * 100.0);
    assert!(worst <= 0.02, "worst anchored error {:.2}%", worst * 100.0);
}

#[test]
fn tracker_distrusts_an_ollama_zero_and_a_fall_on_a_growing_conversation() {
    let msgs: Vec<Message> = (0..6)
        .map(|i| Message::new("user", format!("step {i} of the work, with some detail")))
        .collect();
    let mut t = UsageTracker::new(8192, Encoding::O200kBase).unwrap();
    let first = usage("usage/ollama-native.json");
    assert_eq!(t.observe(&msgs[..2], Some(&first)).unwrap().distrust, None);
    let hit = usage("usage/ollama-cache-hit.json");
    let r = t.observe(&msgs[..4], Some(&hit)).unwrap();
    assert_eq!(r.distrust, Some(Distrust::ZeroPrompt));
    assert!(r.usage.used() > 2600, "grown from the last trusted 2600");
    let fell = ReportedUsage {
        prompt_tokens: 1000,
        ..first
    };
    let r = t.observe(&msgs, Some(&fell)).unwrap();
    assert_eq!(
        r.distrust,
        Some(Distrust::Fell {
            previous: 2600,
            reported: 1000
        })
    );
    assert_eq!(r.usage.source(), UsageSource::Estimated);
}

/// Counting one more message costs that message, not the history: after a long conversation,
/// a sync that adds one message tokenizes exactly one.
#[test]
fn counting_a_new_message_costs_only_that_message() {
    let mut history: Vec<Message> = (0..200)
        .map(|i| Message::new("user", format!("message {i} ").repeat(50)))
        .collect();
    let mut counter = PromptCounter::new(Encoding::O200kBase);
    assert_eq!(counter.sync(&history).counted, 200);
    let before = counter.prompt_tokens();
    history.push(Message::new("assistant", "one more"));
    let synced = counter.sync(&history);
    assert_eq!((synced.kept, synced.counted), (200, 1));
    assert_eq!(
        counter.prompt_tokens() - before,
        Encoding::O200kBase.message_tokens(&history[200])
    );
}
