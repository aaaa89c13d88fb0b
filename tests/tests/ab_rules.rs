//! Issue 17: docs/deploy/prometheus/ab-recording-rules.yml on a real Prometheus scraping a live
//! meter whose requests carry a `variant` label and an `AbMonitor` that exports the quality side
//! per variant: the variant reaches every series the rules read, and the rules give the values
//! of the requests made between scrapes.
//!
//! The rule file is used as it is, except that its group interval (30 s) becomes 1 s. Counters
//! are created before the first scrape and the measured requests happen after it, so every
//! series has the same sample times: `increase()` scales each by the same factor and the ratios
//! and means below are exact (up to floating-point rounding).

use std::path::Path;
use std::time::Duration;

use tokenmeter::quality::ab::{AbConfig, AbMonitor, VARIANT_LABEL};
use tokenmeter::quality::{LogprobSummary, QualityReport};
use tokenmeter_core::clock::Clock;
use tokenmeter_core::{ErrorKind, Finish, Meter, Slo};
use tokenmeter_tests::prom::PromServer;
use tokenmeter_tests::{bins, exporter};

const DEADLINE: Duration = Duration::from_secs(60);

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

struct Variant<'a> {
    name: &'a str,
    ttft_ms: u64,
    perplexity: f64,
}

/// `n` requests of `v`: every `fail_every`-th fails, every `refuse_every`-th refuses.
fn requests(
    meter: &Meter,
    mock: &quanta::Mock,
    ab: &AbMonitor,
    v: &Variant<'_>,
    n: u64,
    fail_every: u64,
    refuse_every: u64,
) {
    for i in 0..n {
        let mut req = meter.request().label(VARIANT_LABEL, v.name).start();
        mock.increment(Duration::from_millis(v.ttft_ms));
        req.token();
        mock.increment(Duration::from_millis(20));
        req.token();
        let report = QualityReport {
            refusal: i % refuse_every == 0,
            logprobs: LogprobSummary {
                perplexity: Some(v.perplexity),
                ..LogprobSummary::default()
            },
            ..QualityReport::default()
        };
        if i % fail_every == 0 {
            let s = req.fail(ErrorKind::Internal);
            ab.record(v.name, &s, None);
        } else {
            let s = req.finish(Finish::Stop);
            ab.record(v.name, &s, Some(&report));
        }
    }
}

#[test]
fn the_ab_rules_compare_live_variants() {
    let Some(prom_bin) = bins::require("prometheus") else {
        return;
    };
    let target = exporter::installed().addr;
    let (clock, mock) = Clock::mock();
    let meter = Meter::builder()
        .model("ab-live")
        .slo(Slo::new().ttft(Duration::from_millis(200)))
        .request_labels([VARIANT_LABEL], 4)
        .clock(clock)
        .build();
    let ab = AbMonitor::new(&meter, AbConfig::default()).expect("config");
    let a = Variant {
        name: "a",
        ttft_ms: 100,
        perplexity: 3.0,
    };
    let b = Variant {
        name: "b",
        ttft_ms: 300,
        perplexity: 4.5,
    };
    // Before the first scrape: every series exists.
    // 10 requests each: 0 and 5 fail, 3, 6 and 9 refuse.
    requests(&meter, &mock, &ab, &a, 10, 5, 3);
    requests(&meter, &mock, &ab, &b, 10, 5, 3);

    let dir = std::env::temp_dir().join(format!("tokenmeter-ab-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("rules dir");
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy/prometheus");
    let text = std::fs::read_to_string(deploy.join("ab-recording-rules.yml")).expect("rules");
    let rules = dir.join("ab-recording-rules.yml");
    std::fs::write(&rules, text.replace("interval: 30s", "interval: 1s")).expect("write");
    let prom = PromServer::start(&prom_bin, target, "1s", &[rules]);
    let sel = r#"gen_ai_request_model="ab-live""#;
    // The variant reaches core's request series and the monitor's own.
    for (expr, want) in [
        (
            format!(r#"sum(tokenmeter_requests_total{{{sel},variant="b",finish_reason="error"}})"#),
            2.0,
        ),
        (
            format!(r#"tokenmeter_quality_ab_refusals_total{{{sel},variant="b"}}"#),
            3.0,
        ),
        (
            format!(r#"gen_ai_server_time_to_first_token_seconds_count{{{sel},variant="a"}}"#),
            10.0,
        ),
    ] {
        let got = prom.wait_value(&expr, DEADLINE, |v| close(v, want));
        assert!(close(got, want), "`{expr}`: {got}\n{}", prom.log());
    }

    // After it, 200 requests each: a fails every 20th (10) and b every 4th (50); only
    // successes have a quality report.
    requests(&meter, &mock, &ab, &a, 200, 20, 50);
    requests(&meter, &mock, &ab, &b, 200, 4, 5);
    let in_process = ab.window("b");
    assert_eq!((in_process.ended(), in_process.failed), (210, 52));

    let wait = |expr: &str, want: f64| {
        let got = prom.wait_value(expr, DEADLINE, |v| close(v, want));
        assert!(
            close(got, want),
            "`{expr}`: {got} != {want}\n{}",
            prom.log()
        );
    };
    let m = r#"model="ab-live""#;
    wait(
        &format!(r#"tokenmeter:ab_error:ratio_30m{{{m},variant="a"}}"#),
        10.0 / 200.0,
    );
    wait(
        &format!(r#"tokenmeter:ab_error:ratio_30m{{{m},variant="b"}}"#),
        50.0 / 200.0,
    );
    wait(
        &format!(r#"tokenmeter:ab_error:ratio_30m_diff{{{m},variant="b"}}"#),
        50.0 / 200.0 - 10.0 / 200.0,
    );
    // a: of its 190 successes, 50 and 150 refuse (0 and 100 failed).
    wait(
        &format!(r#"tokenmeter:ab_refusal:ratio_30m{{{m},variant="a"}}"#),
        2.0 / 190.0,
    );
    // b: of its 150 successes, the multiples of 5 that are not multiples of 20 refuse: 30.
    wait(
        &format!(r#"tokenmeter:ab_refusal:ratio_30m{{{m},variant="b"}}"#),
        30.0 / 150.0,
    );
    wait(
        &format!(r#"tokenmeter:ab_perplexity:mean30m_diff{{{m},variant="b"}}"#),
        1.5,
    );
    wait(
        &format!(r#"tokenmeter:ab_error:ratio_30m_significant{{{m},variant="b"}}"#),
        1.0,
    );
    wait(
        &format!(r#"tokenmeter:ab_refusal:ratio_30m_significant{{{m},variant="b"}}"#),
        1.0,
    );
    // The SLO is 200 ms: every success of a meets it, none of b.
    wait(
        &format!(r#"tokenmeter:ab_goodput:ratio_30m_diff{{{m},variant="b"}}"#),
        -1.0,
    );
    let ttft = prom.wait_value(
        &format!(r#"tokenmeter:ab_ttft_seconds:p50_30m_diff{{{m},variant="b"}}"#),
        DEADLINE,
        |v| v > 0.0,
    );
    assert!(ttft > 0.0);
}
