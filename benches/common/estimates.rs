//! Reads criterion's estimates of the current run, so a bench can print
//! like-for-like ratios after it finishes. Shared by the bench files with
//! `#[path = "common/estimates.rs"] mod estimates;`.

use std::path::PathBuf;
use std::time::SystemTime;

/// Nanoseconds per iteration of one benchmark of this run, from criterion's
/// estimates (`None` if it did not run in this process, i.e. its estimates
/// file is older than `since`).
pub fn ns_per_iter(id: &str, since: SystemTime) -> Option<f64> {
    let root = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(|dir| PathBuf::from(dir).join("criterion")))
        .unwrap_or_else(|| PathBuf::from("target/criterion"));
    let file = root.join(id).join("new").join("estimates.json");
    let modified = std::fs::metadata(&file).and_then(|m| m.modified()).ok()?;
    if modified < since {
        return None;
    }
    let estimates: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).ok()?).ok()?;
    let typical = estimates
        .get("slope")
        .filter(|slope| !slope.is_null())
        .or_else(|| estimates.get("mean"))?;
    typical.get("point_estimate")?.as_f64()
}
