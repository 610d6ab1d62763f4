//! `--metrics ADDR` on `cairn worker`, `cairn validate` and `cairn dashboard`: a Prometheus text
//! endpoint at `/metrics` (text exposition format 0.0.4). The values are this process's own:
//! what it did (rounds, tokens, times, bytes), the store requests it made by operation and
//! outcome (`storage::stats`), and how long ago it last read the ledger. The names are listed in
//! docs/DASHBOARD.md; infra/grafana-cairn.json is a Grafana board over them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;

/// Counter or gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Type {
    Counter,
    Gauge,
}

#[derive(Debug)]
struct Family {
    help: &'static str,
    kind: Type,
    /// By the rendered label set (`{a="b"}` or empty).
    values: BTreeMap<String, f64>,
}

/// This process's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    families: Mutex<BTreeMap<&'static str, Family>>,
    /// When the ledger was last read to its head, if ever.
    last_read: Mutex<Option<Instant>>,
}

/// A label value in the exposition format: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn label_set(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    format!("{{{}}}", inner.join(","))
}

impl Metrics {
    /// An empty set, shared with the server.
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    fn update(
        &self,
        name: &'static str,
        help: &'static str,
        kind: Type,
        labels: &[(&str, &str)],
        f: impl FnOnce(&mut f64),
    ) {
        if let Ok(mut families) = self.families.lock() {
            let family = families.entry(name).or_insert_with(|| Family { help, kind, values: BTreeMap::new() });
            f(family.values.entry(label_set(labels)).or_insert(0.0));
        }
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)], value: f64) {
        self.update(name, help, Type::Gauge, labels, |v| *v = value);
    }

    /// Adds to a counter (created at 0).
    pub fn add(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)], by: f64) {
        self.update(name, help, Type::Counter, labels, |v| *v += by);
    }

    /// Notes that the ledger was just read to its head.
    pub fn ledger_read(&self) {
        if let Ok(mut last) = self.last_read.lock() {
            *last = Some(Instant::now());
        }
    }

    /// The exposition text: this set, the store requests, and the age of the last ledger read.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let families = self
            .families
            .lock()
            .map(|f| f.iter().map(|(k, v)| (*k, v.help, v.kind, v.values.clone())).collect::<Vec<_>>())
            .unwrap_or_default();
        for (name, help, kind, values) in families {
            let kind = if kind == Type::Counter { "counter" } else { "gauge" };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in values {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP cairn_store_requests_total Store requests made by this process, by operation and outcome (ok, retried, or the error's kind).\n# TYPE cairn_store_requests_total counter"
        );
        for ((operation, outcome), n) in storage::stats::requests() {
            let labels = label_set(&[("operation", operation), ("outcome", outcome)]);
            let _ = writeln!(out, "cairn_store_requests_total{labels} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP cairn_store_read_bytes_total Bytes of object bodies this process read from the store.\n# TYPE cairn_store_read_bytes_total counter\ncairn_store_read_bytes_total {}",
            storage::stats::bytes_read()
        );
        if let Some(at) = self.last_read.lock().ok().and_then(|l| *l) {
            let _ = writeln!(
                out,
                "# HELP cairn_ledger_read_age_seconds Seconds since this process last read the ledger to its head.\n# TYPE cairn_ledger_read_age_seconds gauge\ncairn_ledger_read_age_seconds {}",
                at.elapsed().as_secs_f64()
            );
        }
        out
    }
}

/// The `/metrics` route over `metrics`, for a router of its own or the dashboard's.
pub fn route(metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render()) }
        }),
    )
}

/// Serves `/metrics` on `addr` in the background and prints `metrics: http://ADDR/metrics`.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<SocketAddr> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr} for metrics"))?;
    let local = listener.local_addr().context("reading the metrics address")?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, route(metrics)).await {
            tracing::warn!(error = %e, "the metrics server stopped");
        }
    });
    println!("metrics: http://{local}/metrics");
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_as_the_format_says() {
        assert_eq!(label_set(&[("org", "a\"b\\c\nd")]), "{org=\"a\\\"b\\\\c\\nd\"}");
        assert_eq!(label_set(&[]), "");
    }

    /// Every metric the Grafana board in infra/ queries is one this binary serves.
    #[test]
    fn the_grafana_board_queries_only_metrics_cairn_serves() {
        let board: serde_json::Value = serde_json::from_str(include_str!("../infra/grafana-cairn.json")).unwrap();
        let sources =
            [include_str!("metrics.rs"), include_str!("run_cmd.rs"), include_str!("dashboard/mod.rs")].concat();
        let mut queried = 0;
        for panel in board["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for name in
                    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("cairn_"))
                {
                    let served =
                        sources.contains(&format!("\"{name}\"")) || sources.contains(&format!("# TYPE {name} "));
                    assert!(served, "{name} (panel {}) is not served", panel["title"]);
                    queried += 1;
                }
            }
        }
        assert!(queried >= 20, "{queried}");
    }

    #[test]
    fn counters_add_and_gauges_set() {
        let m = Metrics::new();
        m.add("cairn_x_total", "x", &[], 2.0);
        m.add("cairn_x_total", "x", &[], 3.0);
        m.set("cairn_y", "y", &[("k", "v")], 7.0);
        m.set("cairn_y", "y", &[("k", "v")], 4.5);
        let text = m.render();
        assert!(text.contains("# TYPE cairn_x_total counter\ncairn_x_total 5\n"), "{text}");
        assert!(text.contains("cairn_y{k=\"v\"} 4.5\n"), "{text}");
    }
}
