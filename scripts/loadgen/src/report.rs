//! The outcome of one run as a typed [`Report`]: serialised, it is the JSON
//! line on stdout that scripts/bench.sh and scripts/bench/report.js read;
//! [`Report::table`] renders the same values as the human table on stderr.
//! One struct for both, so that the two cannot disagree.

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};

use serde::Serialize;

use crate::hist::Histogram;
use crate::poster::PosterReport;
use crate::probe::ProbeReport;
use crate::slow::SlowReport;
use crate::worker::WorkerReport;
use crate::{Args, ServerSample, u2f};

/// Milliseconds, rounded to the µs.
fn ms(us: u64) -> f64 {
    round3(u2f(us) / 1000.0)
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// What the coordinator gathered during a run: the raw material of a
/// [`Report`].
#[derive(Debug)]
pub(crate) struct Summary<'a> {
    pub(crate) args: &'a Args,
    pub(crate) threads: usize,
    pub(crate) posters: usize,
    pub(crate) batch: usize,
    pub(crate) prefix: &'a str,
    pub(crate) total_clients: usize,
    pub(crate) subscribed: usize,
    pub(crate) all_subscribed: bool,
    pub(crate) storm_us: u64,
    pub(crate) listen_overflows: Option<u64>,
    pub(crate) before: ServerSample,
    pub(crate) connected: ServerSample,
    pub(crate) window_start: ServerSample,
    pub(crate) window_end: ServerSample,
    pub(crate) after: ServerSample,
    pub(crate) window_us: u64,
    pub(crate) self_cpu_window: f64,
    pub(crate) self_cpu_total: f64,
    pub(crate) poster: &'a PosterReport,
    pub(crate) workers: &'a WorkerReport,
    pub(crate) slow: &'a SlowReport,
    pub(crate) probes: Option<&'a ProbeReport>,
}

/// Count and quantiles of a latency histogram, in ms.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Quantiles {
    pub(crate) count: u64,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
}

impl From<&Histogram> for Quantiles {
    fn from(h: &Histogram) -> Quantiles {
        Quantiles {
            count: h.count(),
            p50: ms(h.quantile(0.50)),
            p99: ms(h.quantile(0.99)),
            p999: ms(h.quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// One run, as printed on stdout (one JSON line) and on stderr (a table).
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) scenario: String,
    pub(crate) server_name: String,
    /// `load`, or `idle` for `--idle` (nothing posted).
    pub(crate) mode: &'static str,
    /// Nothing lost, duplicated, reordered, foreign or closed, no failed
    /// connection or POST, p99 and the last POST's lag within the limit.
    pub(crate) clean: bool,
    pub(crate) params: Params,
    pub(crate) connect: Connect,
    pub(crate) window_s: f64,
    pub(crate) posts: Posts,
    pub(crate) deliveries: u64,
    /// Over the span from the first POST to the last delivery: what the
    /// server actually sustained.
    pub(crate) deliveries_per_s: f64,
    pub(crate) expected: u64,
    pub(crate) lost: u64,
    pub(crate) duplicates: u64,
    pub(crate) reordered: u64,
    pub(crate) foreign: u64,
    pub(crate) untimed: u64,
    pub(crate) unparsed: u64,
    pub(crate) server_errors: BTreeMap<String, u64>,
    pub(crate) latency_ms: Quantiles,
    pub(crate) server_closed: ServerClosed,
    pub(crate) open_at_end: usize,
    pub(crate) slow: Option<Slow>,
    pub(crate) probes: Option<Probes>,
    pub(crate) server: Server,
    pub(crate) loadgen: SelfUse,
}

/// The run's parameters as used (`batch`, `posts_per_s` as posted).
#[derive(Debug, Serialize)]
pub(crate) struct Params {
    pub(crate) clients: usize,
    pub(crate) events: usize,
    pub(crate) devices: usize,
    pub(crate) rate: f64,
    pub(crate) batch: usize,
    /// What was posted: `--batch` overrides `--posts-per-s`.
    pub(crate) posts_per_s: f64,
    pub(crate) posters: usize,
    pub(crate) duration_s: f64,
    pub(crate) slow_clients: usize,
    pub(crate) slow_ballast_bytes_per_s: u64,
    pub(crate) probes: usize,
    pub(crate) threads: usize,
    pub(crate) event_prefix: String,
    pub(crate) ws: String,
    pub(crate) http: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct Connect {
    pub(crate) clients: usize,
    pub(crate) subscribed: usize,
    pub(crate) all_subscribed: bool,
    /// Start of the connect storm to the last `subscribed`.
    pub(crate) storm_s: f64,
    /// Machine-wide: other processes' listen queues count too.
    pub(crate) listen_overflows: Option<u64>,
    pub(crate) failures: BTreeMap<String, u64>,
    pub(crate) subscribe_first_byte_ms: Quantiles,
    pub(crate) subscribe_complete_ms: Quantiles,
    pub(crate) ready_ms: Quantiles,
}

#[derive(Debug, Serialize)]
pub(crate) struct Posts {
    pub(crate) posts: u64,
    pub(crate) positions: u64,
    pub(crate) accepted: u64,
    pub(crate) rejected: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) post_latency_ms: Quantiles,
    pub(crate) max_lag_ms: f64,
    pub(crate) end_lag_ms: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct ServerClosed {
    pub(crate) total: u64,
    pub(crate) codes: BTreeMap<u16, u64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Slow {
    pub(crate) clients: usize,
    pub(crate) closed: usize,
    pub(crate) closed_after_start_s_max: Option<f64>,
    pub(crate) closed_after_stall_s_max: Option<f64>,
    pub(crate) close_codes: BTreeMap<String, u64>,
    pub(crate) max_server_queue_kib: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Probes {
    pub(crate) first_byte_ms: Quantiles,
    pub(crate) complete_ms: Quantiles,
    pub(crate) failures: u64,
}

/// The server's process, from /proc (all `None` without `--server-pid`).
#[derive(Debug, Serialize)]
pub(crate) struct Server {
    pub(crate) name: String,
    pub(crate) pid: Option<u32>,
    pub(crate) cpu_s: Option<f64>,
    pub(crate) cpu_pct: Option<f64>,
    pub(crate) cpu_us_per_delivery: Option<f64>,
    pub(crate) rss_before_kib: Option<u64>,
    pub(crate) rss_connected_kib: Option<u64>,
    pub(crate) rss_end_kib: Option<u64>,
    pub(crate) rss_after_kib: Option<u64>,
    pub(crate) hwm_kib: Option<u64>,
    pub(crate) rss_per_conn_kib: Option<f64>,
}

/// The load generator's own CPU: a run where it was saturated measured it,
/// not the server.
#[derive(Debug, Serialize)]
pub(crate) struct SelfUse {
    pub(crate) threads: usize,
    pub(crate) cpu_s_window: f64,
    pub(crate) cpu_s_total: f64,
    pub(crate) cpu_pct_per_thread: f64,
    pub(crate) saturated: bool,
}

impl Summary<'_> {
    pub(crate) fn report(&self) -> Report {
        let a = self.args;
        let w = self.workers;
        let p = self.poster;
        let window_s = u2f(self.window_us) / 1e6;
        let delivery_span_us = w.last_delivery_us.saturating_sub(p.started_us);
        let deliveries_per_s = if delivery_span_us > 0 {
            u2f(w.deliveries) / (u2f(delivery_span_us) / 1e6)
        } else {
            0.0
        };
        let server_cpu = match (self.window_start.cpu_s, self.window_end.cpu_s) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let cpu_us_per_delivery =
            server_cpu.filter(|_| w.deliveries > 0).map(|cpu| cpu * 1e6 / u2f(w.deliveries));
        let cpu_pct = server_cpu.filter(|_| window_s > 0.0).map(|cpu| cpu / window_s * 100.0);
        let rss = |s: &ServerSample| s.mem.map(|m| m.rss_kib);
        let rss_per_conn = match (self.before.mem, self.window_end.mem) {
            (Some(b), Some(e)) if self.subscribed > 0 => {
                Some(u2f(e.rss_kib.saturating_sub(b.rss_kib)) / u2f(self.subscribed as u64))
            }
            _ => None,
        };
        let server_closed: u64 = w.close_codes.values().sum();
        let failed: u64 = w.failures.values().sum();
        let latency_ms = Quantiles::from(&w.latency_us);
        let clean = failed == 0
            && server_closed == 0
            && w.lost == 0
            && w.duplicates == 0
            && w.reordered == 0
            && w.foreign == 0
            && p.errors.is_empty()
            && p.rejected == 0
            && (a.idle || latency_ms.p99 <= a.p99_limit_ms)
            // Latency counts from when a position was posted: a server that
            // takes POSTs too slowly for the schedule would hide its delay
            // there, and deliver less than the offered rate. Judged by the
            // last POST, not the worst: one slow answer the poster caught up
            // on is a latency outlier, already counted as such.
            && (a.idle || ms(p.end_lag_us) <= a.p99_limit_ms);
        let slow = (self.slow.watched > 0).then(|| {
            let max = |v: &[u64]| v.iter().max().map(|&us| round3(u2f(us) / 1e6));
            Slow {
                clients: self.slow.watched,
                closed: self.slow.closed,
                closed_after_start_s_max: max(&self.slow.closed_after_start_us),
                closed_after_stall_s_max: max(&self.slow.closed_after_stall_us),
                close_codes: self.slow.close_codes.clone(),
                max_server_queue_kib: self.slow.max_server_queue / 1024,
            }
        });
        let probes = self.probes.map(|r| Probes {
            first_byte_ms: Quantiles::from(&r.first_byte_us),
            complete_ms: Quantiles::from(&r.complete_us),
            failures: r.failures,
        });
        let loadgen_cpu_pct = if window_s > 0.0 {
            self.self_cpu_window / window_s * 100.0 / u2f(self.threads as u64)
        } else {
            0.0
        };
        Report {
            scenario: a.scenario.clone(),
            server_name: a.server_name.clone(),
            mode: if a.idle { "idle" } else { "load" },
            clean,
            params: Params {
                clients: a.clients,
                events: a.events,
                devices: a.devices,
                rate: a.rate,
                batch: self.batch,
                posts_per_s: a.rate / u2f(self.batch as u64),
                posters: self.posters,
                duration_s: a.duration.as_secs_f64(),
                slow_clients: a.slow_clients,
                slow_ballast_bytes_per_s: a.slow_ballast,
                probes: a.probes,
                threads: self.threads,
                event_prefix: self.prefix.to_owned(),
                ws: a.ws.clone(),
                http: a.http.clone(),
            },
            connect: Connect {
                clients: self.total_clients,
                subscribed: self.subscribed,
                all_subscribed: self.all_subscribed,
                storm_s: round3(u2f(self.storm_us) / 1e6),
                listen_overflows: self.listen_overflows,
                failures: w.failures.clone(),
                subscribe_first_byte_ms: Quantiles::from(&w.subscribe_first_byte_us),
                subscribe_complete_ms: Quantiles::from(&w.subscribe_complete_us),
                ready_ms: Quantiles::from(&w.ready_us),
            },
            window_s: round3(window_s),
            posts: Posts {
                posts: p.posts,
                positions: p.positions,
                accepted: p.accepted,
                rejected: p.rejected,
                errors: p.errors.clone(),
                post_latency_ms: Quantiles::from(&p.post_latency_us),
                max_lag_ms: ms(p.max_lag_us),
                end_lag_ms: ms(p.end_lag_us),
            },
            deliveries: w.deliveries,
            deliveries_per_s: deliveries_per_s.round(),
            expected: w.expected,
            lost: w.lost,
            duplicates: w.duplicates,
            reordered: w.reordered,
            foreign: w.foreign,
            untimed: w.untimed,
            unparsed: w.unparsed,
            server_errors: w.server_errors.clone(),
            latency_ms,
            server_closed: ServerClosed { total: server_closed, codes: w.close_codes.clone() },
            open_at_end: w.open_at_end,
            slow,
            probes,
            server: Server {
                name: a.server_name.clone(),
                pid: a.server_pid,
                cpu_s: server_cpu.map(round3),
                cpu_pct: cpu_pct.map(round3),
                cpu_us_per_delivery: cpu_us_per_delivery.map(round3),
                rss_before_kib: rss(&self.before),
                rss_connected_kib: rss(&self.connected),
                rss_end_kib: rss(&self.window_end),
                rss_after_kib: rss(&self.after),
                hwm_kib: self.after.mem.map(|m| m.hwm_kib),
                rss_per_conn_kib: rss_per_conn.map(round3),
            },
            loadgen: SelfUse {
                threads: self.threads,
                cpu_s_window: round3(self.self_cpu_window),
                cpu_s_total: round3(self.self_cpu_total),
                cpu_pct_per_thread: round3(loadgen_cpu_pct),
                saturated: loadgen_cpu_pct > 90.0,
            },
        }
    }
}

/// `-` for a value that was not measured.
fn opt<T: Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// A count map as `{}` or `{"1008":3}`.
fn map<K: Display, V: Display>(m: &BTreeMap<K, V>) -> String {
    let items: Vec<String> = m.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", items.join(","))
}

impl Report {
    /// The human table (stderr), from the same values as the JSON.
    pub(crate) fn table(&self) -> String {
        let mut t = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<34} {v}");
        };
        let (p, c) = (&self.params, &self.connect);
        row(
            "run",
            format!(
                "{} / {} ({}), clean: {}",
                self.scenario, self.server_name, self.mode, self.clean
            ),
        );
        row(
            "clients / events / devices",
            format!("{} (+{} slow) / {} / {}", p.clients, p.slow_clients, p.events, p.devices),
        );
        row(
            "connect: subscribed / failures",
            format!("{} of {} / {}", c.subscribed, c.clients, map(&c.failures)),
        );
        row(
            "connect storm: all snapshots in",
            format!(
                "{} s (per client p50 {} / p99 {} ms; listen-queue overflows {})",
                c.storm_s,
                c.ready_ms.p50,
                c.ready_ms.p99,
                opt(c.listen_overflows)
            ),
        );
        let s = &c.subscribe_first_byte_ms;
        row(
            "subscribe answer p50/p99/max",
            format!("{} / {} / {} ms (first byte)", s.p50, s.p99, s.max),
        );
        if self.mode != "idle" {
            let posts = &self.posts;
            row(
                "posted: rate x duration, batch",
                format!(
                    "{}/s x {} s, {} per POST ({} POSTs on {} connection{}, lag max {} ms, \
                     at the end {} ms)",
                    p.rate,
                    p.duration_s,
                    p.batch,
                    posts.posts,
                    p.posters,
                    if p.posters == 1 { "" } else { "s" },
                    posts.max_lag_ms,
                    posts.end_lag_ms
                ),
            );
            row(
                "accepted / rejected / errors",
                format!("{} / {} / {}", posts.accepted, posts.rejected, map(&posts.errors)),
            );
            let l = &posts.post_latency_ms;
            row("POST answered p50/p99/max", format!("{} / {} / {} ms", l.p50, l.p99, l.max));
            row(
                "deliveries (deliveries/s)",
                format!("{} ({})", self.deliveries, self.deliveries_per_s),
            );
            let l = &self.latency_ms;
            row(
                "latency p50/p99/p99.9/max",
                format!("{} / {} / {} / {} ms", l.p50, l.p99, l.p999, l.max),
            );
            row(
                "lost / dup / reordered / foreign",
                format!(
                    "{} / {} / {} / {} (of {} expected)",
                    self.lost, self.duplicates, self.reordered, self.foreign, self.expected
                ),
            );
        }
        row(
            "server-closed (codes)",
            format!("{} {}", self.server_closed.total, map(&self.server_closed.codes)),
        );
        if let Some(slow) = &self.slow {
            row(
                "slow clients closed",
                format!(
                    "{} of {}, {} s after start, {} s after the server socket \
                     stopped growing ({} KiB), codes {}",
                    slow.closed,
                    slow.clients,
                    opt(slow.closed_after_start_s_max),
                    opt(slow.closed_after_stall_s_max),
                    slow.max_server_queue_kib,
                    map(&slow.close_codes)
                ),
            );
        }
        if let Some(probes) = &self.probes {
            let f = &probes.first_byte_ms;
            row(
                "probe subscribe p50/p99/max",
                format!(
                    "{} / {} / {} ms first byte, {} ms p99 whole",
                    f.p50, f.p99, f.max, probes.complete_ms.p99
                ),
            );
        }
        let server = &self.server;
        row(
            "server CPU (window)",
            format!(
                "{} s, {} % of a core over {} s",
                opt(server.cpu_s),
                opt(server.cpu_pct),
                self.window_s
            ),
        );
        row("server CPU-us per delivery", opt(server.cpu_us_per_delivery));
        row(
            "server RSS before/connected/end/peak",
            format!(
                "{} / {} / {} / {} KiB",
                opt(server.rss_before_kib),
                opt(server.rss_connected_kib),
                opt(server.rss_end_kib),
                opt(server.hwm_kib)
            ),
        );
        row("server RSS per connection", format!("{} KiB", opt(server.rss_per_conn_kib)));
        let lg = &self.loadgen;
        row(
            "loadgen CPU (window/total)",
            format!(
                "{} / {} s, {} % per thread ({} threads){}",
                lg.cpu_s_window,
                lg.cpu_s_total,
                lg.cpu_pct_per_thread,
                lg.threads,
                if lg.saturated { "  WARNING: the load generator was saturated" } else { "" }
            ),
        );
        format!("loadgen report\n{t}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Parts {
        args: Args,
        poster: PosterReport,
        workers: WorkerReport,
        slow: SlowReport,
        probes: Option<ProbeReport>,
    }

    impl Parts {
        fn new() -> Parts {
            let mut workers =
                WorkerReport { deliveries: 1000, expected: 1000, ..WorkerReport::default() };
            workers.latency_us.record(2_000);
            Parts {
                args: Args::default(),
                poster: PosterReport::default(),
                workers,
                slow: SlowReport::default(),
                probes: None,
            }
        }

        fn report(&self) -> Report {
            let sample = ServerSample::default();
            Summary {
                args: &self.args,
                threads: 1,
                posters: 1,
                batch: 1,
                prefix: "lg-",
                total_clients: 10,
                subscribed: 10,
                all_subscribed: true,
                storm_us: 0,
                listen_overflows: None,
                before: sample,
                connected: sample,
                window_start: ServerSample { cpu_s: Some(1.0), mem: None },
                window_end: ServerSample { cpu_s: Some(1.5), mem: None },
                after: sample,
                window_us: 1_000_000,
                self_cpu_window: 0.1,
                self_cpu_total: 0.2,
                poster: &self.poster,
                workers: &self.workers,
                slow: &self.slow,
                probes: self.probes.as_ref(),
            }
            .report()
        }
    }

    #[test]
    fn a_run_is_clean_only_when_nothing_went_wrong() {
        let mut parts = Parts::new();
        let r = parts.report();
        assert!(r.clean);
        assert_eq!((r.server.cpu_pct, r.server.cpu_us_per_delivery), (Some(50.0), Some(500.0)));
        parts.workers.lost = 1;
        assert!(!parts.report().clean);
        parts.workers.lost = 0;
        parts.workers.latency_us.record(90_000);
        parts.workers.latency_us.record(90_000);
        assert!(!parts.report().clean, "p99 over the limit");
        parts.args.idle = true;
        assert!(parts.report().clean, "an idle run has no latency limit");
        parts.args.idle = false;
        parts.workers = Parts::new().workers;
        parts.poster.end_lag_us = 60_000;
        assert!(!parts.report().clean, "the poster ended behind schedule");
        parts.poster.end_lag_us = 0;
        parts.workers.close_codes.insert(1008, 1);
        assert!(!parts.report().clean);
    }

    /// The JSON keeps the names scripts/bench/report.js and bench.sh read.
    #[test]
    fn json_and_table_come_from_the_same_values() {
        let mut parts = Parts::new();
        parts.probes = Some(ProbeReport::default());
        parts.slow.watched = 1;
        parts.slow.close_codes.insert("1008".to_owned(), 1);
        let r = parts.report();
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.contains("\"clean\":true"), "{line}");
        let j: serde_json::Value = serde_json::from_str(&line).unwrap();
        for path in [
            "/scenario",
            "/server_name",
            "/mode",
            "/params/rate",
            "/params/posts_per_s",
            "/params/posters",
            "/params/duration_s",
            "/connect/failures",
            "/connect/ready_ms/p99",
            "/connect/storm_s",
            "/connect/listen_overflows",
            "/posts/errors",
            "/posts/end_lag_ms",
            "/deliveries_per_s",
            "/latency_ms/p999",
            "/server_closed/codes",
            "/slow/close_codes",
            "/slow/closed_after_stall_s_max",
            "/probes/first_byte_ms/p99",
            "/server/cpu_us_per_delivery",
            "/server/rss_per_conn_kib",
            "/loadgen/saturated",
        ] {
            assert!(j.pointer(path).is_some(), "{path} missing in {line}");
        }
        assert_eq!(j.pointer("/server/rss_before_kib"), Some(&serde_json::Value::Null));
        let table = r.table();
        assert!(table.contains("p50/p99/p99.9/max          2 / 2 / 2 / 2 ms"), "{table}");
        assert!(table.contains("server RSS per connection          - KiB"), "{table}");
        assert!(table.contains("codes {\"1008\":1}"), "{table}");
        assert!(table.contains("probe subscribe"), "{table}");
    }
}
