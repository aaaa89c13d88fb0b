//! The text expositions: Prometheus's text format (version 0.0.4) and OpenMetrics 1.0 text
//! (the same samples, plus `# UNIT` metadata, exemplars on histogram buckets and `# EOF`);
//! name and label sanitizing, escaping, and rendering the registry.
//!
//! Label sets are escaped once, when a series is registered; a render only formats numbers.

use std::borrow::Cow;

use super::exemplar::ExemplarValue;
use super::registry::{CellsView, FamilyView};

/// Which text format to render.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// Prometheus text format 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

/// A metric name made valid (`[a-zA-Z_:][a-zA-Z0-9_:]*`): other characters become `_`.
pub(crate) fn metric_name(name: &str) -> Cow<'_, str> {
    sanitize(name, |i, c| {
        c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
    })
}

/// A label name made valid (`[a-zA-Z_][a-zA-Z0-9_]*`): other characters become `_`.
pub(crate) fn label_key(key: &str) -> Cow<'_, str> {
    sanitize(key, |i, c| {
        c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit())
    })
}

/// Label names no series of ours may carry: `le` and `quantile` belong to histogram buckets and
/// summary quantiles, `__`-prefixed names to Prometheus itself.
pub(crate) fn is_reserved_label(key: &str) -> bool {
    key == "le" || key == "quantile" || key.starts_with("__")
}

fn sanitize(s: &str, valid: impl Fn(usize, char) -> bool) -> Cow<'_, str> {
    if !s.is_empty() && s.chars().enumerate().all(|(i, c)| valid(i, c)) {
        return Cow::Borrowed(s);
    }
    if s.is_empty() {
        return Cow::Borrowed("_");
    }
    Cow::Owned(
        s.chars()
            .enumerate()
            .map(|(i, c)| if valid(i, c) { c } else { '_' })
            .collect(),
    )
}

/// Appends a label value escaped per the format: `\` → `\\`, `"` → `\"`, newline → `\n`.
/// Everything else, any Unicode included, is kept as it is.
pub(crate) fn escape_label_value(out: &mut String, value: &str) {
    escape(out, value, true);
}

fn escape(out: &mut String, s: &str, quotes: bool) {
    let mut rest = s;
    while let Some(i) = rest.find(|c| c == '\\' || c == '\n' || (quotes && c == '"')) {
        out.push_str(&rest[..i]);
        out.push_str(match rest.as_bytes()[i] {
            b'\\' => "\\\\",
            b'\n' => "\\n",
            _ => "\\\"",
        });
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

/// Appends a sample value: integers without a fraction, `+Inf`, `-Inf` and `NaN` spelled as
/// Prometheus spells them.
fn push_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 9.007_199_254_740_992e15 {
        // Exactly representable integer: print it as one (`3`, not `3.0`).
        out.push_str(itoa::Buffer::new().format(v as i64));
    } else {
        out.push_str(ryu::Buffer::new().format_finite(v));
    }
}

fn push_u64(out: &mut String, v: u64) {
    out.push_str(itoa::Buffer::new().format(v));
}

/// One sample line: `name{labels,extra} value`.
fn sample(out: &mut String, name: &str, suffix: &str, labels: &str, extra: &str) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || !extra.is_empty() {
        out.push('{');
        out.push_str(labels);
        if !labels.is_empty() && !extra.is_empty() {
            out.push(',');
        }
        out.push_str(extra);
        out.push('}');
    }
    out.push(' ');
}

/// Appends an OpenMetrics exemplar: ` # {trace_id="…",span_id="…"} value timestamp`.
fn push_exemplar(out: &mut String, ex: &ExemplarValue) {
    let (trace, span) = ex.ids.hex();
    out.push_str(" # {trace_id=\"");
    out.push_str(&trace);
    out.push_str("\",span_id=\"");
    out.push_str(&span);
    out.push_str("\"} ");
    push_f64(out, ex.value);
    out.push(' ');
    out.push_str(itoa::Buffer::new().format(ex.timestamp_ms.div_euclid(1000)));
    out.push('.');
    let ms = ex.timestamp_ms.rem_euclid(1000);
    out.push_str(&format!("{ms:03}"));
}

/// Renders the families in `flavor`, appending to `out`.
pub(crate) fn render(families: &[FamilyView], out: &mut String, flavor: Flavor) {
    let om = flavor == Flavor::OpenMetrics;
    let mut counts = Vec::new();
    for f in families {
        let name = f.name.as_str();
        // OpenMetrics names a counter family without its samples' `_total`; a counter whose
        // name lacks the suffix keeps its name as an `unknown` family.
        let (family, kind) = match (&f.cells, om) {
            (CellsView::Counter(_), true) => match name.strip_suffix("_total") {
                Some(base) => (base, "counter"),
                None => (name, "unknown"),
            },
            (CellsView::Counter(_), false) => (name, "counter"),
            (CellsView::Gauge(_), _) => (name, "gauge"),
            (CellsView::Histogram(_), _) => (name, "histogram"),
        };
        if let Some(help) = &f.help {
            out.push_str("# HELP ");
            out.push_str(family);
            out.push(' ');
            // OpenMetrics escapes quotes in HELP too.
            escape(out, help, om);
            out.push('\n');
        }
        out.push_str("# TYPE ");
        out.push_str(family);
        out.push(' ');
        out.push_str(kind);
        out.push('\n');
        if let Some(unit) = f.unit.filter(|u| om && family.ends_with(&format!("_{u}"))) {
            out.push_str("# UNIT ");
            out.push_str(family);
            out.push(' ');
            out.push_str(unit);
            out.push('\n');
        }
        match &f.cells {
            CellsView::Counter(series) => {
                for (labels, c) in series {
                    sample(out, name, "", &labels.text, "");
                    push_u64(out, c.get());
                    out.push('\n');
                }
            }
            CellsView::Gauge(series) => {
                for (labels, g) in series {
                    sample(out, name, "", &labels.text, "");
                    push_f64(out, g.get());
                    out.push('\n');
                }
            }
            CellsView::Histogram(series) => {
                for (labels, h) in series {
                    let labels = &labels.text;
                    let sum = h.read(&mut counts);
                    let mut cumulative = 0u64;
                    for (i, (count, le)) in counts.iter().zip(&h.bounds.le).enumerate() {
                        cumulative += count;
                        sample(out, name, "_bucket", labels, le);
                        push_u64(out, cumulative);
                        if let Some(ex) = h.exemplar(i).filter(|_| om) {
                            push_exemplar(out, &ex);
                        }
                        out.push('\n');
                    }
                    sample(out, name, "_sum", labels, "");
                    push_f64(out, sum);
                    out.push('\n');
                    sample(out, name, "_count", labels, "");
                    push_u64(out, cumulative);
                    out.push('\n');
                }
            }
        }
    }
    if om {
        out.push_str("# EOF\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_keys_are_sanitized() {
        assert_eq!(
            metric_name("vllm:time_to_first_token_seconds"),
            "vllm:time_to_first_token_seconds"
        );
        assert_eq!(metric_name("gen_ai.server.ttft"), "gen_ai_server_ttft");
        assert_eq!(metric_name("9lives"), "_lives");
        assert_eq!(metric_name(""), "_");
        assert_eq!(label_key("gen_ai.request.model"), "gen_ai_request_model");
        assert_eq!(label_key("a:b"), "a_b");
        assert!(matches!(label_key("model"), Cow::Borrowed(_)));
    }

    #[test]
    fn label_values_escape_backslash_quote_and_newline_only() {
        let mut out = String::new();
        escape_label_value(&mut out, "a\\\"b\nc\\d é\t");
        assert_eq!(out, "a\\\\\\\"b\\nc\\\\d é\t");
        let mut help = String::new();
        escape(&mut help, "say \"hi\"\\\n", false);
        assert_eq!(help, "say \"hi\"\\\\\\n");
    }

    #[test]
    fn values_are_spelled_as_prometheus_parses_them() {
        let f = |v: f64| {
            let mut s = String::new();
            push_f64(&mut s, v);
            s
        };
        assert_eq!(f(3.0), "3");
        assert_eq!(f(-2.0), "-2");
        assert_eq!(f(0.005), "0.005");
        assert_eq!(f(f64::INFINITY), "+Inf");
        assert_eq!(f(f64::NEG_INFINITY), "-Inf");
        assert_eq!(f(f64::NAN), "NaN");
        assert_eq!(f(1e300).parse::<f64>().ok(), Some(1e300));
        assert_eq!(f(1.5e-300).parse::<f64>().ok(), Some(1.5e-300));
    }
}
