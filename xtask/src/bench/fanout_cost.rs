//! `cargo xtask bench --only fanout-cost`: what `FanoutHub::fan_out` costs
//! in-process (`bench-fanout`, examples/src/bin/bench-fanout.rs): ns per
//! delivery into outboxes with room, the same with a filter set after
//! subscribing, and ns per push into full outboxes with each overflow
//! policy. Prints a table; BENCHMARKS.md is left alone (its analysis
//! compares such runs, same machine, interleaved).

use serde_json::Value;

use super::run::{self, Bins, run_json};
use super::{Plan, sh};

/// Builds `bench-fanout`, runs it and prints its table.
pub fn fanout_cost_only(plan: &Plan) -> Result<(), String> {
    run::build_examples(&["bench-fanout"])?;
    let bin = Bins::dir()?.join("bench-fanout");
    let load_before = sh("cut -d' ' -f1-3 /proc/loadavg");
    let args: &[&str] = if plan.quick {
        &["--subscribers", "200", "--events", "1000", "--rounds", "1"]
    } else {
        &[
            "--subscribers",
            "2000",
            "--events",
            "10000",
            "--rounds",
            "5",
        ]
    };
    let lines = run_json(&bin, args, 600)?;
    println!("\n{}", table(&lines));
    println!(
        "load average before {load_before}, after {}; git {}",
        sh("cut -d' ' -f1-3 /proc/loadavg"),
        sh("git rev-parse --short HEAD"),
    );
    Ok(())
}

fn table(lines: &[Value]) -> String {
    let find = |measure: &str| {
        lines
            .iter()
            .find(|l| l["measure"] == measure)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let (drained, filtered, saturated) = (find("drained"), find("filtered"), find("saturated"));
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let mut out = format!(
        "`FanoutHub::fan_out`, {} subscribers, {} `JobProgress` events in batches of {}, best of {} rounds.\n\n\
         | outboxes | ns per delivery |\n|---|---:|\n\
         | with room (drained between batches, not timed) | {:.2} |\n\
         | with room, a filter set after subscribing | {:.2} |\n\n\
         | full, never drained: policy | ns per push |\n|---|---:|\n",
        drained["subscribers"],
        drained["events"],
        drained["batch"],
        drained["rounds"],
        f(&drained["ns_per_delivery"]),
        f(&filtered["ns_per_delivery"]),
    );
    for push in saturated["ns_per_push"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "| {} | {:.2} |\n",
            push["policy"].as_str().unwrap_or("?"),
            f(&push["ns"])
        ));
    }
    out
}
