//! OTLP export (metrics and traces, gRPC and HTTP/protobuf) against our strict receiver built
//! on opentelemetry-proto, and the faults: a collector that is down, refusing, or accepting and
//! never reading.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::common::v1::KeyValue as PKeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::{AggregationTemporality, Metric};
use tokenmeter_core::catalog;
use tokenmeter_core::clock::Clock;
use tokenmeter_core::{ErrorKind, Finish, Meter};
use tokenmeter_export::otlp::{HistogramAggregation, Otlp, OtlpExporter, Protocol, Temporality};
use tokenmeter_tests::otlp_receiver::{OtlpReceiver, Stalled, Transport};
use tokenmeter_tests::{free_port, wait_for};
use tracing_subscriber::layer::SubscriberExt;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn attr<'a>(attrs: &'a [PKeyValue], key: &str) -> Option<&'a AnyValue> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn str_attr(attrs: &[PKeyValue], key: &str) -> Option<String> {
    match attr(attrs, key)? {
        AnyValue::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// An integer attribute. The core records token counts as `u64`, which tracing-opentelemetry
/// 0.34 exports as a decimal string; both spellings are accepted (the value must be exact).
fn int_attr(attrs: &[PKeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key)? {
        AnyValue::IntValue(i) => Some(*i),
        AnyValue::StringValue(s) => s.parse().ok(),
        _ => None,
    }
}

fn last_metric(metrics: &[Metric], name: &str) -> Metric {
    metrics
        .iter()
        .rev()
        .find(|m| m.name == name)
        .cloned()
        .unwrap_or_else(|| {
            let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
            panic!("no metric {name} among {names:?}")
        })
}

/// Runs `n` requests (4 tokens each, TTFT 30 ms, tokens 10 ms apart; every 5th fails) with the
/// exporter's recorder as the thread's recorder and its layer as the thread's subscriber. The
/// first request joins the caller's trace through `TRACEPARENT`.
fn workload(exporter: &mut OtlpExporter, model: &str, n: u64) -> Meter {
    let recorder = exporter.take_recorder().expect("recorder");
    let layer = exporter
        .tracing_layer::<tracing_subscriber::Registry>()
        .expect("layer");
    let subscriber = tracing_subscriber::registry().with(layer);
    let (clock, mock) = Clock::mock();
    tracing::subscriber::with_default(subscriber, || {
        metrics::with_local_recorder(&recorder, || {
            let meter = Meter::builder().model(model).clock(clock).build();
            for i in 0..n {
                let parent = tracing::info_span!("http.request");
                if i == 0 {
                    let joined = tokenmeter_export::trace_context::join_traceparent(
                        &parent,
                        TRACEPARENT,
                        None,
                    );
                    assert!(joined.expect("traceparent"), "the OTel layer is installed");
                }
                let mut req = meter.request().prompt_tokens(8).parent(&parent).start();
                mock.increment(Duration::from_millis(5));
                req.scheduled();
                mock.increment(Duration::from_millis(25));
                req.token();
                for _ in 0..3 {
                    mock.increment(Duration::from_millis(10));
                    req.token();
                }
                if i % 5 == 4 {
                    req.fail(ErrorKind::Internal);
                } else {
                    req.finish(Finish::Stop);
                }
            }
            meter
        })
    })
}

fn check_pipeline(
    transport: Transport,
    temporality: Temporality,
    histograms: HistogramAggregation,
) {
    let rx = OtlpReceiver::start(transport, "127.0.0.1:0".parse().expect("addr"));
    let protocol = if transport == Transport::Grpc {
        Protocol::Grpc
    } else {
        Protocol::HttpProtobuf
    };
    let model = format!("otlp-{transport:?}-{temporality:?}").to_lowercase();
    let mut exporter = Otlp::new()
        .endpoint(rx.endpoint())
        .protocol(protocol)
        .temporality(temporality)
        .histograms(histograms)
        .interval(Duration::from_secs(3600))
        .timeout(Duration::from_secs(5))
        .service_name("tokenmeter-test")
        .resource_attribute("deployment.environment.name", "test")
        .build()
        .expect("build");
    let meter = workload(&mut exporter, &model, 10);
    exporter.flush().expect("flush");
    assert!(rx.malformed().is_empty(), "{:?}", rx.malformed());

    // Resource attributes.
    let reqs = rx.metric_requests();
    let resource = reqs[0].resource_metrics[0]
        .resource
        .as_ref()
        .expect("resource");
    assert_eq!(
        str_attr(&resource.attributes, "service.name").as_deref(),
        Some("tokenmeter-test")
    );
    assert_eq!(
        str_attr(&resource.attributes, "deployment.environment.name").as_deref(),
        Some("test")
    );

    // Counters: exact values, OTel names, dotted attribute keys, temporality.
    let metrics = rx.metrics();
    let want_temp = if temporality == Temporality::Delta {
        AggregationTemporality::Delta
    } else {
        AggregationTemporality::Cumulative
    };
    // The recorder's drain hook (an observable instrument that observes nothing) is not
    // exported.
    assert!(
        !metrics
            .iter()
            .any(|m| m.name.starts_with("tokenmeter.internal")),
        "internal instrument exported"
    );
    let out = last_metric(&metrics, "tokenmeter.output_tokens");
    assert_eq!(out.unit, "{token}");
    let Some(Data::Sum(sum)) = out.data else {
        panic!("output_tokens is not a sum: {out:?}")
    };
    assert!(sum.is_monotonic);
    assert_eq!(sum.aggregation_temporality, want_temp as i32);
    let point = sum
        .data_points
        .iter()
        .find(|p| {
            str_attr(&p.attributes, "gen_ai.request.model").as_deref() == Some(model.as_str())
        })
        .expect("model point");
    let value = match point.value {
        Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(v)) => {
            v as u64
        }
        Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(v)) => {
            v as u64
        }
        None => panic!("no value"),
    };
    assert_eq!(value, meter.totals().output_tokens);
    assert_eq!(value, 40);

    // Histograms: TTFT count, bounds from the catalog (or exponential), sum exact.
    let ttft = last_metric(&metrics, "gen_ai.server.time_to_first_token");
    assert_eq!(ttft.unit, "s");
    let ttft_def = catalog::by_id("ttft").expect("ttft");
    match (histograms, ttft.data) {
        (HistogramAggregation::Explicit, Some(Data::Histogram(h))) => {
            assert_eq!(h.aggregation_temporality, want_temp as i32);
            let p = &h.data_points[0];
            assert_eq!(
                p.explicit_bounds,
                ttft_def.buckets.expect("bounds").to_vec()
            );
            assert_eq!(p.count, meter.snapshot().ttft.count);
            assert!(
                (p.sum.expect("sum") - 0.03 * p.count as f64).abs() < 1e-9,
                "sum {:?}",
                p.sum
            );
            // Every 30 ms TTFT falls in the bucket of the first bound at or above it.
            let idx = ttft_def
                .buckets
                .expect("b")
                .iter()
                .position(|b| *b >= 0.03)
                .expect("a bound above 30 ms");
            assert_eq!(p.bucket_counts[idx], p.count);
            // Inter-token latency arrives through the guard's batched flushes (one
            // `record_many` per bucket), replayed into the SDK before the collection: 3 gaps
            // of 10 ms per request, all counted, the sum exact.
            let itl = last_metric(&metrics, "tokenmeter.inter_token_latency");
            let Some(Data::Histogram(h)) = itl.data else {
                panic!("itl is not a histogram: {itl:?}")
            };
            let p = h
                .data_points
                .iter()
                .find(|p| {
                    str_attr(&p.attributes, "gen_ai.request.model").as_deref()
                        == Some(model.as_str())
                })
                .expect("itl point");
            assert_eq!(p.count, 30);
            assert_eq!(p.count, meter.snapshot().itl.count);
            assert!((p.sum.expect("sum") - 0.3).abs() < 1e-9, "{:?}", p.sum);
        }
        (HistogramAggregation::Exponential { .. }, Some(Data::ExponentialHistogram(h))) => {
            assert_eq!(h.aggregation_temporality, want_temp as i32);
            assert_eq!(h.data_points[0].count, meter.snapshot().ttft.count);
        }
        (agg, other) => panic!("{agg:?}: unexpected TTFT data {other:?}"),
    }

    // Spans: GenAI name and attributes, parent from the traceparent, timing.
    let spans = wait_for("request spans", Duration::from_secs(10), || {
        let s: Vec<_> = rx
            .spans()
            .into_iter()
            .filter(|s| s.name == format!("chat {model}"))
            .collect();
        (s.len() == 10).then_some(s)
    });
    let with_remote_parent: Vec<_> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == "4bf92f3577b34da6a3ce929d0e0e4736")
        .collect();
    assert_eq!(
        with_remote_parent.len(),
        1,
        "exactly the first request joins the caller's trace"
    );
    let all = rx.spans();
    let first = with_remote_parent[0];
    let parent = all
        .iter()
        .find(|s| s.span_id == first.parent_span_id)
        .expect("http.request parent span");
    assert_eq!(parent.name, "http.request");
    assert_eq!(hex(&parent.parent_span_id), "00f067aa0ba902b7");
    for s in &spans {
        assert_eq!(
            str_attr(&s.attributes, "gen_ai.operation.name").as_deref(),
            Some("chat")
        );
        assert_eq!(
            str_attr(&s.attributes, "gen_ai.request.model").as_deref(),
            Some(model.as_str())
        );
        assert_eq!(
            int_attr(&s.attributes, "gen_ai.usage.input_tokens"),
            Some(8),
            "{:?}",
            s.attributes
        );
        assert_eq!(
            int_attr(&s.attributes, "gen_ai.usage.output_tokens"),
            Some(4)
        );
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
        assert_eq!(
            s.kind,
            opentelemetry_proto::tonic::trace::v1::span::SpanKind::Server as i32
        );
        // Attribute types as the GenAI conventions define them: finish reasons a string
        // array, token counts ints, durations doubles.
        let reasons = match attr(&s.attributes, "gen_ai.response.finish_reasons") {
            Some(AnyValue::ArrayValue(a)) => a
                .values
                .iter()
                .filter_map(|v| match &v.value {
                    Some(AnyValue::StringValue(s)) => Some(s.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            other => panic!("finish_reasons is not a string array: {other:?}"),
        };
        assert!(matches!(reasons[..], ["stop"] | ["error"]), "{reasons:?}");
        for key in ["gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"] {
            assert!(
                matches!(attr(&s.attributes, key), Some(AnyValue::IntValue(_))),
                "{key} is not an int"
            );
        }
        assert!(matches!(
            attr(&s.attributes, "gen_ai.response.time_to_first_chunk"),
            Some(AnyValue::DoubleValue(_))
        ));
        // Phase events on the span: the first token (queue -> decode visible); the request-log
        // event stays in the log.
        let events: Vec<&str> = s.events.iter().map(|e| e.name.as_str()).collect();
        assert!(events.contains(&"gen_ai.first_token"), "{events:?}");
        assert!(!events.contains(&"request finished"), "{events:?}");
        let first = s
            .events
            .iter()
            .find(|e| e.name == "gen_ai.first_token")
            .expect("event");
        assert!(
            first.time_unix_nano >= s.start_time_unix_nano
                && first.time_unix_nano <= s.end_time_unix_nano
        );
    }
    let failed = spans
        .iter()
        .filter(|s| str_attr(&s.attributes, "error.type").is_some())
        .count();
    assert_eq!(failed, 2);
    assert_eq!(exporter.stats().dropped(), 0, "{:?}", exporter.stats());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn grpc_cumulative_explicit_buckets() {
    check_pipeline(
        Transport::Grpc,
        Temporality::Cumulative,
        HistogramAggregation::Explicit,
    );
}

#[test]
fn http_protobuf_delta_explicit_buckets() {
    check_pipeline(
        Transport::Http,
        Temporality::Delta,
        HistogramAggregation::Explicit,
    );
}

#[test]
fn http_protobuf_cumulative_exponential_histograms() {
    check_pipeline(
        Transport::Http,
        Temporality::Cumulative,
        HistogramAggregation::Exponential {
            max_size: 160,
            max_scale: 20,
        },
    );
}

#[test]
fn collector_down_then_up_drops_are_counted_and_export_resumes() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut exporter = Otlp::new()
        .endpoint(format!("http://{addr}"))
        .protocol(Protocol::Grpc)
        .interval(Duration::from_secs(3600))
        .timeout(Duration::from_secs(2))
        .build()
        .expect("build");
    let meter = workload(&mut exporter, "down-then-up", 5);
    assert!(
        exporter.flush().is_err(),
        "nobody listens: the export must fail"
    );
    let s = exporter.stats();
    assert!(
        s.metric_export_failures >= 1 && s.metric_points_dropped > 0,
        "{s:?}"
    );
    assert_eq!(s.spans_dropped_export_failed, 10, "{s:?}");

    // The collector comes back on the same port: the next export goes through, with the
    // cumulative totals (nothing lost for cumulative counters).
    let rx = OtlpReceiver::start(Transport::Grpc, addr.parse().expect("addr"));
    wait_for("export to resume", Duration::from_secs(30), || {
        exporter.flush().ok()
    });
    let out = last_metric(&rx.metrics(), "tokenmeter.output_tokens");
    let Some(Data::Sum(sum)) = out.data else {
        panic!("not a sum")
    };
    let total: f64 = sum
        .data_points
        .iter()
        .map(|p| match p.value {
            Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(v)) => {
                v as f64
            }
            Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(
                v,
            )) => v,
            None => 0.0,
        })
        .sum();
    assert_eq!(total as u64, meter.totals().output_tokens);
}

#[test]
fn refusing_collector_counts_drops_and_recovers() {
    let rx = OtlpReceiver::start(Transport::Http, "127.0.0.1:0".parse().expect("addr"));
    rx.set_refuse(true);
    let mut exporter = Otlp::new()
        .endpoint(rx.endpoint())
        .protocol(Protocol::HttpProtobuf)
        .interval(Duration::from_secs(3600))
        .timeout(Duration::from_secs(2))
        .build()
        .expect("build");
    workload(&mut exporter, "refused", 3);
    assert!(exporter.flush().is_err());
    let s = exporter.stats();
    assert!(
        s.metric_export_failures >= 1 && s.spans_dropped_export_failed == 6,
        "{s:?}"
    );
    rx.set_refuse(false);
    exporter.flush().expect("accepted again");
    assert!(!rx.metrics().is_empty());
}

#[test]
fn stalled_collector_never_blocks_the_generation_loop_and_memory_stays_bounded() {
    let stalled = Stalled::start();
    let mut exporter = Otlp::new()
        .endpoint(stalled.endpoint())
        .protocol(Protocol::Grpc)
        .interval(Duration::from_millis(50))
        .timeout(Duration::from_millis(300))
        .span_queue(16)
        .span_batch(4, Duration::from_millis(10))
        .build()
        .expect("build");
    let recorder = exporter.take_recorder().expect("recorder");
    let layer = exporter
        .tracing_layer::<tracing_subscriber::Registry>()
        .expect("layer");
    let subscriber = tracing_subscriber::registry().with(layer);
    let n_requests = 2000u64;
    let (per_token, per_request) = tracing::subscriber::with_default(subscriber, || {
        metrics::with_local_recorder(&recorder, || {
            let meter = Meter::builder().model("stalled").build();
            let mut token_time = Duration::ZERO;
            let start = Instant::now();
            for _ in 0..n_requests {
                let mut req = meter.request().prompt_tokens(4).start();
                req.scheduled();
                let t = Instant::now();
                for _ in 0..64 {
                    req.token();
                }
                token_time += t.elapsed();
                req.finish(Finish::Stop);
            }
            (
                token_time / (n_requests as u32 * 64),
                start.elapsed() / n_requests as u32,
            )
        })
    });
    // Informational (no timing assertions): what token() and a whole request cost while the
    // collector is stalled.
    eprintln!(
        "stalled collector: token() {per_token:?}, request (start + 64 tokens + finish) {per_request:?}"
    );
    let s = wait_for("drops to be counted", Duration::from_secs(30), || {
        let s = exporter.stats();
        (s.spans_dropped_queue_full > 0 && s.metric_export_failures > 0).then_some(s)
    });
    // The bounded queue dropped most spans instead of growing: at most queue + in-flight batches
    // were ever held.
    assert!(
        s.spans_dropped_queue_full + s.spans_dropped_export_failed <= n_requests,
        "{s:?}"
    );
    assert!(
        s.spans_dropped_queue_full >= n_requests - 16 - 4 * 50,
        "{s:?}"
    );
    assert!(stalled.connections() >= 1, "the exporter connected");
    // Dropping the exporter with a stalled collector returns (bounded by the timeouts).
    let t = Instant::now();
    drop(exporter);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        t.elapsed()
    );
}

#[test]
fn vllm_preset_names_map_back_to_otel_names_with_the_presets_buckets() {
    let rx = OtlpReceiver::start(Transport::Http, "127.0.0.1:0".parse().expect("addr"));
    let mut exporter = Otlp::new()
        .endpoint(rx.endpoint())
        .protocol(Protocol::HttpProtobuf)
        .interval(Duration::from_secs(3600))
        .traces(false)
        .build()
        .expect("build");
    assert!(
        exporter
            .tracing_layer::<tracing_subscriber::Registry>()
            .is_none()
    );
    let recorder = exporter.take_recorder().expect("recorder");
    let meter = metrics::with_local_recorder(&recorder, || {
        let meter = Meter::builder()
            .model("vllm-style")
            .naming(tokenmeter_core::Naming::Vllm)
            .build();
        for _ in 0..4 {
            let mut req = meter.request().prompt_tokens(3).start();
            req.scheduled();
            req.tokens(5);
            req.finish(Finish::Length);
        }
        meter
    });
    exporter.flush().expect("flush");
    let metrics = rx.metrics();
    let ttft = last_metric(&metrics, "gen_ai.server.time_to_first_token");
    let Some(Data::Histogram(h)) = ttft.data else {
        panic!("not a histogram")
    };
    let p = &h.data_points[0];
    let def = catalog::by_id("ttft").expect("ttft");
    assert_eq!(
        p.explicit_bounds,
        def.vllm_buckets.expect("vllm bounds").to_vec()
    );
    assert_eq!(p.count, 4);
    assert_eq!(
        str_attr(&p.attributes, "gen_ai.request.model").as_deref(),
        Some("vllm-style")
    );
    let ended = last_metric(&metrics, "tokenmeter.requests");
    let Some(Data::Sum(sum)) = ended.data else {
        panic!("not a sum")
    };
    // vLLM's `finished_reason` label goes back to our `finish_reason` attribute.
    let point = sum
        .data_points
        .iter()
        .find(|p| str_attr(&p.attributes, "finish_reason").as_deref() == Some("length"))
        .expect("length point");
    assert_eq!(
        point.value,
        Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(4))
    );
    assert_eq!(meter.totals().output_tokens, 20);
    assert!(
        metrics.iter().all(|m| !m.name.contains(':')),
        "no vLLM-style names over OTLP"
    );
}

/// Two meters with the same labels (and the core resolving handles again) register the same
/// gauge key twice: both registrations must move one series, not two that overwrite each other.
#[test]
fn gauges_registered_twice_share_one_value() {
    let rx = OtlpReceiver::start(Transport::Http, "127.0.0.1:0".parse().expect("addr"));
    let mut exporter = Otlp::new()
        .endpoint(rx.endpoint())
        .protocol(Protocol::HttpProtobuf)
        .interval(Duration::from_secs(3600))
        .traces(false)
        .build()
        .expect("build");
    let recorder = exporter.take_recorder().expect("recorder");
    let held = metrics::with_local_recorder(&recorder, || {
        let a = Meter::builder().model("shared-gauge").build();
        let b = Meter::builder().model("shared-gauge").build();
        let mut held = Vec::new();
        for meter in [&a, &a, &b] {
            let mut req = meter.request().prompt_tokens(1).start();
            req.scheduled();
            held.push(req);
        }
        // One more waiting, on the second meter.
        held.push(b.request().prompt_tokens(1).start());
        held
    });
    exporter.flush().expect("flush");
    let metrics = rx.metrics();
    let gauge_value = |name: &str| {
        let m = last_metric(&metrics, name);
        let Some(Data::Gauge(g)) = m.data else {
            panic!("{name} is not a gauge: {m:?}")
        };
        let points: Vec<_> = g
            .data_points
            .iter()
            .filter(|p| {
                str_attr(&p.attributes, "gen_ai.request.model").as_deref() == Some("shared-gauge")
            })
            .collect();
        assert_eq!(points.len(), 1, "{name}: {points:?}");
        match points[0].value {
            Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(
                v,
            )) => v,
            ref other => panic!("{name}: {other:?}"),
        }
    };
    assert_eq!(gauge_value("tokenmeter.requests.running"), 3.0);
    assert_eq!(gauge_value("tokenmeter.requests.waiting"), 1.0);
    drop(held);
}

/// Sample lines of a Prometheus exposition as `name{sorted labels}` -> value.
fn exposition_samples(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("sample line");
            let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
            let mut labels: Vec<&str> = labels
                .trim_end_matches('}')
                .split(',')
                .filter(|s| !s.is_empty())
                .collect();
            labels.sort_unstable();
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().expect("value"),
            };
            (format!("{name}{{{}}}", labels.join(",")), value)
        })
        .collect()
}

/// The exposition key of an OTLP data point of the metric emitted as `name`, with `extra`
/// labels (e.g. `le`) added.
fn series_key(name: &str, attrs: &[PKeyValue], extra: Option<(&str, String)>) -> String {
    let mut labels: Vec<String> = attrs
        .iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                other => panic!("non-string attribute {other:?}"),
            };
            format!("{}=\"{v}\"", catalog::prometheus_label(&kv.key))
        })
        .collect();
    if let Some((k, v)) = extra {
        labels.push(format!("{k}=\"{v}\""));
    }
    labels.sort_unstable();
    format!("{name}{{{}}}", labels.join(","))
}

fn number(p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint) -> f64 {
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
    match p.value {
        Some(Value::AsInt(v)) => v as f64,
        Some(Value::AsDouble(v)) => v,
        None => panic!("no value"),
    }
}

/// One workload through Prometheus and OTLP side by side (the fanout `Exporters` installs):
/// every OTLP data point (counters, gauges, histogram buckets, sums and counts) equals the
/// sample the Prometheus exposition shows for the same series.
#[test]
fn otlp_push_carries_the_values_the_prometheus_exposition_shows() {
    let rx = OtlpReceiver::start(Transport::Http, "127.0.0.1:0".parse().expect("addr"));
    let mut otlp = Otlp::new()
        .endpoint(rx.endpoint())
        .protocol(Protocol::HttpProtobuf)
        .temporality(Temporality::Cumulative)
        .traces(false)
        .interval(Duration::from_secs(3600))
        .timeout(Duration::from_secs(5))
        .build()
        .expect("otlp");
    let mut prom = tokenmeter_export::Prometheus::new()
        .without_listener()
        .build()
        .expect("prometheus");
    let fanout = tokenmeter_export::Fanout::new()
        .with(prom.take_recorder().expect("prometheus recorder"))
        .with(otlp.take_recorder().expect("otlp recorder"));
    let (clock, mock) = Clock::mock();
    let meter = metrics::with_local_recorder(&fanout, || {
        let meter = Meter::builder().model("side-by-side").clock(clock).build();
        for i in 0..12u64 {
            let mut req = meter.request().prompt_tokens(10 + i as usize).start();
            mock.increment(Duration::from_millis(3 * i + 1));
            req.scheduled();
            mock.increment(Duration::from_millis(40 + 20 * i));
            req.token();
            for step in 0..i {
                mock.increment(Duration::from_millis(5 + step * 7));
                // Multi-token steps: weighted records through the fanout.
                req.tokens(1 + (step % 3) as u32);
            }
            match i % 4 {
                0 => {
                    req.fail(ErrorKind::Timeout);
                }
                1 => drop(req),
                2 => {
                    req.finish(Finish::Length);
                }
                _ => {
                    req.finish(Finish::Stop);
                }
            }
        }
        meter
    });
    otlp.flush().expect("flush");
    let samples = exposition_samples(&prom.render());
    let metrics = rx.metrics();
    let mut compared = 0;
    for r in meter.metric_names().metrics() {
        let Some(m) = metrics.iter().rev().find(|m| m.name == r.otel_name) else {
            continue;
        };
        let mut check = |key: String, otlp_value: f64| {
            let shown = *samples
                .get(&key)
                .unwrap_or_else(|| panic!("{key} is pushed over OTLP but not exposed"));
            assert!(
                (shown - otlp_value).abs() <= 1e-9 * shown.abs().max(1.0),
                "{key}: Prometheus shows {shown}, OTLP pushed {otlp_value}"
            );
            compared += 1;
        };
        match m.data.as_ref().expect("data") {
            Data::Sum(s) => {
                for p in &s.data_points {
                    check(series_key(&r.name, &p.attributes, None), number(p));
                }
            }
            Data::Gauge(g) => {
                for p in &g.data_points {
                    check(series_key(&r.name, &p.attributes, None), number(p));
                }
            }
            Data::Histogram(h) => {
                for p in &h.data_points {
                    let mut cumulative = 0;
                    for (i, count) in p.bucket_counts.iter().enumerate() {
                        cumulative += count;
                        let le = p
                            .explicit_bounds
                            .get(i)
                            .map_or("+Inf".to_owned(), |b| b.to_string());
                        let key = series_key(
                            &format!("{}_bucket", r.name),
                            &p.attributes,
                            Some(("le", le)),
                        );
                        check(key, cumulative as f64);
                    }
                    check(
                        series_key(&format!("{}_count", r.name), &p.attributes, None),
                        p.count as f64,
                    );
                    check(
                        series_key(&format!("{}_sum", r.name), &p.attributes, None),
                        p.sum.expect("sum"),
                    );
                }
            }
            other => panic!("{}: unexpected data {other:?}", r.otel_name),
        }
    }
    // TTFT, TPOT, ITL, e2e (ok and per error type), queue, prefill, decode, token-count
    // histograms, request and token counters, running/waiting gauges, info: well over 100.
    assert!(compared > 100, "only {compared} samples compared");
    assert!(rx.malformed().is_empty(), "{:?}", rx.malformed());
}
