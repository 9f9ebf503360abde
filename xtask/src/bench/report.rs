//! BENCHMARKS.md from the results.

use std::fmt::Write;

use serde_json::Value;

use super::{Plan, Results};

/// Hand-written text after this marker survives a re-run.
pub const ANALYSIS_MARKER: &str = "<!-- analysis -->";

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(*k))?.as_f64()
}

fn fmt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) if x.is_finite() => {
            let s = format!("{x:.decimals$}");
            group(&s)
        }
        _ => "–".to_owned(),
    }
}

/// Thousands separators for the integer part.
fn group(s: &str) -> String {
    let (sign, rest) = s.strip_prefix('-').map_or(("", s), |r| ("-", r));
    let (int, frac) = rest.split_once('.').map_or((rest, ""), |(i, f)| (i, f));
    let mut out = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if frac.is_empty() {
        format!("{sign}{out}")
    } else {
        format!("{sign}{out}.{frac}")
    }
}

fn ms(v: &Value, key: &str) -> String {
    fmt(num(v, &["latency_us", key]).map(|us| us / 1000.0), 2)
}

/// One target of the issue and what was measured.
struct Target {
    what: String,
    target: &'static str,
    measured: String,
    /// None: not measured.
    met: Option<bool>,
    /// Evidence for a miss.
    note: String,
}

fn fanout_at(results: &Results, rate: u64) -> Option<&(u64, Value, Value)> {
    results.fanout.iter().find(|(r, _, _)| *r == rate)
}

fn error_of(v: &Value) -> Option<String> {
    v.get("error").and_then(Value::as_str).map(str::to_owned)
}

fn targets(plan: &Plan, results: &Results) -> Vec<Target> {
    let mut t = Vec::new();
    let subs = plan.fanout_clients * 2;

    // 1a. No loss, no lag at 1,000 events/s.
    t.push(match fanout_at(results, 1_000) {
        Some((_, _, ours)) => {
            let lost = num(ours, &["lost"]).unwrap_or(f64::NAN);
            let lag = num(ours, &["lag_signals"]).unwrap_or(f64::NAN);
            let ok = lost == 0.0 && lag == 0.0 && ours["publish_error"].is_null();
            Target {
                what: format!(
                    "fan-out 1,000 events/s × {} subscribers",
                    group(&subs.to_string())
                ),
                target: "no loss, no lag signal",
                measured: format!(
                    "{} lost, {} lag signals",
                    fmt(Some(lost), 0),
                    fmt(Some(lag), 0)
                ),
                met: Some(ok),
                note: format!(
                    "server CPU {} %, client CPU {} %, {} clients dropped",
                    fmt(num(ours, &["server_cpu_pct"]), 0),
                    fmt(num(ours, &["client_cpu_pct"]), 0),
                    fmt(num(ours, &["clients_dropped"]), 0)
                ),
            }
        }
        None => not_measured(
            "fan-out 1,000 events/s",
            "no loss, no lag signal",
            "rate not run",
        ),
    });

    // 1b. Deliveries/s ≥ 60 % of the floor, at every rate.
    for (rate, floor, ours) in &results.fanout {
        let ratio = num(ours, &["delivered_per_s"])
            .zip(num(floor, &["delivered_per_s"]))
            .map(|(o, f)| o / f * 100.0);
        t.push(Target {
            what: format!(
                "deliveries/s vs raw floor at {} events/s",
                group(&rate.to_string())
            ),
            target: "≥ 60 %",
            measured: format!("{} %", fmt(ratio, 0)),
            met: ratio.map(|r| r >= 60.0),
            note: format!(
                "ours {} /s at {} % server CPU, floor {} /s at {} % CPU",
                fmt(num(ours, &["delivered_per_s"]), 0),
                fmt(num(ours, &["server_cpu_pct"]), 0),
                fmt(num(floor, &["delivered_per_s"]), 0),
                fmt(num(floor, &["server_cpu_pct"]), 0)
            ),
        });
    }

    // 1c. p99 ≤ 1.5× the floor at 100 events/s.
    t.push(match fanout_at(results, 100) {
        Some((_, floor, ours)) => {
            let ratio = num(ours, &["latency_us", "p99"])
                .zip(num(floor, &["latency_us", "p99"]))
                .map(|(o, f)| o / f);
            Target {
                what: "p99 latency vs raw floor at 100 events/s".into(),
                target: "≤ 1.5×",
                measured: format!(
                    "{}× ({} ms vs {} ms)",
                    fmt(ratio, 2),
                    ms(ours, "p99"),
                    ms(floor, "p99")
                ),
                met: ratio.map(|r| r <= 1.5),
                note: String::new(),
            }
        }
        None => not_measured("p99 vs raw floor at 100 events/s", "≤ 1.5×", "rate not run"),
    });

    // 2. Idle RSS per connection.
    t.push(match &results.idle {
        Some((_, ours)) => {
            let per = num(ours, &["rss_per_conn_bytes"]);
            Target {
                what: format!("idle: {} connections", group(&plan.idle.to_string())),
                target: "≤ 8 KiB server RSS per connection",
                measured: format!(
                    "{} KiB ({} established)",
                    fmt(per.map(|b| b / 1024.0), 1),
                    fmt(num(ours, &["established"]), 0)
                ),
                met: per.map(|b| b <= 8192.0 && num(ours, &["failed"]) == Some(0.0)),
                note: String::new(),
            }
        }
        None => not_measured("idle scale", "≤ 8 KiB per connection", "not run"),
    });

    // 3. Publish cost.
    let hub: Vec<&Value> = results
        .publish
        .iter()
        .filter(|v| v["via"] == "hub")
        .collect();
    let costs: Vec<f64> = hub
        .iter()
        .filter_map(|v| num(v, &["ns_per_publish"]))
        .collect();
    t.push(if costs.is_empty() {
        not_measured("publish cost", "≤ 1 µs, flat", "bench-core failed")
    } else {
        let max = costs.iter().copied().fold(0.0, f64::max);
        let min = costs.iter().copied().fold(f64::INFINITY, f64::min);
        Target {
            what: "publish cost (0 / 100 / 10,000 hub subscribers)".into(),
            target: "≤ 1 µs, flat in subscribers",
            measured: costs
                .iter()
                .map(|c| format!("{} ns", fmt(Some(*c), 0)))
                .collect::<Vec<_>>()
                .join(" / "),
            met: Some(max <= 1000.0 && max / min <= 1.5),
            note: format!("max/min = {:.2}", max / min),
        }
    });

    // 4. Webhooks: the target rate sustained (all delivered, no backlog).
    for (engine, r, peak) in &results.webhooks {
        t.push(match error_of(r) {
            Some(e) => not_measured(&format!("webhooks, {engine}"), "≥ 5,000 deliveries/s", &e),
            None => {
                let drain = num(r, &["drain_s"]);
                let complete = r["complete"].as_bool() == Some(true);
                Target {
                    what: format!("webhooks, {engine}"),
                    target: "≥ 5,000 deliveries/s",
                    measured: format!(
                        "offered 5,000/s: {} of {} delivered, backlog cleared {} s after the last publish; peak {} /s",
                        fmt(num(r, &["delivered"]), 0),
                        fmt(num(r, &["events"]), 0),
                        fmt(drain, 2),
                        fmt(num(peak, &["deliveries_per_s"]), 0),
                    ),
                    met: drain.map(|d| complete && d <= 1.0),
                    note: format!(
                        "server CPU {} %; at 20,000/s offered: {} lost",
                        fmt(num(r, &["server_cpu_pct"]), 0),
                        fmt(num(peak, &["lost"]), 0)
                    ),
                }
            }
        });
    }

    // 5. Telemetry.
    t.push(match error_of(&results.telemetry) {
        Some(e) => not_measured("telemetry overhead", "≤ 1 %", &e),
        None => {
            let loss = num(&results.telemetry, &["throughput_loss_pct"]);
            let cpu = num(&results.telemetry, &["cpu_overhead_pct"]);
            Target {
                what: "telemetry overhead (bus throughput)".into(),
                target: "≤ 1 %",
                measured: format!(
                    "{} % throughput, {} % CPU per event",
                    fmt(loss, 1),
                    fmt(cpu, 1)
                ),
                met: loss.map(|l| l <= 1.0),
                note: String::new(),
            }
        }
    });

    // 6. Churn.
    t.push(match &results.churn {
        Some(c) => {
            let gauge = num(c, &["gauge_after"]);
            let change = num(c, &["rss_change_pct"]);
            Target {
                what: format!("churn: {} cycles", group(&plan.churn.to_string())),
                target: "gauge back to 0, RSS within 10 %",
                measured: format!(
                    "gauge {}, RSS {} %, {} failed",
                    fmt(gauge, 0),
                    fmt(change, 1),
                    fmt(num(c, &["failed"]), 0)
                ),
                met: Some(gauge == Some(0.0) && change.is_some_and(|x| x <= 10.0)),
                note: String::new(),
            }
        }
        None => not_measured("churn", "gauge 0, RSS within 10 %", "not run"),
    });
    t
}

fn not_measured(what: &str, target: &'static str, reason: &str) -> Target {
    Target {
        what: what.to_owned(),
        target,
        measured: format!("not measured: {reason}"),
        met: None,
        note: String::new(),
    }
}

/// The whole file; `previous` is the old file (its analysis is kept).
pub fn render(plan: &Plan, results: &Results, previous: &str) -> String {
    let mut s = String::new();
    let m = &results.meta;
    let text = |k: &str| m[k].as_str().unwrap_or("?").to_owned();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Written by `{}` (everything above the analysis marker is regenerated on every run).\n",
        text("command")
    );
    let _ = writeln!(s, "## Machine and run\n");
    let _ = writeln!(s, "| | |\n|---|---|");
    for (label, key) in [
        ("date", "date"),
        ("command", "command"),
        ("commit", "git"),
        ("CPUs (`nproc`)", "nproc"),
        ("CPU model", "cpu"),
        ("memory", "memory"),
        ("kernel", "kernel"),
        ("compiler", "rustc"),
        ("load average before the run", "load_before"),
    ] {
        let _ = writeln!(s, "| {label} | {} |", text(key));
    }
    let _ = writeln!(
        s,
        "| wall time | {:.0} s |\n",
        results.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "Everything runs on this one machine over loopback: the load client shares the cores with the \
         server (and with whatever else runs, see the load average), so absolute figures say little; \
         the **raw floor** (`examples/src/bin/raw-floor.rs`: the same pre-rendered frames written to \
         the same sockets, nothing else) runs in the same harness, each server on a fresh process, and \
         the ratio to it is the figure to read. Servers run release builds with default settings \
         (`RUST_LOG` unset, logs to a file), SQLite in a temporary directory.\n"
    );
    if plan.quick {
        let _ = writeln!(
            s,
            "**This is a `--quick` smoke run: counts are far below the targets' conditions.**\n"
        );
    }

    let targets = targets(plan, results);
    let _ = writeln!(s, "## Targets\n");
    let _ = writeln!(
        s,
        "| measurement | target | measured | |\n|---|---|---|---|"
    );
    for t in &targets {
        let verdict = match t.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not measured",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {verdict} |",
            t.what, t.target, t.measured
        );
    }
    let _ = writeln!(s);

    fanout_section(&mut s, plan, results);
    idle_section(&mut s, results);
    publish_section(&mut s, results);
    webhook_section(&mut s, results);
    telemetry_section(&mut s, results);
    churn_section(&mut s, plan, results);
    if let Some(profile) = &results.profile {
        let rate = plan.rates.iter().max().copied().unwrap_or(0);
        let _ = writeln!(
            s,
            "## Profile\n\n`perf record -F 499 -g` on event-server during the {} events/s fan-out run, \
             top symbols by self time:\n\n```text\n{profile}\n```\n",
            group(&rate.to_string())
        );
    }

    let missed: Vec<&Target> = targets.iter().filter(|t| t.met != Some(true)).collect();
    let _ = writeln!(s, "## Missed or unmeasured targets\n");
    if missed.is_empty() {
        let _ = writeln!(s, "None.\n");
    }
    for t in missed {
        let _ = writeln!(
            s,
            "- **{}** — target {}, measured {}{}.",
            t.what,
            t.target,
            t.measured,
            if t.note.is_empty() {
                String::new()
            } else {
                format!("; {}", t.note)
            }
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "{ANALYSIS_MARKER}");
    match previous.split_once(ANALYSIS_MARKER) {
        Some((_, kept)) if !kept.trim().is_empty() => s.push_str(kept.trim_start_matches('\n')),
        _ => s.push_str("## Analysis\n\n(No hand-written analysis yet.)\n"),
    }
    s
}

fn fanout_section(s: &mut String, plan: &Plan, results: &Results) {
    let _ = writeln!(
        s,
        "## 1. Fan-out\n\n{} WebSocket + {} SSE clients (`loadgen`), {}-byte `JobProgress` events \
         published with `POST /api/v1/events` in arrays every 5 ms for {} s; latency is publish \
         (timestamp in the event, taken when the batch is built) → parsed by the client; \
         \"lost\" counts counter gaps and events never received.\n",
        group(&plan.fanout_clients.to_string()),
        group(&plan.fanout_clients.to_string()),
        256,
        plan.duration
    );
    let _ = writeln!(
        s,
        "| events/s | server | published/s | delivered/s | p50 ms | p95 ms | p99 ms | max ms | lost | lag signals | dropped clients | server CPU % | client CPU % |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (rate, floor, ours) in &results.fanout {
        for (name, v) in [("raw floor", floor), ("event-server", ours)] {
            let _ = writeln!(
                s,
                "| {} | {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                group(&rate.to_string()),
                fmt(num(v, &["publish_rate"]), 0),
                fmt(num(v, &["delivered_per_s"]), 0),
                ms(v, "p50"),
                ms(v, "p95"),
                ms(v, "p99"),
                ms(v, "max"),
                fmt(num(v, &["lost"]), 0),
                fmt(num(v, &["lag_signals"]), 0),
                fmt(num(v, &["clients_dropped"]), 0),
                fmt(num(v, &["server_cpu_pct"]), 0),
                fmt(num(v, &["client_cpu_pct"]), 0),
            );
        }
    }
    let _ = writeln!(
        s,
        "\n| events/s | deliveries/s, ours ÷ floor | p99, ours ÷ floor |\n|---|---|---|"
    );
    for (rate, floor, ours) in &results.fanout {
        let d = num(ours, &["delivered_per_s"])
            .zip(num(floor, &["delivered_per_s"]))
            .map(|(o, f)| o / f * 100.0);
        let p = num(ours, &["latency_us", "p99"])
            .zip(num(floor, &["latency_us", "p99"]))
            .map(|(o, f)| o / f);
        let _ = writeln!(
            s,
            "| {} | {} % | {}× |",
            group(&rate.to_string()),
            fmt(d, 0),
            fmt(p, 2)
        );
    }
    let _ = writeln!(
        s,
        "\nLatency by transport (ms):\n\n| events/s | server | WS p50 | WS p99 | WS max | SSE p50 | SSE p99 | SSE max |\n|---|---|---|---|---|---|---|---|"
    );
    for (rate, floor, ours) in &results.fanout {
        for (name, v) in [("raw floor", floor), ("event-server", ours)] {
            let p = |kind: &str, q: &str| fmt(num(v, &[kind, q]).map(|us| us / 1000.0), 2);
            let _ = writeln!(
                s,
                "| {} | {name} | {} | {} | {} | {} | {} | {} |",
                group(&rate.to_string()),
                p("latency_us_ws", "p50"),
                p("latency_us_ws", "p99"),
                p("latency_us_ws", "max"),
                p("latency_us_sse", "p50"),
                p("latency_us_sse", "p99"),
                p("latency_us_sse", "max"),
            );
        }
    }
    let errors: Vec<String> = results
        .fanout
        .iter()
        .flat_map(|(rate, f, o)| [(rate, "raw floor", f), (rate, "event-server", o)])
        .filter_map(|(rate, name, v)| {
            let e = v["publish_error"].as_str().or(v["first_error"].as_str())?;
            Some(format!("- {rate} events/s, {name}: {e}"))
        })
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(s, "\nErrors reported by loadgen:\n\n{}", errors.join("\n"));
    }
    let _ = writeln!(s);
}

fn idle_section(s: &mut String, results: &Results) {
    let Some((floor, ours)) = &results.idle else {
        return;
    };
    let _ = writeln!(
        s,
        "## 2. Idle scale\n\nHalf WebSocket, half SSE, opened 128 at a time and held; server RSS \
         (`VmRSS`) before and 1 s after the last one was confirmed.\n"
    );
    let _ = writeln!(
        s,
        "| server | connections | established | failed | open in s | RSS before MiB | RSS after MiB | per connection KiB | gauge while open |\n|---|---|---|---|---|---|---|---|---|"
    );
    for (name, v) in [("raw floor", floor), ("event-server", ours)] {
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
            fmt(num(v, &["connections"]), 0),
            fmt(num(v, &["established"]), 0),
            fmt(num(v, &["failed"]), 0),
            fmt(num(v, &["connect_s"]), 1),
            fmt(num(v, &["server_rss_before_kib"]).map(|k| k / 1024.0), 1),
            fmt(num(v, &["server_rss_after_kib"]).map(|k| k / 1024.0), 1),
            fmt(num(v, &["rss_per_conn_bytes"]).map(|b| b / 1024.0), 2),
            fmt(num(v, &["gauge_while_open"]), 0),
        );
    }
    if let Some(e) = ours["first_error"].as_str() {
        let _ = writeln!(s, "\nFirst connection error (event-server): {e}");
    }
    let _ = writeln!(s);
}

fn publish_section(s: &mut String, results: &Results) {
    let _ = writeln!(
        s,
        "## 3. Publish cost\n\n`bench-core publish` (examples/src/bin/bench-core.rs): the time spent \
         inside `EventBus::publish` for 256-byte `JobProgress` events, published in chunks of 256 \
         from a thread outside the runtime while subscribers drain on the runtime's workers. `hub`: \
         the subscribers are connections of one `FanoutHub` registered on the bus (how the transports \
         subscribe); `bus`: each subscriber is its own bus subscription.\n"
    );
    let _ = writeln!(
        s,
        "| via | subscribers | ns per publish | worst chunk, ns per publish |\n|---|---|---|---|"
    );
    for v in &results.publish {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            v["via"].as_str().unwrap_or("?"),
            fmt(num(v, &["subscribers"]), 0),
            fmt(num(v, &["ns_per_publish"]), 0),
            fmt(num(v, &["worst_chunk_ns_per_publish"]), 0),
        );
    }
    let _ = writeln!(s);
}

fn webhook_section(s: &mut String, results: &Results) {
    let _ = writeln!(
        s,
        "## 4. Webhooks\n\nA fresh event-server per run; `loadgen --webhooks` registers one \
         webhook (`JobProgress`) pointing at a receiver in its own process that answers 204, \
         publishes the events paced at the offered rate (arrays every 5 ms), and waits until \
         each one arrived (or 5 s without progress). Offered 5,000/s (the target: met when \
         everything arrives and the backlog clears within 1 s of the last publish), then \
         20,000/s (peak). \"deliveries/s\": delivered ÷ time from the first publish to the \
         last delivery; \"lost\": published but never delivered.\n"
    );
    let _ = writeln!(
        s,
        "| database | offered/s | events | delivered | lost | duplicates | publish s | backlog after publish s | deliveries/s | p50 ms | p99 ms | server CPU % |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (engine, sustained, peak) in &results.webhooks {
        for r in [sustained, peak] {
            if let Some(e) = error_of(r) {
                let _ = writeln!(s, "| {engine} | {e} | | | | | | | | | | |");
                continue;
            }
            let _ = writeln!(
                s,
                "| {engine} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                fmt(num(r, &["rate"]), 0),
                fmt(num(r, &["events"]), 0),
                fmt(num(r, &["delivered"]), 0),
                fmt(num(r, &["lost"]), 0),
                fmt(num(r, &["duplicates"]), 0),
                fmt(num(r, &["publish_s"]), 2),
                fmt(num(r, &["drain_s"]), 2),
                fmt(num(r, &["deliveries_per_s"]), 0),
                fmt(num(r, &["latency_ms", "p50"]), 1),
                fmt(num(r, &["latency_ms", "p99"]), 1),
                fmt(num(r, &["server_cpu_pct"]), 0),
            );
        }
    }
    let _ = writeln!(s);
}

fn telemetry_section(s: &mut String, results: &Results) {
    let t = &results.telemetry;
    let _ = writeln!(
        s,
        "## 5. Telemetry overhead\n\n`bench-core telemetry`: a bus with a `FanoutHub` of 100 drained \
         connections; events published in chunks of 256, the publisher waiting for every sink to \
         catch up (sustained throughput, nothing lost). Then the same with event-telemetry's JSON \
         log subscriber installed (filter `info`, writing to a discarding writer) and its \
         `TelemetrySink` with Prometheus instruments registered. Best of {} runs each.\n",
        fmt(num(t, &["runs"]), 0)
    );
    if let Some(e) = error_of(t) {
        let _ = writeln!(s, "Not measured: {e}\n");
        return;
    }
    let _ = writeln!(
        s,
        "| | events/s | CPU ns per event |\n|---|---|---|\n| without telemetry | {} | {} |\n| with telemetry | {} | {} |\n| overhead | {} % | {} % |\n",
        fmt(num(t, &["without", "events_per_s"]), 0),
        fmt(num(t, &["without", "cpu_ns_per_event"]), 0),
        fmt(num(t, &["with", "events_per_s"]), 0),
        fmt(num(t, &["with", "cpu_ns_per_event"]), 0),
        fmt(num(t, &["throughput_loss_pct"]), 1),
        fmt(num(t, &["cpu_overhead_pct"]), 1),
    );
}

fn churn_section(s: &mut String, plan: &Plan, results: &Results) {
    let Some(c) = &results.churn else {
        return;
    };
    let _ = writeln!(
        s,
        "## 6. Churn\n\nOne event-server; {} warm-up cycles, then {} cycles, 32 at a time, \
         alternating WebSocket (close handshake) and SSE (TCP close), each waiting for the first \
         frame. Then `/metrics` until both connection gauges read 0, and RSS 1 s later.\n",
        group(&plan.churn_warmup.to_string()),
        group(&plan.churn.to_string())
    );
    let _ = writeln!(
        s,
        "| cycles | completed | failed | cycles/s | gauge after | gauge 0 after ms | RSS before MiB | RSS after MiB | RSS change % |\n|---|---|---|---|---|---|---|---|---|"
    );
    let _ = writeln!(
        s,
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        fmt(num(c, &["cycles"]), 0),
        fmt(num(c, &["completed"]), 0),
        fmt(num(c, &["failed"]), 0),
        fmt(num(c, &["cycles_per_s"]), 0),
        fmt(num(c, &["gauge_after"]), 0),
        fmt(num(c, &["gauge_zero_ms"]), 0),
        fmt(num(c, &["server_rss_before_kib"]).map(|k| k / 1024.0), 1),
        fmt(num(c, &["server_rss_after_kib"]).map(|k| k / 1024.0), 1),
        fmt(num(c, &["rss_change_pct"]), 1),
    );
    if let Some(e) = c["first_error"].as_str() {
        let _ = writeln!(s, "First error: {e}\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(group("1234567.89"), "1,234,567.89");
        assert_eq!(group("-1234"), "-1,234");
        assert_eq!(group("999"), "999");
    }
}
