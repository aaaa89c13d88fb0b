//! `tokenmeter::init()` from the environment: Prometheus on, OTLP on because an endpoint is
//! set, the standard OTEL_* variables honoured; the drop self-metric reaches the exposition.
//! One test in this binary: init() installs process-global state.

use std::time::Duration;

use tokenmeter_core::{Finish, Meter};
use tokenmeter_tests::otlp_receiver::{OtlpReceiver, Transport};
use tokenmeter_tests::wait_for;

#[test]
fn init_reads_the_environment_and_counts_drops_in_the_exposition() {
    let rx = OtlpReceiver::start(Transport::Http, "127.0.0.1:0".parse().expect("addr"));
    let vars = [
        ("TOKENMETER_PROMETHEUS_ADDR", "127.0.0.1:0".to_owned()),
        ("TOKENMETER_REQUEST_LOG", "off".to_owned()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000".to_owned()),
        ("OTEL_SERVICE_NAME", "svc-from-env".to_owned()),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "team=llm,region=test".to_owned(),
        ),
        ("OTEL_METRIC_EXPORT_INTERVAL", "3600000".to_owned()),
    ];
    for (k, v) in &vars {
        // SAFETY: this test binary has one test, and no other thread reads the environment
        // while it is set (init() below reads it on this thread).
        unsafe { std::env::set_var(k, v) };
    }
    let guard = tokenmeter_export::init().expect("init");
    assert!(guard.tracing_installed());
    let prom = guard.prometheus().expect("prometheus on by default");
    let addr = prom.local_addr().expect("listener");
    assert!(guard.otlp().is_some(), "OTLP on because an endpoint is set");

    let meter = Meter::builder().model("from-env").build();
    for _ in 0..3 {
        let mut req = meter.request().prompt_tokens(2).start();
        req.scheduled();
        req.token();
        req.token();
        req.finish(Finish::Stop);
    }
    guard.flush().expect("flush");

    // Resource from OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
    let reqs = rx.metric_requests();
    let resource = reqs[0].resource_metrics[0]
        .resource
        .clone()
        .expect("resource");
    let get = |k: &str| {
        resource
            .attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.clone())
            .and_then(|v| v.value)
            .map(|v| match v {
                opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s) => s,
                other => format!("{other:?}"),
            })
    };
    assert_eq!(get("service.name").as_deref(), Some("svc-from-env"));
    assert_eq!(get("team").as_deref(), Some("llm"));
    assert_eq!(get("region").as_deref(), Some("test"));
    let spans = wait_for("spans", Duration::from_secs(10), || {
        let s = rx.spans();
        (s.iter().filter(|s| s.name == "chat from-env").count() == 3).then_some(s)
    });
    assert!(!spans.is_empty());

    // The same numbers on the Prometheus side.
    let (status, body) = tokenmeter_tests::http::get(addr, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    let line = body
        .lines()
        .find(|l| l.starts_with("tokenmeter_output_tokens_total{") && l.contains("from-env"))
        .expect("output tokens");
    assert!(line.ends_with(" 6"), "{line}");

    // The collector refuses: the drop is counted in the self-metric, in the exposition.
    rx.set_refuse(true);
    assert!(guard.flush().is_err());
    let otlp = guard.otlp().expect("otlp");
    assert!(otlp.stats().metric_points_dropped > 0);
    let (_, body) = tokenmeter_tests::http::get(addr, "/metrics").expect("scrape");
    let dropped = body
        .lines()
        .find(|l| {
            l.starts_with("tokenmeter_export_dropped_total{") && l.contains("signal=\"metrics\"")
        })
        .unwrap_or_else(|| panic!("no drop self-metric in:\n{body}"));
    let n: f64 = dropped
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("value");
    assert_eq!(n as u64, otlp.stats().metric_points_dropped, "{dropped}");
}
