//! Figures of one run, medians over runs, and their table and JSON forms.

use serde_json::{Value, json};
use std::path::Path;

/// Named figures of one run, in insertion order (names carry their unit: `_ms`, `_per_s`, ...).
#[derive(Default, Clone, Debug)]
pub struct Figures(pub Vec<(String, f64)>);

impl Figures {
    pub fn add(&mut self, name: &str, v: f64) {
        self.0.push((name.to_string(), v));
    }
}

/// Median of the values (mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians of each figure over the runs, keeping the first run's order.
pub fn medians(runs: &[Figures]) -> Figures {
    let mut out = Figures::default();
    if let Some(first) = runs.first() {
        for (k, _) in &first.0 {
            let vals: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.0.iter().find(|(n, _)| n == k).map(|(_, v)| *v))
                .collect();
            out.add(k, median(&vals));
        }
    }
    out
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v == v.trunc() && v.abs() < 1e12 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Print the table: figure, median, then each run.
pub fn print_table(title: &str, runs: &[Figures]) {
    let med = medians(runs);
    println!(
        "\n{title}  ({} run{})",
        runs.len(),
        if runs.len() == 1 { "" } else { "s" }
    );
    let w = med
        .0
        .iter()
        .map(|(k, _)| k.len())
        .max()
        .unwrap_or(10)
        .max(6);
    let mut head = format!("{:<w$}  {:>12}", "figure", "median");
    for i in 0..runs.len() {
        head += &format!("  {:>10}", format!("run{}", i + 1));
    }
    println!("{head}");
    println!("{}", "-".repeat(head.len()));
    for (k, v) in &med.0 {
        let mut line = format!("{k:<w$}  {:>12}", fmt(*v));
        for r in runs {
            let x =
                r.0.iter()
                    .find(|(n, _)| n == k)
                    .map_or(f64::NAN, |(_, v)| *v);
            line += &format!("  {:>10}", fmt(x));
        }
        println!("{line}");
    }
}

fn to_obj(f: &Figures) -> Value {
    let m: serde_json::Map<String, Value> =
        f.0.iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    if v.is_finite() { json!(v) } else { Value::Null },
                )
            })
            .collect();
    Value::Object(m)
}

/// The JSON document of a scenario's result.
pub fn to_json(scenario: &str, target: Value, params: Value, runs: &[Figures]) -> Value {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "scenario": scenario,
        "unix_time": secs,
        "target": target,
        "params": params,
        "figures": runs.first().map(|r| r.0.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()),
        "median": to_obj(&medians(runs)),
        "runs": runs.iter().map(to_obj).collect::<Vec<_>>(),
    })
}

/// Write JSON to a file.
pub fn write_json(path: &Path, v: &Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(v)? + "\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_runs() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let mut a = Figures::default();
        a.add("x", 1.0);
        let mut b = Figures::default();
        b.add("x", 3.0);
        assert_eq!(medians(&[a, b]).0[0].1, 2.0);
    }
}
