//! Issue 12 §1: no configuration can make a series carry a label name twice, or a reserved one.
//! Random constant, request and exporter-global labels (drawn from names that collide with the
//! presets, with each other after the OTel → Prometheus mapping, and with Prometheus's reserved
//! names); every exposition is parsed strictly.
#![cfg(feature = "prometheus")]

use proptest::prelude::*;
use tokenmeter_core::{ErrorKind, Finish, Meter, Naming};
use tokenmeter_export::Prometheus;

const KEYS: &[&str] = &[
    "engine",
    "model_name",
    "le",
    "quantile",
    "__name__",
    "gen_ai.request.model",
    "gen_ai_request_model",
    "region",
    "finish_reason",
    "finished_reason",
    "error.type",
    "kind",
    "tenant",
    "replica",
];

/// Checks one exposition line by line; returns the first violation.
fn strict_violation(text: &str) -> Option<String> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit()))
    };
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, rest) = line.split_once('{').unwrap_or((line, ""));
        let name = name.split(' ').next().unwrap_or("");
        let labels = rest.rsplit_once('}').map_or("", |(l, _)| l);
        let mut keys = Vec::new();
        // Label values are quoted and escaped: split on `",` outside escapes.
        let mut rest = labels;
        while !rest.is_empty() {
            let Some((k, after)) = rest.split_once("=\"") else {
                return Some(format!("malformed labels: {line}"));
            };
            let mut end = None;
            let mut escaped = false;
            for (i, c) in after.char_indices() {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let Some(end) = end else {
                return Some(format!("unterminated value: {line}"));
            };
            keys.push(k.to_owned());
            rest = after[end + 1..].trim_start_matches(',');
        }
        let is_bucket = name.ends_with("_bucket");
        for (i, k) in keys.iter().enumerate() {
            if !valid_name(k) || k.starts_with("__") || k == "quantile" {
                return Some(format!("label `{k}`: {line}"));
            }
            if k == "le" && !is_bucket {
                return Some(format!("`le` outside a bucket: {line}"));
            }
            if keys[..i].contains(k) {
                return Some(format!("label `{k}` twice: {line}"));
            }
        }
        if is_bucket && keys.iter().filter(|k| *k == "le").count() != 1 {
            return Some(format!("bucket without exactly one `le`: {line}"));
        }
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn no_configuration_emits_a_duplicate_or_reserved_label(
        vllm in any::<bool>(),
        constant in proptest::collection::vec((0..KEYS.len(), 0..3u8), 0..5),
        request in proptest::collection::vec(0..KEYS.len(), 0..3),
        global in proptest::collection::vec(0..KEYS.len(), 0..3),
    ) {
        let mut b = Meter::builder()
            .model("m")
            .naming(if vllm { Naming::Vllm } else { Naming::OpenTelemetry });
        for (k, v) in &constant {
            b = b.constant_label(KEYS[*k], format!("c{v}"));
        }
        let request_keys: Vec<&str> = request.iter().map(|k| KEYS[*k]).collect();
        b = b.request_labels(request_keys.clone(), 4);
        let meter = b.build(); // drops what collides, with a warning
        let prom = global
            .iter()
            .fold(Prometheus::new().without_listener(), |p, k| p.global_label(KEYS[*k], "g"));
        let Ok(mut prom) = prom.build() else {
            // A reserved or repeated global label is a configuration error, checked below.
            return Ok(());
        };
        let recorder = prom.take_recorder().expect("recorder");
        metrics::with_local_recorder(&recorder, || {
            meter.register_series();
            let mut req = request_keys
                .iter()
                .fold(meter.request(), |r, k| r.label(k, "v"))
                .start();
            req.token();
            req.finish(Finish::Stop);
            meter.request().start().fail(ErrorKind::Internal);
            // A user's own series through the facade: a key given twice and two spellings of one.
            metrics::counter!("user_total", "a" => "1", "a" => "2", "x.y" => "3", "x_y" => "4", "le" => "5")
                .increment(1);
        });
        let text = prom.render();
        prop_assert_eq!(strict_violation(&text), None, "{}", text);
    }
}

#[test]
fn reserved_or_repeated_global_labels_are_a_config_error() {
    for keys in [
        &["le"][..],
        &["quantile"],
        &["__x"],
        &["replica", "replica"],
        &["a.b", "a_b"],
    ] {
        let p = keys
            .iter()
            .fold(Prometheus::new().without_listener(), |p, k| {
                p.global_label(*k, "v")
            });
        assert!(p.build().is_err(), "{keys:?}");
    }
    assert!(
        Prometheus::new()
            .without_listener()
            .global_label("replica", "r1")
            .build()
            .is_ok()
    );
}
