//! The benchmark's results: one row per figure, each beside its direct (baseline) figure,
//! printed as a table or as one JSON object.

use std::collections::BTreeMap;

use serde::Serialize;

use super::machine::Machine;

/// What a target asks of a figure.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// The value must be at most this.
    AtMost(f64),
    /// The value must be at least this.
    AtLeast(f64),
    /// The ratio (value / direct) must be at least this.
    RatioAtLeast(f64),
    /// The ratio (value / direct) must be at most this.
    RatioAtMost(f64),
}

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub label: String,
    pub unit: String,
    pub value: f64,
    /// The same work done directly (or the baseline named in `direct_label`).
    pub direct: Option<f64>,
    pub direct_label: Option<String>,
    /// `value / direct`.
    pub ratio: Option<f64>,
    /// The target in words, as the table shows it.
    pub target: Option<String>,
    pub check: Option<Check>,
    pub pass: Option<bool>,
}

/// Every figure of one run, keyed by a stable name (the JSON keys).
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Where it ran: compare figures only between runs on alike machines.
    pub machine: Machine,
    pub settings: BTreeMap<String, serde_json::Value>,
    pub figures: BTreeMap<String, Figure>,
    /// Key order as measured, for the table.
    #[serde(skip)]
    order: Vec<String>,
    /// Extra facts (phase times, counts) that explain the figures.
    pub notes: BTreeMap<String, serde_json::Value>,
}

impl Report {
    /// An empty report of a run on `machine`.
    pub fn on(machine: Machine) -> Report {
        Report {
            machine,
            ..Report::default()
        }
    }

    pub fn setting(&mut self, key: &str, value: impl Serialize) {
        self.settings.insert(
            key.to_string(),
            serde_json::to_value(value).unwrap_or_default(),
        );
    }

    pub fn note(&mut self, key: &str, value: impl Serialize) {
        self.notes.insert(
            key.to_string(),
            serde_json::to_value(value).unwrap_or_default(),
        );
    }

    /// Adds a figure; `direct` is `(value, what it is)`.
    pub fn add(
        &mut self,
        key: &str,
        label: &str,
        unit: &str,
        value: f64,
        direct: Option<(f64, &str)>,
        target: Option<(&str, Check)>,
    ) {
        let ratio = direct.and_then(|(d, _)| (d != 0.0).then_some(value / d));
        let pass = target.map(|(_, check)| match check {
            Check::AtMost(max) => value <= max,
            Check::AtLeast(min) => value >= min,
            Check::RatioAtLeast(min) => ratio.is_some_and(|r| r >= min),
            Check::RatioAtMost(max) => ratio.is_some_and(|r| r <= max),
        });
        let figure = Figure {
            label: label.to_string(),
            unit: unit.to_string(),
            value,
            direct: direct.map(|(d, _)| d),
            direct_label: direct.map(|(_, l)| l.to_string()),
            ratio,
            target: target.map(|(t, _)| t.to_string()),
            check: target.map(|(_, c)| c),
            pass,
        };
        if self.figures.insert(key.to_string(), figure).is_none() {
            self.order.push(key.to_string());
        }
    }

    pub fn table(&self) -> String {
        let mut rows = vec![[
            "figure".to_string(),
            "value".to_string(),
            "direct".to_string(),
            "ratio".to_string(),
            "target".to_string(),
            "pass".to_string(),
        ]];
        for key in &self.order {
            let f = &self.figures[key];
            rows.push([
                f.label.clone(),
                format!("{} {}", num(f.value), f.unit),
                match (&f.direct, &f.direct_label) {
                    (Some(d), Some(l)) => format!("{} ({l})", num(*d)),
                    _ => "-".into(),
                },
                f.ratio.map_or("-".into(), |r| format!("{r:.3}")),
                f.target.clone().unwrap_or_else(|| "-".into()),
                match f.pass {
                    Some(true) => "PASS".into(),
                    Some(false) => "FAIL".into(),
                    None => "-".into(),
                },
            ]);
        }
        let mut widths = [0usize; 6];
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = self.machine.line();
        out.push('\n');
        for (i, row) in rows.iter().enumerate() {
            let line: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            out.push_str(line.join(" | ").trim_end());
            out.push('\n');
            if i == 0 {
                let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
                out.push_str(&rule.join("-|-"));
                out.push('\n');
            }
        }
        out
    }
}

/// Three significant digits or so, without exponent noise.
fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}
