//! The demo server with `--otlp`: its requests reach an OTLP receiver (HTTP/protobuf on
//! 127.0.0.1) as metrics and spans. A binary of its own: the demo installs the process-wide
//! exporters once, with the first server's OTLP setting.

use std::time::{Duration, Instant};

use tokenmeter_examples::demo::{ServerOptions, loadgen, start_server, telemetry};
use tokenmeter_tests::otlp_receiver::{OtlpReceiver, Transport};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_exports_its_requests_over_otlp() {
    let rx = OtlpReceiver::start(Transport::Http, "127.0.0.1:0".parse().expect("addr"));
    let opts = ServerOptions {
        model_id: Some("demo-otlp".into()),
        otlp: Some(rx.endpoint()),
        window: Duration::from_secs(600),
        ..ServerOptions::default()
    };
    let s = start_server(&opts).await.expect("server");
    let c = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let n = 3u64;
    let mut tokens = 0;
    for i in 0..n {
        let body = loadgen::chat_body(&s.model_id, "Say something.", 5, 0.0, i);
        let r = loadgen::stream_chat(&c, &s.base_url(), &body, Instant::now())
            .await
            .expect("stream");
        assert!(r.error.is_none(), "{:?}", r.error);
        tokens += r.tokens;
    }
    // The last request's guard ends before its final SSE events are sent, so everything is
    // recorded by now; flushing exports it (blocking, bounded by the export timeout).
    tokio::task::spawn_blocking(telemetry::try_flush)
        .await
        .expect("join")
        .expect("flush");
    let metrics = rx.metrics();
    let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
    for want in [
        "gen_ai.server.time_to_first_token",
        "gen_ai.server.time_per_output_token",
        "gen_ai.server.request.duration",
    ] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }
    let spans = rx.spans();
    assert!(
        spans.len() as u64 >= n,
        "{} spans for {n} requests",
        spans.len()
    );
    assert!(rx.malformed().is_empty(), "{:?}", rx.malformed());
    assert!(tokens >= n);
}
