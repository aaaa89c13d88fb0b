//! The Prometheus protobuf exposition: length-delimited `io.prometheus.client.MetricFamily`
//! messages, the format that carries native histograms.
//!
//! The messages are the few of Prometheus's `metrics.proto` that we send, declared with
//! `prost`'s derive under their official field numbers (proto2, package
//! `io.prometheus.client`); `prost` does all of the wire encoding. No maintained crate ships
//! these types with the native-histogram fields (`prometheus` predates them and brings the
//! `protobuf` runtime; `prometheus-client` encodes the OpenMetrics data model instead).

use prost::Message;

use super::exemplar::ExemplarValue;
use super::native::ZERO_THRESHOLD;
use super::registry::{CellsView, FamilyView, HistogramCell, SeriesLabels};

/// `io.prometheus.client.LabelPair`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct LabelPair {
    #[prost(string, optional, tag = "1")]
    pub(crate) name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub(crate) value: Option<String>,
}

/// `io.prometheus.client.MetricType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub(crate) enum MetricType {
    Counter = 0,
    Gauge = 1,
    Histogram = 4,
}

/// `io.prometheus.client.Gauge`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Gauge {
    #[prost(double, optional, tag = "1")]
    pub(crate) value: Option<f64>,
}

/// `io.prometheus.client.Counter`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Counter {
    #[prost(double, optional, tag = "1")]
    pub(crate) value: Option<f64>,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Timestamp {
    #[prost(int64, tag = "1")]
    pub(crate) seconds: i64,
    #[prost(int32, tag = "2")]
    pub(crate) nanos: i32,
}

/// `io.prometheus.client.Exemplar`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Exemplar {
    #[prost(message, repeated, tag = "1")]
    pub(crate) label: Vec<LabelPair>,
    #[prost(double, optional, tag = "2")]
    pub(crate) value: Option<f64>,
    #[prost(message, optional, tag = "3")]
    pub(crate) timestamp: Option<Timestamp>,
}

/// `io.prometheus.client.Bucket` (a classic bucket).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Bucket {
    #[prost(uint64, optional, tag = "1")]
    pub(crate) cumulative_count: Option<u64>,
    #[prost(double, optional, tag = "2")]
    pub(crate) upper_bound: Option<f64>,
    #[prost(message, optional, tag = "3")]
    pub(crate) exemplar: Option<Exemplar>,
}

/// `io.prometheus.client.BucketSpan`: `length` consecutive native buckets, `offset` buckets
/// after the previous span (the first span's offset is its first bucket's index).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct BucketSpan {
    #[prost(sint32, optional, tag = "1")]
    pub(crate) offset: Option<i32>,
    #[prost(uint32, optional, tag = "2")]
    pub(crate) length: Option<u32>,
}

/// `io.prometheus.client.Histogram`: classic buckets and, when native histograms are on,
/// the sparse exponential buckets beside them.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Histogram {
    #[prost(uint64, optional, tag = "1")]
    pub(crate) sample_count: Option<u64>,
    #[prost(double, optional, tag = "2")]
    pub(crate) sample_sum: Option<f64>,
    #[prost(message, repeated, tag = "3")]
    pub(crate) bucket: Vec<Bucket>,
    #[prost(sint32, optional, tag = "5")]
    pub(crate) schema: Option<i32>,
    #[prost(double, optional, tag = "6")]
    pub(crate) zero_threshold: Option<f64>,
    #[prost(uint64, optional, tag = "7")]
    pub(crate) zero_count: Option<u64>,
    #[prost(message, repeated, tag = "12")]
    pub(crate) positive_span: Vec<BucketSpan>,
    /// Each bucket's count as a delta to the previous bucket's (the first to zero).
    #[prost(sint64, repeated, tag = "13")]
    pub(crate) positive_delta: Vec<i64>,
}

/// `io.prometheus.client.Metric`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Metric {
    #[prost(message, repeated, tag = "1")]
    pub(crate) label: Vec<LabelPair>,
    #[prost(message, optional, tag = "2")]
    pub(crate) gauge: Option<Gauge>,
    #[prost(message, optional, tag = "3")]
    pub(crate) counter: Option<Counter>,
    #[prost(message, optional, tag = "7")]
    pub(crate) histogram: Option<Histogram>,
}

/// `io.prometheus.client.MetricFamily`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MetricFamily {
    #[prost(string, optional, tag = "1")]
    pub(crate) name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub(crate) help: Option<String>,
    #[prost(enumeration = "MetricType", optional, tag = "3")]
    pub(crate) r#type: Option<i32>,
    #[prost(message, repeated, tag = "4")]
    pub(crate) metric: Vec<Metric>,
    #[prost(string, optional, tag = "5")]
    pub(crate) unit: Option<String>,
}

/// An exemplar as the protobuf carries it.
pub(crate) fn exemplar(ex: &ExemplarValue) -> Exemplar {
    let (trace, span) = ex.ids.hex();
    let ms = ex.timestamp_ms;
    Exemplar {
        label: vec![
            LabelPair {
                name: Some("trace_id".into()),
                value: Some(trace),
            },
            LabelPair {
                name: Some("span_id".into()),
                value: Some(span),
            },
        ],
        value: Some(ex.value),
        timestamp: Some(Timestamp {
            seconds: ms.div_euclid(1000),
            nanos: (ms.rem_euclid(1000) * 1_000_000) as i32, // < 1e9: fits
        }),
    }
}

/// Appends one label pair to a series' pre-encoded labels: a `Metric` holding only that
/// label, so that a render can merge the series' labels and its value by concatenation (two
/// encodings of one message type concatenated decode as their merge, which protobuf
/// guarantees).
pub(crate) fn encode_label(out: &mut Vec<u8>, name: &str, value: &str) {
    let labels = Metric {
        label: vec![LabelPair {
            name: Some(name.to_owned()),
            value: Some(value.to_owned()),
        }],
        ..Metric::default()
    };
    // Encoding into a Vec cannot run out of room.
    let _ = labels.encode(out);
}

/// The key of `MetricFamily.metric` (field 4, length-delimited).
const METRIC_FIELD_KEY: u8 = (4 << 3) | 2;

/// Encodes the families as length-delimited `MetricFamily` messages, appending to `out`.
pub(crate) fn render(families: &[FamilyView], out: &mut Vec<u8>) {
    let mut counts = Vec::new();
    let mut native = Vec::new();
    let mut family = Vec::new();
    let mut value = Vec::new();
    for f in families {
        family.clear();
        let kind = match f.cells {
            CellsView::Counter(_) => MetricType::Counter,
            CellsView::Gauge(_) => MetricType::Gauge,
            CellsView::Histogram(_) => MetricType::Histogram,
        };
        let head = MetricFamily {
            name: Some(f.name.clone()),
            help: f.help.clone(),
            r#type: Some(kind as i32),
            metric: Vec::new(),
            unit: f.unit.map(str::to_owned),
        };
        // Encoding into a Vec cannot run out of room (here and below).
        let _ = head.encode(&mut family);
        let mut metric = |labels: &SeriesLabels, m: &Metric| {
            value.clear();
            let _ = m.encode(&mut value);
            family.push(METRIC_FIELD_KEY);
            let _ = prost::encode_length_delimiter(labels.proto.len() + value.len(), &mut family);
            family.extend_from_slice(&labels.proto);
            family.extend_from_slice(&value);
        };
        match &f.cells {
            CellsView::Counter(series) => {
                for (labels, c) in series {
                    let counter = Some(Counter {
                        value: Some(c.get() as f64),
                    });
                    metric(
                        labels,
                        &Metric {
                            counter,
                            ..Metric::default()
                        },
                    );
                }
            }
            CellsView::Gauge(series) => {
                for (labels, g) in series {
                    let gauge = Some(Gauge {
                        value: Some(g.get()),
                    });
                    metric(
                        labels,
                        &Metric {
                            gauge,
                            ..Metric::default()
                        },
                    );
                }
            }
            CellsView::Histogram(series) => {
                let mut m = Metric {
                    histogram: Some(Histogram::default()),
                    ..Metric::default()
                };
                for (labels, h) in series {
                    if let Some(out) = m.histogram.as_mut() {
                        fill_histogram(h, out, &mut counts, &mut native);
                    }
                    metric(labels, &m);
                }
            }
        }
        let _ = prost::encode_length_delimiter(family.len(), out);
        out.extend_from_slice(&family);
    }
}

/// Fills `out` with `h` now, reusing its vectors (and `counts` and `native`) from series to
/// series, so a render allocates only while they grow.
fn fill_histogram(
    h: &HistogramCell,
    out: &mut Histogram,
    counts: &mut Vec<u64>,
    native: &mut Vec<(i32, u64)>,
) {
    let sum = h.read(counts);
    let mut cumulative = 0u64;
    out.bucket.clear();
    // The +Inf bucket is implied by the sample count.
    for (i, (count, upper)) in counts.iter().zip(&h.bounds.upper).enumerate() {
        cumulative += count;
        out.bucket.push(Bucket {
            cumulative_count: Some(cumulative),
            upper_bound: Some(*upper),
            exemplar: h.exemplar(i).as_ref().map(exemplar),
        });
    }
    out.sample_count = Some(counts.iter().sum());
    out.sample_sum = Some(sum);
    out.positive_span.clear();
    out.positive_delta.clear();
    let Some((schema, zero_count)) = h.native_into(native) else {
        out.schema = None;
        out.zero_threshold = None;
        out.zero_count = None;
        return;
    };
    out.schema = Some(i32::from(schema));
    out.zero_threshold = Some(ZERO_THRESHOLD);
    out.zero_count = Some(zero_count);
    let mut prev_index = None;
    let mut prev_count = 0u64;
    for &(index, count) in native.iter() {
        match (prev_index, out.positive_span.last_mut()) {
            (Some(p), Some(span)) if index == p + 1 => {
                span.length = Some(span.length.unwrap_or(0) + 1);
            }
            _ => out.positive_span.push(BucketSpan {
                offset: Some(prev_index.map_or(index, |p| index - p - 1)),
                length: Some(1),
            }),
        }
        // Counts are far below 2^63: the difference fits.
        out.positive_delta.push(count as i64 - prev_count as i64);
        prev_index = Some(index);
        prev_count = count;
    }
    if out.positive_span.is_empty() {
        // No bucket yet: an empty span still marks the histogram native (what the official
        // client libraries send).
        out.positive_span.push(BucketSpan {
            offset: Some(0),
            length: Some(0),
        });
    }
}
