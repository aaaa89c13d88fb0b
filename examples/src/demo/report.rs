//! The end-of-run report: a client-vs-server table, SVG plots (TTFT and TPOT distributions,
//! tokens/s over time) and the snapshot JSON.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use tokenmeter_core::catalog;
use tokenmeter_core::{LatencySummary, Meter};

use super::loadgen::{LoadResult, ServerView, percentile};

fn ms(v: Option<f64>) -> String {
    v.map(|s| format!("{:.1}", s * 1e3))
        .unwrap_or_else(|| "-".into())
}

fn client_pcts(mut v: Vec<f64>) -> [Option<f64>; 3] {
    [
        percentile(&mut v, 50.0),
        percentile(&mut v, 90.0),
        percentile(&mut v, 99.0),
    ]
}

fn server_pcts(s: &LatencySummary) -> [Option<f64>; 3] {
    if s.count == 0 {
        [None; 3]
    } else {
        [Some(s.p50), Some(s.p90), Some(s.p99)]
    }
}

/// Counter values from `/metrics` the table needs, named through the server's meter.
fn counter(meter: &Meter, view: &ServerView, id: &str, want: &[(&str, &str)]) -> Option<f64> {
    let def = catalog::by_id(id)?;
    let name = meter.metric_names().name(def);
    view.samples
        .contains_key(name)
        .then(|| view.sum(name, want))
}

/// The side-by-side table: client-measured vs server-reported.
pub fn table(r: &LoadResult, view: &ServerView, meter: &Meter) -> String {
    let ok: Vec<_> = r.ok().collect();
    let s = &view.snapshot;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{} requests in {:.1} s ({} ok, {} errors), concurrency {}, max_tokens {}",
        r.records.len(),
        r.wall,
        ok.len(),
        r.records.len() - ok.len(),
        r.opts.concurrency,
        r.opts.max_tokens
    );
    let _ = writeln!(
        out,
        "{:<22} {:>10} {:>10} {:>10} | {:>10} {:>10} {:>10}",
        "ms", "client p50", "p90", "p99", "server p50", "p90", "p99"
    );
    let rows: [(&str, Vec<f64>, &LatencySummary); 3] = [
        ("TTFT", ok.iter().filter_map(|x| x.ttft).collect(), &s.ttft),
        ("TPOT", ok.iter().filter_map(|x| x.tpot).collect(), &s.tpot),
        ("E2E", ok.iter().map(|x| x.e2e).collect(), &s.e2e),
    ];
    for (name, c, sv) in rows {
        let c = client_pcts(c);
        let sv = server_pcts(sv);
        let _ = writeln!(
            out,
            "{:<22} {:>10} {:>10} {:>10} | {:>10} {:>10} {:>10}",
            name,
            ms(c[0]),
            ms(c[1]),
            ms(c[2]),
            ms(sv[0]),
            ms(sv[1]),
            ms(sv[2])
        );
    }
    let client_tokens: u64 = r.records.iter().map(|x| x.tokens).sum();
    let server_tokens =
        counter(meter, view, "output_tokens", &[]).unwrap_or(s.totals.output_tokens as f64);
    let _ = writeln!(
        out,
        "{:<22} {:>32} | {:>32}",
        "",
        "client",
        format!("server (SLO {})", slo_text(&meter.slo()))
    );
    let _ = writeln!(
        out,
        "{:<22} {:>32} | {:>32}",
        "output tokens", client_tokens, server_tokens
    );
    let _ = writeln!(
        out,
        "{:<22} {:>32.2} | {:>32.2}",
        "throughput tokens/s",
        r.tokens_per_second(),
        server_tokens / r.wall.max(1e-9)
    );
    let slo = meter.slo();
    let good = ok
        .iter()
        .filter(|x| {
            slo.ttft_bound()
                .is_none_or(|b| x.ttft.is_some_and(|t| t <= b.as_secs_f64()))
                && slo
                    .tpot_bound()
                    .is_none_or(|b| x.tpot.is_none_or(|t| t <= b.as_secs_f64()))
        })
        .count();
    let _ = writeln!(
        out,
        "{:<22} {:>32} | {:>32}",
        "goodput (met SLO)",
        format!("{good}/{}", ok.len()),
        format!("{}/{}", s.goodput_requests, s.requests_succeeded)
    );
    let nonfinite = counter(meter, view, "nonfinite_values", &[])
        .map(|v| format!("{v}"))
        .unwrap_or_else(|| "0 (none recorded)".into());
    let _ = writeln!(
        out,
        "{:<22} {:>32} | {:>32}",
        "NaN/Inf in logits", "n/a (not visible)", nonfinite
    );
    let refusals = counter(meter, view, "quality_refusals", &[])
        .map(|v| format!("{v}"))
        .unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "{:<22} {:>32} | {:>32}",
        "refusals",
        r.records.iter().filter(|x| x.refusal).count(),
        refusals
    );
    let _ = writeln!(
        out,
        "{:<22} {:>32} | {:>32}",
        "requests ended",
        r.records.len(),
        s.totals.requests_ended
    );
    out
}

/// Per-variant view of the run as the clients saw it (requests' variant and perplexity come
/// back in the usage block), with the golden-set score of each variant's passes; `None` when
/// the run had neither variants nor golden passes.
pub fn variants(r: &LoadResult) -> Option<String> {
    let mut names: Vec<&str> = r
        .ok()
        .filter_map(|x| x.server.as_ref().map(|s| s.variant.as_str()))
        .chain(r.golden.iter().map(|p| p.model_version.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.iter().all(|n| n.is_empty()) && r.golden.is_empty() {
        return None;
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:>8} {:>10} {:>10} {:>10} {:>10} {:>11} {:>16}",
        "variant",
        "requests",
        "TTFT p50",
        "TTFT p99",
        "TPOT p50",
        "TPOT p99",
        "perplexity",
        "golden score"
    );
    for name in names {
        let recs: Vec<_> = r
            .ok()
            .filter(|x| x.server.as_ref().is_some_and(|s| s.variant == name))
            .collect();
        let mut ttft: Vec<f64> = recs.iter().filter_map(|x| x.ttft).collect();
        let mut tpot: Vec<f64> = recs.iter().filter_map(|x| x.tpot).collect();
        let ppl: Vec<f64> = recs
            .iter()
            .filter_map(|x| x.server.as_ref().and_then(|s| s.perplexity))
            .collect();
        let mean_ppl = (!ppl.is_empty()).then(|| ppl.iter().sum::<f64>() / ppl.len() as f64);
        let golden = super::golden::score(&r.golden, name)
            .map_or_else(|| "-".to_string(), |(s, n)| format!("{s:.3} ({n} ans.)"));
        let _ = writeln!(
            out,
            "{:<8} {:>8} {:>10} {:>10} {:>10} {:>10} {:>11} {:>16}",
            if name.is_empty() { "-" } else { name },
            recs.len(),
            ms(percentile(&mut ttft, 50.0)),
            ms(percentile(&mut ttft, 99.0)),
            ms(percentile(&mut tpot, 50.0)),
            ms(percentile(&mut tpot, 99.0)),
            mean_ppl.map_or_else(|| "-".to_string(), |p| format!("{p:.3}")),
            golden
        );
    }
    Some(out)
}

fn slo_text(slo: &tokenmeter_core::Slo) -> String {
    let f = |d: Option<std::time::Duration>| {
        d.map(|d| format!("{:.0}ms", d.as_secs_f64() * 1e3))
            .unwrap_or_else(|| "-".into())
    };
    format!(
        "TTFT<={} TPOT<={}",
        f(slo.ttft_bound()),
        f(slo.tpot_bound())
    )
}

type PlotResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn histogram_svg(path: &Path, title: &str, values_ms: &[f64]) -> PlotResult<()> {
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let max = values_ms.iter().copied().fold(0.0f64, f64::max).max(1.0);
    let bins = 40usize;
    let w = max * 1.05 / bins as f64;
    let mut counts = vec![0u32; bins];
    for &v in values_ms {
        let i = ((v / w) as usize).min(bins - 1);
        counts[i] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..(w * bins as f64), 0u32..(top + top / 10 + 1))
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("ms")
        .y_desc("requests")
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, &c)| {
            let x0 = i as f64 * w;
            Rectangle::new([(x0, 0u32), (x0 + w, c)], BLUE.mix(0.6).filled())
        }))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

fn throughput_svg(path: &Path, r: &LoadResult) -> PlotResult<()> {
    let secs = r.wall.ceil().max(1.0) as usize;
    let mut per_sec = vec![0u32; secs + 1];
    for rec in &r.records {
        for &t in &rec.token_times {
            let i = (t as usize).min(secs);
            per_sec[i] += 1;
        }
    }
    let top = per_sec.iter().copied().max().unwrap_or(1).max(1);
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "output tokens/s over time (client side)",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..(secs as f64 + 1.0), 0f64..(top as f64 * 1.1))
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("s")
        .y_desc("tokens/s")
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(
            per_sec
                .iter()
                .enumerate()
                .map(|(i, &c)| (i as f64 + 0.5, c as f64)),
            &RED,
        ))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

/// Writes the plots, the snapshot JSON, the per-request records and the table into `dir`;
/// returns the paths written.
///
/// # Errors
/// On I/O or plotting errors.
pub fn write(
    dir: &Path,
    r: &LoadResult,
    view: &ServerView,
    table_text: &str,
) -> PlotResult<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let ok: Vec<_> = r.ok().collect();
    let mut paths = Vec::new();
    type Pick = fn(&super::loadgen::ClientRecord) -> Option<f64>;
    let dists: [(&str, &str, Pick); 2] = [
        ("ttft.svg", "TTFT distribution (client side)", |x| x.ttft),
        ("tpot.svg", "TPOT distribution (client side)", |x| x.tpot),
    ];
    for (file, title, pick) in dists {
        let p = dir.join(file);
        let ms: Vec<f64> = ok.iter().filter_map(|x| pick(x)).map(|s| s * 1e3).collect();
        histogram_svg(&p, title, &ms)?;
        paths.push(p);
    }
    let p = dir.join("tokens_per_second.svg");
    throughput_svg(&p, r)?;
    paths.push(p);
    let p = dir.join("snapshot.json");
    std::fs::write(&p, serde_json::to_string_pretty(&view.snapshot_json)?)?;
    paths.push(p);
    let p = dir.join("requests.json");
    std::fs::write(&p, serde_json::to_string_pretty(&r.records)?)?;
    paths.push(p);
    let p = dir.join("summary.txt");
    std::fs::write(&p, table_text)?;
    paths.push(p);
    Ok(paths)
}
