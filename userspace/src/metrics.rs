//! Prometheus metrics of the edge and of every node, on an HTTP listener
//! (`[metrics] listen = "127.0.0.1:9464"` in `edge.toml` and `node.toml`).
//!
//! Nothing here runs on the packet path. A scrape asks the daemon's own
//! loop for an [`Exposition`] (the loop builds it from the sources
//! `handoff stats` reads: the workers' reports, the XDP counter maps, the
//! control counters) and encodes it with `prometheus-client` on the
//! listener's thread. Histograms of events (migration phases, handover
//! bytes) are kept between scrapes in [`MigrationMetrics`] and
//! [`HandoverMetrics`] and observed when the event ends, on the control
//! path.
//!
//! Formats: `prometheus-client` writes OpenMetrics 1.0 text, which is what
//! a Prometheus server asks for first (`Accept:
//! application/openmetrics-text`). Other clients (`curl`, `promtool check
//! metrics`) get the Prometheus text format 0.0.4 (`text/plain;
//! version=0.0.4`), derived from the same encoding by [`to_prometheus_text`]:
//! counter families are named with their `_total` suffix there, and the
//! `# EOF` marker is left out.
//!
//! The listener is [`crate::http`]'s (why not hyper or axum: see there)
//! with [`HTTP_THREADS`] threads: a request head is at most
//! [`MAX_REQUEST`] bytes and must arrive within [`REQUEST_TIMEOUT`], and
//! only `GET /metrics` is served (404 for another path, 405 for another
//! method).

use crate::http;
use anyhow::Result;
use crossbeam::channel::{bounded, Sender};
use prometheus_client::{
    encoding::text,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{atomic::AtomicBool, Arc},
    time::Duration,
};

/// Threads serving scrapes: connections served at once.
pub const HTTP_THREADS: usize = 2;
/// Longest request head (request line and headers) accepted, in bytes.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its whole request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Time the daemon has to build an exposition (a worker answers a report
/// within 500 ms).
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a response may take to write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The only path served.
pub const METRICS_PATH: &str = "/metrics";
/// Content type of the OpenMetrics text format 1.0.0.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Labels of one series: `(name, value)` pairs.
pub type Labels = Vec<(String, String)>;

/// A histogram family whose buckets a plain function makes.
pub type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Makes a label set from borrowed pairs.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Checks a `listen` value of a `[metrics]` section: an `address:port`
/// with a port other than 0. The error says what is wrong, for the
/// configuration's error message.
pub fn parse_listen(listen: &str) -> Result<SocketAddr, String> {
    let address: SocketAddr = listen
        .parse()
        .map_err(|_| format!("{listen:?} is not an address:port"))?;
    if address.port() == 0 {
        return Err(format!("{listen:?}: give a port other than 0"));
    }
    Ok(address)
}

/// The `[metrics]` section: where the HTTP listener binds.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    pub(crate) listen: String,
}

/// One scrape's metrics, built by a daemon from its counters at scrape
/// time. Counters are registered with their full Prometheus name (ending
/// in `_total`); gauges and histograms with theirs.
#[derive(Debug, Default)]
pub struct Exposition {
    registry: Registry,
    counters: BTreeMap<&'static str, Family<Labels, Counter>>,
    gauges: BTreeMap<&'static str, Family<Labels, Gauge>>,
    histograms: Vec<&'static str>,
}

impl Exposition {
    /// Sets the counter `name` (ending in `_total`) of the series `labels`
    /// to `value` (added to what the series has in this exposition).
    pub fn counter(&mut self, name: &'static str, help: &'static str, labels: &[(&str, &str)], value: u64) {
        debug_assert!(name.ends_with("_total"), "counter {name} without _total");
        let registry = &mut self.registry;
        let family = self.counters.entry(name).or_insert_with(|| {
            let family = Family::<Labels, Counter>::default();
            // prometheus-client appends the `_total` itself.
            registry.register(name.trim_end_matches("_total"), help, family.clone());
            family
        });
        family.get_or_create(&self::labels(labels)).inc_by(value);
    }

    /// Sets the gauge `name` of the series `labels` to `value` (saturating
    /// at `i64::MAX`).
    pub fn gauge(&mut self, name: &'static str, help: &'static str, labels: &[(&str, &str)], value: u64) {
        let registry = &mut self.registry;
        let family = self.gauges.entry(name).or_insert_with(|| {
            let family = Family::<Labels, Gauge>::default();
            registry.register(name, help, family.clone());
            family
        });
        family
            .get_or_create(&self::labels(labels))
            .set(i64::try_from(value).unwrap_or(i64::MAX));
    }

    /// Adds a histogram family kept between scrapes (the family is shared:
    /// it goes on being observed).
    pub fn histograms(&mut self, name: &'static str, help: &'static str, family: &HistogramFamily) {
        self.histograms.push(name);
        self.registry.register(name, help, family.clone());
    }

    /// Every family's name as Prometheus stores its samples: counters with
    /// `_total`, histograms without their `_bucket`/`_sum`/`_count`.
    pub fn family_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self
            .counters
            .keys()
            .chain(self.gauges.keys())
            .chain(&self.histograms)
            .copied()
            .collect();
        names.sort_unstable();
        names
    }

    /// The exposition in `format`.
    pub fn encode(&self, format: Format) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        text::encode(&mut out, &self.registry)?;
        Ok(match format {
            Format::OpenMetrics => out,
            Format::Prometheus => to_prometheus_text(&out),
        })
    }
}

/// A text format a scrape can get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0 text ([`OPENMETRICS_CONTENT_TYPE`]).
    OpenMetrics,
    /// Prometheus text 0.0.4 ([`PROMETHEUS_CONTENT_TYPE`]).
    Prometheus,
}

impl Format {
    /// The format for a request's `Accept` header: OpenMetrics when it is
    /// named, else the Prometheus text format.
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::Prometheus,
        }
    }

    /// Its `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Self::Prometheus => PROMETHEUS_CONTENT_TYPE,
        }
    }
}

/// Rewrites `prometheus-client`'s OpenMetrics text as the Prometheus text
/// format 0.0.4: a counter family `x` (samples `x_total`) gets its `# HELP`
/// and `# TYPE` lines under `x_total`, which is where that format looks for
/// them; `# UNIT` and `# EOF` lines (OpenMetrics only) are dropped. Sample
/// lines are the same in both formats.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let comment = ["# HELP ", "# TYPE "].into_iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        match comment {
            Some(renamed) => out.push_str(&renamed),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn phase_buckets() -> Histogram {
    // 1 ms .. about 65 s: a phase of a migration on the test bed takes
    // milliseconds (select) to seconds (a copy of a million connections).
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn handover_byte_buckets() -> Histogram {
    // 1 KiB .. 1 GiB in powers of 4: about 48 bytes a connection, so from
    // a few connections to twenty million.
    Histogram::new(exponential_buckets(1024.0, 4.0, 11))
}

/// The edge's migration metrics, kept between scrapes; the migration
/// driver observes them when a phase or a migration ends.
#[derive(Clone, Debug)]
pub struct MigrationMetrics {
    /// `handoff_migrations_total{mode, outcome}`.
    pub outcomes: Family<Labels, Counter>,
    /// `handoff_migration_phase_duration_seconds{mode, phase}`.
    pub phase_seconds: HistogramFamily,
    /// `handoff_migration_duration_seconds{mode, outcome}`.
    pub total_seconds: HistogramFamily,
}

impl Default for MigrationMetrics {
    fn default() -> Self {
        Self {
            outcomes: Family::default(),
            phase_seconds: Family::new_with_constructor(phase_buckets),
            total_seconds: Family::new_with_constructor(phase_buckets),
        }
    }
}

impl MigrationMetrics {
    /// Adds these families to `exposition`.
    pub fn expose(&self, exposition: &mut Exposition) {
        // Counted into the exposition's own family, so it appears with the
        // scrape's other counters under one name.
        for (labels, counter) in self.outcomes_snapshot() {
            let pairs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            exposition.counter(
                "handoff_migrations_total",
                "Migrations the manager ran to their end, by mode (disengage, engage) and outcome (completed, aborted, node_lost, failed_after_flip)",
                &pairs,
                counter,
            );
        }
        exposition.histograms(
            "handoff_migration_phase_duration_seconds",
            "Duration of each migration phase (select, copy, broadcast, flip, drain, purge) as the manager saw it",
            &self.phase_seconds,
        );
        exposition.histograms(
            "handoff_migration_duration_seconds",
            "Duration of whole migrations, by mode and outcome",
            &self.total_seconds,
        );
    }

    fn outcomes_snapshot(&self) -> Vec<(Labels, u64)> {
        let mut seen = Vec::new();
        for mode in ["disengage", "engage"] {
            for outcome in MIGRATION_OUTCOMES {
                let key = labels(&[("mode", mode), ("outcome", outcome)]);
                // get_or_create makes every (mode, outcome) series exist at
                // 0, so a rate over it starts at the first scrape.
                let value = self.outcomes.get_or_create(&key).get();
                seen.push((key, value));
            }
        }
        seen
    }
}

/// The outcomes of `handoff_migrations_total`.
pub const MIGRATION_OUTCOMES: [&str; 4] = ["completed", "aborted", "node_lost", "failed_after_flip"];

/// A node's handover metrics, kept between scrapes.
#[derive(Clone, Debug)]
pub struct HandoverMetrics {
    /// `handoff_handover_bytes`: bytes each handover round's streams sent.
    pub bytes: HistogramFamily,
}

impl Default for HandoverMetrics {
    fn default() -> Self {
        Self {
            bytes: Family::new_with_constructor(handover_byte_buckets),
        }
    }
}

impl HandoverMetrics {
    /// Adds these families to `exposition`.
    pub fn expose(&self, exposition: &mut Exposition) {
        exposition.histograms(
            "handoff_handover_bytes",
            "Bytes a node's handover round streamed to its inheritors (snapshot, deltas and cut, TLS records excluded)",
            &self.bytes,
        );
    }
}

/// A scrape's request to the daemon loop: where to send its exposition.
pub type ScrapeCall = Sender<Result<Exposition>>;

/// The running listener.
pub type MetricsServer = http::Server;

/// The listener's bounds: no request body.
const LIMITS: http::Limits = http::Limits {
    threads: HTTP_THREADS,
    max_head: MAX_REQUEST,
    max_body: 0,
    request_timeout: REQUEST_TIMEOUT,
    write_timeout: WRITE_TIMEOUT,
};

/// Serves `GET /metrics` on `listen` until `stop` is set: each scrape sends
/// a [`ScrapeCall`] on `scrapes` and encodes the answer.
///
/// Errors: binding `listen` failed (in use, an address the host lacks).
pub fn serve(listen: SocketAddr, scrapes: Sender<ScrapeCall>, stop: Arc<AtomicBool>) -> Result<MetricsServer> {
    let handler: http::Handler = Arc::new(move |request: &http::Request, responder: http::Responder<'_>| {
        let (status, content_type, body) = match route(request) {
            Err(status) => (status, PROMETHEUS_CONTENT_TYPE, format!("{}\n", http::reason(status))),
            Ok(format) => match scrape(&scrapes).and_then(|e| Ok(e.encode(format)?)) {
                Ok(body) => (200, format.content_type(), body),
                Err(e) => (503, PROMETHEUS_CONTENT_TYPE, format!("no metrics: {e:#}\n")),
            },
        };
        responder.send(status, content_type, &[], body.as_bytes())
    });
    http::serve("metrics", listen, None, LIMITS, handler, stop)
}

/// The format a request asks for, or the status that refuses it: only
/// `GET /metrics` is served (404 for another path, 405 for another method).
fn route(request: &http::Request) -> Result<Format, u16> {
    if request.path != METRICS_PATH {
        return Err(404);
    }
    if request.method != "GET" {
        return Err(405);
    }
    Ok(Format::negotiate(request.header("accept")))
}

/// Asks the daemon loop for an exposition.
fn scrape(scrapes: &Sender<ScrapeCall>) -> Result<Exposition> {
    let (tx, rx) = bounded(1);
    scrapes
        .send_timeout(tx, SCRAPE_TIMEOUT)
        .map_err(|_| anyhow::anyhow!("the daemon is busy or stopping"))?;
    rx.recv_timeout(SCRAPE_TIMEOUT)
        .map_err(|_| anyhow::anyhow!("the daemon did not answer within {SCRAPE_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        io::{Read, Write},
        net::TcpStream,
        sync::atomic::Ordering,
    };

    fn sample() -> Exposition {
        let mut e = Exposition::default();
        e.counter(
            "handoff_rx_packets_total",
            "Frames handled",
            &[("node", "fd-a"), ("worker", "0")],
            5,
        );
        e.counter(
            "handoff_drops_total",
            "Drops",
            &[("node", "fd-a"), ("worker", "0"), ("reason", "no_flow")],
            2,
        );
        e.gauge("handoff_flows", "Connections", &[("node", "fd-a"), ("worker", "0")], 7);
        let handover = HandoverMetrics::default();
        handover
            .bytes
            .get_or_create(&labels(&[("node", "fd-a")]))
            .observe(5000.0);
        handover.expose(&mut e);
        e
    }

    #[test]
    fn the_encoding_names_families_and_labels_as_prometheus_does() {
        let e = sample();
        let open = e.encode(Format::OpenMetrics).unwrap();
        assert!(open.contains("# TYPE handoff_rx_packets counter\n"), "{open}");
        assert!(
            open.contains("handoff_rx_packets_total{node=\"fd-a\",worker=\"0\"} 5\n"),
            "{open}"
        );
        assert!(
            open.contains("handoff_drops_total{node=\"fd-a\",worker=\"0\",reason=\"no_flow\"} 2\n"),
            "{open}"
        );
        assert!(open.contains("handoff_flows{node=\"fd-a\",worker=\"0\"} 7\n"), "{open}");
        assert!(
            open.contains("handoff_handover_bytes_bucket{le=\"4096.0\",node=\"fd-a\"} 0\n"),
            "{open}"
        );
        assert!(
            open.contains("handoff_handover_bytes_bucket{le=\"16384.0\",node=\"fd-a\"} 1\n"),
            "{open}"
        );
        assert!(open.ends_with("# EOF\n"), "{open}");
        let prom = e.encode(Format::Prometheus).unwrap();
        assert!(
            prom.contains("# HELP handoff_rx_packets_total Frames handled.\n"),
            "{prom}"
        );
        assert!(prom.contains("# TYPE handoff_rx_packets_total counter\n"), "{prom}");
        assert!(prom.contains("# TYPE handoff_flows gauge\n"), "{prom}");
        assert!(prom.contains("# TYPE handoff_handover_bytes histogram\n"), "{prom}");
        assert!(!prom.contains("# EOF"), "{prom}");
        assert_eq!(
            e.family_names(),
            [
                "handoff_drops_total",
                "handoff_flows",
                "handoff_handover_bytes",
                "handoff_rx_packets_total"
            ]
        );
    }

    #[test]
    fn counters_of_one_series_add_up_within_an_exposition() {
        let mut e = Exposition::default();
        e.counter("handoff_x_total", "X", &[("reason", "a")], 2);
        e.counter("handoff_x_total", "X", &[("reason", "a")], 3);
        let text = e.encode(Format::Prometheus).unwrap();
        assert!(text.contains("handoff_x_total{reason=\"a\"} 5\n"), "{text}");
    }

    #[test]
    fn every_migration_outcome_is_exposed_from_zero() {
        let m = MigrationMetrics::default();
        m.outcomes
            .get_or_create(&labels(&[("mode", "disengage"), ("outcome", "completed")]))
            .inc();
        let mut e = Exposition::default();
        m.expose(&mut e);
        let text = e.encode(Format::Prometheus).unwrap();
        assert!(
            text.contains("handoff_migrations_total{mode=\"disengage\",outcome=\"completed\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("handoff_migrations_total{mode=\"engage\",outcome=\"node_lost\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn only_get_metrics_is_served() {
        let get = |method: &str, path: &str, accept: Option<&str>| {
            route(&http::Request {
                method: method.into(),
                path: path.into(),
                query: None,
                headers: accept
                    .map(|a| ("Accept".to_string(), a.to_string()))
                    .into_iter()
                    .collect(),
                body: Vec::new(),
            })
        };
        assert_eq!(get("GET", "/metrics", None), Ok(Format::Prometheus));
        assert_eq!(
            get(
                "GET",
                "/metrics",
                Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
            ),
            Ok(Format::OpenMetrics)
        );
        assert_eq!(get("GET", "/", None), Err(404));
        assert_eq!(get("POST", "/metrics", None), Err(405));
    }

    #[test]
    fn the_listener_answers_scrapes_refuses_other_paths_and_bounds_requests() {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = crossbeam::channel::bounded::<ScrapeCall>(4);
        let server = serve("127.0.0.1:0".parse().unwrap(), tx, Arc::clone(&stop)).unwrap();
        let daemon = std::thread::spawn(move || {
            while let Ok(reply) = rx.recv_timeout(Duration::from_secs(10)) {
                let _ = reply.send(Ok(sample()));
            }
        });
        let ask = |request: &[u8]| {
            let mut s = TcpStream::connect(server.local_addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(request).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let ok = ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(PROMETHEUS_CONTENT_TYPE), "{ok}");
        assert!(
            ok.contains("handoff_rx_packets_total{node=\"fd-a\",worker=\"0\"} 5"),
            "{ok}"
        );
        let open = ask(b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text\r\n\r\n");
        assert!(
            open.contains(OPENMETRICS_CONTENT_TYPE) && open.ends_with("# EOF\n"),
            "{open}"
        );
        assert!(ask(b"GET /other HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_REQUEST));
        assert!(ask(huge.as_bytes()).starts_with("HTTP/1.1 431 "));
        stop.store(true, Ordering::Relaxed);
        server.join();
        daemon.join().unwrap();
    }

    #[test]
    fn listen_addresses_are_checked() {
        assert_eq!(parse_listen("127.0.0.1:9464"), Ok("127.0.0.1:9464".parse().unwrap()));
        assert!(parse_listen("127.0.0.1").unwrap_err().contains("address:port"));
        assert!(parse_listen("localhost:9464").is_err());
        assert!(parse_listen("127.0.0.1:0").unwrap_err().contains("other than 0"));
    }
}
