//! What every scenario ends with: one JSON object (the figures, the machine, the exact
//! parameters) written to `<out>/result.json` with the plots next to it, and printed either
//! as that JSON (`--json`) or as a table that names the files.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Map, Value, json};

/// Flags every scenario takes besides `--duration`.
#[derive(clap::Args, Debug, Clone)]
pub struct OutputArgs {
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Where to write result.json and the plots (default: target/bench/<scenario>-<unix time>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// A scenario's result.
pub struct Outcome {
    pub scenario: &'static str,
    /// The exact parameters, as JSON (`params` in the result).
    pub params: Value,
    /// The same, as one line for the table.
    pub params_line: String,
    /// Figures, keyed by name and unit (`dispatch_p99_ms`); series (arrays) included.
    pub figures: Map<String, Value>,
    /// The table's rows (after the machine and parameters lines); when empty, a generic
    /// table of the figures added with [`Outcome::shown`].
    pub table: Vec<String>,
    /// (label, key) of the figures in the generic table, in order.
    shown: Vec<(String, String)>,
    /// Plots: file name, SVG text.
    pub plots: Vec<(String, String)>,
}

impl Outcome {
    pub fn new(scenario: &'static str, params: Value, params_line: String) -> Self {
        Self {
            scenario,
            params,
            params_line,
            figures: Map::new(),
            table: Vec::new(),
            shown: Vec::new(),
            plots: Vec::new(),
        }
    }

    /// A figure that the generic table shows, with `label` (what it measures, its unit).
    pub fn shown(&mut self, label: &str, key: &str, value: impl Into<Value>) {
        self.figure(key, value);
        self.shown.push((label.to_owned(), key.to_owned()));
    }

    pub fn figure(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        self.figures.insert(key.into(), value.into());
    }

    pub fn plot(&mut self, file: &str, svg: String) {
        self.plots.push((file.to_owned(), svg));
    }
}

/// Writes the outcome to its dir and prints it. `duration` is the scenario's `--duration`,
/// `started` when the run began.
pub fn emit(o: Outcome, args: &OutputArgs, duration: Duration, started: Instant) -> Result<()> {
    let dir = match &args.out {
        Some(d) => d.clone(),
        None => default_dir(o.scenario),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut files = Vec::new();
    for (name, svg) in &o.plots {
        let path = dir.join(name);
        std::fs::write(&path, svg).with_context(|| format!("cannot write {}", path.display()))?;
        files.push(path);
    }
    let result_path = dir.join("result.json");
    let machine = crate::machine::describe();
    let table = if o.table.is_empty() {
        rows(&o.shown, &o.figures)
    } else {
        o.table
    };
    let mut obj = o.figures;
    obj.insert("scenario".into(), json!(o.scenario));
    obj.insert("machine".into(), machine.clone());
    obj.insert("params".into(), o.params);
    obj.insert("duration_s".into(), json!(duration.as_secs_f64()));
    obj.insert(
        "run_s".into(),
        json!(round3(started.elapsed().as_secs_f64())),
    );
    obj.insert("out_dir".into(), json!(dir.display().to_string()));
    let plot_names: Vec<String> = o.plots.iter().map(|(n, _)| n.clone()).collect();
    obj.insert("plots".into(), json!(plot_names));
    let obj = Value::Object(obj);
    let pretty = serde_json::to_string_pretty(&obj)?;
    std::fs::write(&result_path, pretty + "\n")
        .with_context(|| format!("cannot write {}", result_path.display()))?;
    if args.json {
        println!("{obj}");
        return Ok(());
    }
    println!("machine: {machine}");
    println!("params: {}", o.params_line);
    for row in &table {
        println!("{row}");
    }
    println!("result: {}", result_path.display());
    for f in &files {
        println!("plot:   {}", f.display());
    }
    Ok(())
}

/// `target/bench/<scenario>-<unix time>`.
fn default_dir(scenario: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Path::new("target/bench").join(format!("{scenario}-{secs}"))
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Rows "label  value  key".
fn rows(shown: &[(String, String)], figures: &Map<String, Value>) -> Vec<String> {
    let mut out = vec![format!("{:<46} {:>12}  {}", "figure", "value", "key")];
    for (label, key) in shown {
        let text = match figures.get(key) {
            None | Some(Value::Null) => "n/a".to_owned(),
            Some(Value::Number(n)) if n.is_f64() => n
                .as_f64()
                .map_or_else(|| n.to_string(), |f| format!("{f:.3}")),
            Some(v) => v.to_string(),
        };
        out.push(format!("{label:<46} {text:>12}  {key}"));
    }
    out
}
