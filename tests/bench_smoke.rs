//! A short smoke run of `rac bench`: every figure is in its JSON. No timing is asserted
//! (the machine is shared and noisy); the full run is `rac bench` (see docs/BENCHMARKS.md).

use std::process::Command;

const FIGURES: &[&str] = &[
    "stream1_session_gbps",
    "stream8_session_gbps",
    "stream1_gateway_gbps",
    "stream8_gateway_gbps",
    "stream1_session_tcp_service_gbps",
    "gateway_hop_stream1",
    "gateway_hop_stream8",
    "sp_cpu_secs_per_gb",
    "open_p50_ms",
    "open_p99_ms",
    "open_gateway_p50_ms",
    "open_gateway_p99_ms",
    "open_hello_after_ready_p50_ms",
    "slow_reader_kib_per_session",
    "gateway_kib_per_conn",
    "idle_kib_per_tenant",
    "heartbeat_cpu_pct_at_15000",
    "list_fetch_ms",
    "list_first_rows_ms",
    "list_wire_kib",
    "storm_secs",
    "storm_refused",
    "desktop_input_p50_ms",
    "desktop_input_p99_ms",
    "desktop_input_added_p50_ms",
    "desktop_stream_fps",
    "desktop_stream_fps_floor",
    "desktop_stream_mbit",
    "desktop_stream_max_fps",
    "desktop_stream_max_mbit",
    "desktop_cpu_ms_per_frame",
    "desktop_console_mib_each",
    "desktop_idle_cpu_pct",
    "metrics_stream1_gbps",
    "metrics_open_p50_ms",
    "scrape_ms",
    "scrape_kib",
    "audit_query_p95_ms",
    "audit_full_scan_ms",
];

#[test]
fn quick_bench_reports_every_figure_as_json() {
    let out = Command::new(env!("CARGO_BIN_EXE_rac"))
        .args(["bench", "--quick", "--json"])
        .output()
        .expect("run rac bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rac bench failed: {stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}); stderr: {stderr}"));
    let figures = json["figures"].as_object().expect("figures object");
    for key in FIGURES {
        let figure = figures
            .get(*key)
            .unwrap_or_else(|| panic!("figure {key} missing from {json:#}"));
        assert!(figure["value"].is_number(), "{key} has no value: {figure}");
        assert!(figure["label"].is_string(), "{key} has no label: {figure}");
    }
    assert_eq!(figures.len(), FIGURES.len(), "unexpected figures: {json:#}");
    for key in ["tenants", "heartbeat_secs", "stream_mib", "opens"] {
        assert!(json["settings"][key].is_number(), "setting {key} missing");
    }
}

#[test]
fn more_tenants_than_the_open_files_limit_fail_at_once_with_the_fix() {
    let soft = rac::bench::open_files_limit().expect("open-files limit");
    if soft == u64::MAX {
        eprintln!("skipped: the open-files limit is unlimited, so no tenant count exceeds it");
        return;
    }
    // The limit is inherited: the bench sees the same one as this test.
    let out = Command::new(env!("CARGO_BIN_EXE_rac"))
        .args([
            "bench",
            "--only",
            "idle",
            "--tenants",
            &(soft + 1).to_string(),
        ])
        .output()
        .expect("run rac bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must refuse: {stderr}");
    assert!(stderr.contains("open files"), "{stderr}");
    assert!(stderr.contains("ulimit -n"), "says how to fix it: {stderr}");
    assert!(
        !stderr.contains("setting up the SP"),
        "refused before starting anything: {stderr}"
    );
}

/// Processes whose executable is the bench's private copy,
/// `/tmp/rac-bench-<pid>-<random>/rac`.
fn children_of_bench(bench_pid: u32) -> Vec<String> {
    let marker = format!("rac-bench-{bench_pid}-");
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|cmd| String::from_utf8_lossy(&cmd).replace('\0', " "))
        .filter(|cmd| cmd.contains(&marker))
        .collect()
}

#[test]
fn a_stopped_bench_stops_the_processes_it_started() {
    use std::io::{BufRead, BufReader};
    let mut bench = Command::new(env!("CARGO_BIN_EXE_rac"))
        .args([
            "bench",
            "--only",
            "idle",
            "--tenants",
            "20",
            "--idle-secs",
            "600",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start rac bench");
    let pid = bench.id();
    // Once the idle tenants connect, the SP has been started (and restarted) by the bench.
    let stderr = bench.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        if line
            .expect("stderr line")
            .contains("measuring heartbeat CPU")
        {
            break;
        }
    }
    assert!(
        !children_of_bench(pid).is_empty(),
        "the SP runs from the bench's copy"
    );
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = bench.wait().expect("wait for the bench");
    assert!(!status.success(), "an interrupted bench is a failure");
    assert!(
        rest.iter().any(|l| l.contains("interrupted")),
        "says it was interrupted: {rest:?}"
    );
    let left = children_of_bench(pid);
    assert!(left.is_empty(), "processes left behind: {left:?}");
}
