//! docs/metrics.md is the catalog rendered; this keeps them equal.

#[test]
fn docs_metrics_md_matches_the_catalog() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/metrics.md");
    let want = tokenmeter_core::catalog::render_markdown();
    if std::env::var_os("TOKENMETER_BLESS").is_some() {
        std::fs::write(path, &want).expect("write docs/metrics.md");
        return;
    }
    let got = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        got == want,
        "docs/metrics.md is out of date with the catalog: run `TOKENMETER_BLESS=1 cargo test -p tokenmeter-core --test docs`"
    );
}

#[test]
fn every_metric_is_documented_with_its_name_type_and_unit() {
    let md = tokenmeter_core::catalog::render_markdown();
    for d in tokenmeter_core::catalog::all() {
        assert!(md.contains(d.otel_name), "{} missing", d.id);
        assert!(md.contains(d.recorded), "{} has no 'recorded'", d.id);
    }
}
