//! Variant B (`--variant-b`) over HTTP with the random-weight model: B takes its share of the
//! requests (or those that ask for it with the variant header), generates from perturbed
//! weights, and every request's metrics carry `variant="a"|"b"`.

use std::time::{Duration, Instant};

use tokenmeter_examples::demo::loadgen::{self, ServerView};
use tokenmeter_examples::demo::{ServerOptions, VariantB, start_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variant_b_serves_its_share_from_perturbed_weights_under_its_label() {
    let opts = ServerOptions {
        model_id: Some("demo-variants".into()),
        window: Duration::from_secs(600),
        variant_b: Some(VariantB::parse("0.5:noise=2").expect("variant")),
        ..ServerOptions::default()
    };
    let s = start_server(&opts).await.expect("server");
    let c = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let origin = Instant::now();
    // Greedy, the same prompt: A answers alike every time, B from other weights.
    let body = loadgen::chat_body(&s.model_id, "Say something.", 12, 0.0, 1);
    let mut served = Vec::new();
    for _ in 0..6 {
        let r = loadgen::stream_chat(&c, &s.base_url(), &body, origin)
            .await
            .expect("request");
        let t = r.server.clone().expect("server timing");
        assert!(t.perplexity.is_some_and(f64::is_finite), "{t:?}");
        served.push((t.variant, r.text));
    }
    let variants: Vec<&str> = served.iter().map(|(v, _)| v.as_str()).collect();
    // Requests 1..=6 (the server numbers them from 1): B takes every other one.
    assert_eq!(variants, ["a", "b", "a", "b", "a", "b"]);
    assert_eq!(served[0].1, served[2].1);
    assert_eq!(served[1].1, served[3].1);
    assert_ne!(served[0].1, served[1].1, "B's weights are perturbed");
    // A client may ask for a variant.
    let forced = loadgen::stream_chat_as(&c, &s.base_url(), &body, origin, Some("b"))
        .await
        .expect("request");
    assert_eq!(forced.server.expect("timing").variant, "b");

    let view = ServerView::fetch(&s.base_url(), &s.model_id)
        .await
        .expect("server view");
    let ttft = s
        .meter
        .metric_names()
        .name(tokenmeter_core::catalog::by_id("ttft").expect("ttft"))
        .to_string();
    let count = |v: &str| view.sum(&format!("{ttft}_count"), &[("variant", v)]);
    assert_eq!((count("a"), count("b")), (3.0, 4.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_golden_probe_and_the_ab_readout_see_both_variants() {
    use tokenmeter::quality::ab::AbMetric;
    use tokenmeter::quality::probe::{GoldenItem, GoldenSet, Outcome, Scoring};
    use tokenmeter_examples::demo::golden::GoldenProbe;
    use tokenmeter_examples::demo::loadgen::LoadOptions;

    let opts = ServerOptions {
        model_id: Some("demo-variants-golden".into()),
        window: Duration::from_secs(600),
        variant_b: Some(VariantB::parse("0.5").expect("variant")),
        ..ServerOptions::default()
    };
    let s = start_server(&opts).await.expect("server");
    let ab = s.ab.clone().expect("an A/B readout with --variant-b");
    let item = |id: &str, prompt: &str| GoldenItem {
        id: id.into(),
        prompt: prompt.into(),
        references: vec!["a".into(), "e".into()],
        scoring: Scoring::Contains,
        max_tokens: Some(4),
    };
    let set =
        GoldenSet::from_items("tiny", vec![item("one", "Hello"), item("two", "Hi")]).expect("set");
    let load = LoadOptions {
        concurrency: 1,
        duration: Duration::from_secs(2),
        max_tokens: 4,
        live: false,
        golden: Some(GoldenProbe {
            set,
            meter: s.meter.clone(),
            every: Duration::from_millis(10),
            variants: vec!["a".into(), "b".into()],
            ab: Some(ab.clone()),
        }),
        ..LoadOptions::default()
    };
    let r = loadgen::run(&s.base_url(), &s.model_id, &load)
        .await
        .expect("load");
    // Passes on both variants, the first one answered in full (the load lasts 2 s).
    for v in ["a", "b"] {
        let first = r
            .golden
            .iter()
            .find(|p| p.model_version == v)
            .expect("a pass per variant");
        assert_eq!(first.count(Outcome::Ok), 2, "{first:?}");
    }
    let answered = |v: &str| -> u64 {
        r.golden
            .iter()
            .filter(|p| p.model_version == v)
            .map(|p| p.count(Outcome::Ok) as u64)
            .sum()
    };
    // The readout holds every golden score and every request, per variant.
    let readout = ab.readout("a", "b");
    let golden = readout.row(AbMetric::GoldenScore).expect("golden row");
    assert_eq!((golden.n_a, golden.n_b), (answered("a"), answered("b")));
    // Every request the server ended is one of the client's records (load + probe).
    let view = ServerView::fetch(&s.base_url(), &s.model_id)
        .await
        .expect("server view");
    assert_eq!(view.snapshot.totals.requests_ended, r.records.len() as u64);
}
