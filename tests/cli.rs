//! The scripting contract, as a user runs it: the `rac` binary in separate processes, with
//! curl and Python's HTTP server as the unmodified third-party client and server.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{PATIENCE, Pipe, Proc, RAC, eventually_blocking};

fn rac(args: &[&str]) -> Command {
    let mut cmd = Command::new(RAC);
    cmd.args(args).env_remove("RUST_LOG");
    cmd
}

/// `rac sp run` on the state dir, on a free loopback port.
fn sp_run(state_dir: &str) -> Command {
    rac(&[
        "sp",
        "run",
        "--state-dir",
        state_dir,
        "--listen",
        "127.0.0.1:0",
    ])
}

fn run_ok(cmd: &mut Command) -> String {
    let out: Output = cmd.output().expect("run rac");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

fn last_word(line: &str) -> String {
    line.split_whitespace().last().expect("word").to_string()
}

fn client_args<'a>(sp: &'a str, ca: &'a str) -> Vec<&'a str> {
    vec!["--sp", sp, "--ca", ca, "--user", "admin"]
}

#[test]
fn curl_reaches_a_tenant_web_server_through_rac_connect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("sp");
    let state_s = state.to_str().expect("utf8 path");
    let init: serde_json::Value = serde_json::from_str(&run_ok(&mut rac(&[
        "sp",
        "init",
        "--state-dir",
        state_s,
        "--json",
    ])))
    .expect("init json");
    let password = init["password"].as_str().expect("password").to_string();
    let ca = init["ca_cert"].as_str().expect("ca").to_string();
    assert_eq!(init["operator"], "admin");
    let added: serde_json::Value = serde_json::from_str(&run_ok(&mut rac(&[
        "sp",
        "tenant",
        "add",
        "acme",
        "--state-dir",
        state_s,
        "--json",
    ])))
    .expect("add json");
    assert_eq!(added["tenant"], "acme");
    let secret = added["secret"].as_str().expect("secret").to_string();

    let (_sp, line) = Proc::spawn_until(&mut sp_run(state_s), "SP listening on", Pipe::Stderr);
    let sp_addr = last_word(&line);

    // The third-party server, on the tenant's side.
    let www = dir.path().join("www");
    std::fs::create_dir(&www).expect("mkdir");
    std::fs::write(www.join("hello.txt"), "served from behind the NAT\n").expect("write");
    let (_http, line) = Proc::spawn_until(
        Command::new("python3")
            .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0"])
            .current_dir(&www),
        "Serving HTTP",
        Pipe::Stdout,
    );
    let http_port = line
        .split("port ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("port in python's banner");

    let config = dir.path().join("tenant.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"acme\"\nsecret = \"{secret}\"\nca_cert = \"{ca}\"\nendpoints = [\"{sp_addr}\"]\n\
             allow_provider_access = true\n[services]\nweb = \"127.0.0.1:{http_port}\"\n\
             [backup_service]\nstate_file = \"backup-state.json\"\ndemo_seed = 7\n"
        ),
    )
    .expect("write config");
    let (_tenant, _) = Proc::spawn_until(
        &mut rac(&["tenant", "--config", config.to_str().expect("utf8")]),
        "connected to the SP",
        Pipe::Stderr,
    );

    let args = client_args(&sp_addr, &ca);
    let list = |pw: &str| {
        let mut cmd = rac(&["tenants", "--json"]);
        cmd.args(&args).env("RAC_PASSWORD", pw);
        cmd.output().expect("run")
    };
    eventually_blocking(PATIENCE, "acme is online", || {
        let out = list(&password);
        let tenants: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (tenants[0]["status"] == "online").then_some(())
    });
    let tenants: serde_json::Value =
        serde_json::from_slice(&list(&password).stdout).expect("json list");
    let acme = &tenants[0];
    assert_eq!(acme["name"], "acme");
    assert_eq!(acme["services"], serde_json::json!(["backup", "web"]));
    assert_eq!(acme["provider_access"], true);
    assert!(acme["connected_since"].is_u64() && acme["remote_addr"].is_string());
    // The key the SP recorded for the tenant is the one `rac tenant` made beside its config.
    let key = run_ok(&mut rac(&[
        "tenant",
        "--config",
        config.to_str().expect("utf8"),
        "--print-key",
    ]));
    assert_eq!(acme["tenant_key"], key.trim(), "{acme}");

    // Wrong password: a clear message and a non-zero exit.
    let out = list("nope");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("login failed"));

    // `rac connect` checks the tenant before listening.
    let mut cmd = rac(&[
        "connect",
        "nobody",
        "--service",
        "web",
        "--listen",
        "127.0.0.1:0",
    ]);
    let out = cmd
        .args(&args)
        .env("RAC_PASSWORD", &password)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown tenant"),
        "{out:?}"
    );
    let mut cmd = rac(&[
        "connect",
        "acme",
        "--service",
        "ssh",
        "--listen",
        "127.0.0.1:0",
    ]);
    let out = cmd
        .args(&args)
        .env("RAC_PASSWORD", &password)
        .output()
        .expect("run");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not offer"),
        "{out:?}"
    );

    let mut cmd = rac(&[
        "connect",
        "acme",
        "--service",
        "web",
        "--listen",
        "127.0.0.1:0",
    ]);
    cmd.args(&args).env("RAC_PASSWORD", &password);
    let (_forward, line) = Proc::spawn_until(&mut cmd, "listening on", Pipe::Stdout);
    let local = last_word(&line);
    for _ in 0..3 {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "30",
                &format!("http://{local}/hello.txt"),
            ])
            .output()
            .expect("curl runs");
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "served from behind the NAT\n"
        );
    }

    // The tenant's own backup service, hosted by `rac tenant`, through a session.
    let mut cmd = rac(&["inspect", "acme", "--json"]);
    let inventory: serde_json::Value =
        serde_json::from_str(&run_ok(cmd.args(&args).env("RAC_PASSWORD", &password)))
            .expect("inspect json");
    for key in [
        "server",
        "proxies",
        "proxy_pools",
        "repositories",
        "organizations",
        "azure",
        "jobs",
        "sessions",
    ] {
        assert!(inventory.get(key).is_some(), "inspect --json lacks {key}");
    }
    assert!(
        inventory["server"]["name"]
            .as_str()
            .is_some_and(|n| n.contains("acme"))
    );
    assert!(
        dir.path().join("backup-state.json").exists(),
        "state file next to the config"
    );
    let job = inventory["jobs"][0]["id"]
        .as_str()
        .expect("a job")
        .to_string();
    let mut cmd = rac(&["job", "start", "acme", &job, "--json"]);
    let started: serde_json::Value =
        serde_json::from_str(&run_ok(cmd.args(&args).env("RAC_PASSWORD", &password)))
            .expect("job json");
    assert_eq!(started["job"], job.as_str());
    assert!(started["session"].is_string());
    let mut cmd = rac(&["job", "start", "acme", &job]);
    let out = cmd
        .args(&args)
        .env("RAC_PASSWORD", &password)
        .output()
        .expect("run");
    assert!(!out.status.success(), "a running job cannot start twice");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already running"),
        "{out:?}"
    );
    let mut cmd = rac(&["job", "stop", "acme", &job]);
    run_ok(cmd.args(&args).env("RAC_PASSWORD", &password));
    let mut cmd = rac(&["inspect", "acme"]);
    let summary = run_ok(cmd.args(&args).env("RAC_PASSWORD", &password));
    assert!(summary.contains("acme"), "{summary}");

    // Each curl was its own audited session (and each backup command one more).
    eventually_blocking(PATIENCE, "every session audited and closed", || {
        let out = run_ok(&mut rac(&["sp", "audit", "--state-dir", state_s, "--json"]));
        let entries: serde_json::Value = serde_json::from_str(&out).expect("audit json");
        let e = entries.as_array()?;
        let web: Vec<_> = e.iter().filter(|e| e["service"] == "web").collect();
        let backup = e.iter().filter(|e| e["service"] == "backup").count();
        (web.len() == 3
            && backup == 5
            && e.iter()
                .filter(|e| e["service"] != "account")
                .all(|e| e["outcome"] == "closed")
            && web
                .iter()
                .all(|e| e["bytes_from_tenant"].as_u64() > Some(26)))
        .then_some(())
    });

    // Disabled while running: the SP notices without a restart.
    run_ok(&mut rac(&[
        "sp",
        "tenant",
        "disable",
        "acme",
        "--state-dir",
        state_s,
    ]));
    eventually_blocking(PATIENCE, "acme is disabled", || {
        let out = list(&password);
        let tenants: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (tenants[0]["status"] == "disabled").then_some(())
    });
    let listed = run_ok(&mut rac(&[
        "sp",
        "tenant",
        "list",
        "--state-dir",
        state_s,
        "--json",
    ]));
    assert!(listed.contains("\"enabled\":false"), "{listed}");
    assert!(!listed.contains(&secret), "secrets are never printed again");
}

#[test]
fn headless_lab_prints_one_json_line_and_stops_on_sigterm() {
    let (mut lab, line) = Proc::spawn_until(
        &mut rac(&["lab", "--headless", "--tenants", "3"]),
        "{",
        Pipe::Stdout,
    );
    let ready: serde_json::Value = serde_json::from_str(&line).expect("one JSON line");
    let tenants = ready["tenants"].as_array().expect("tenants");
    assert_eq!(tenants.len(), 3);
    assert_eq!(ready["gateways"].as_array().map(Vec::len), Some(2));
    let ca = ready["ca_cert"].as_str().expect("ca");
    assert!(Path::new(ca).exists());
    let sp = ready["sp"].as_str().expect("sp");
    let user = ready["operator"]["user"].as_str().expect("user");
    let password = ready["operator"]["password"].as_str().expect("password");

    // Through a gateway, as an outside console would.
    let gateway = ready["gateways"][0].as_str().expect("gateway");
    for route in [["--sp", sp], ["--gateway", gateway]] {
        let out = rac(&["tenants", "--json", "--ca", ca, "--user", user])
            .args(route)
            .env("RAC_PASSWORD", password)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let online = list
            .as_array()
            .expect("list")
            .iter()
            .filter(|t| t["status"] == "online")
            .count();
        assert_eq!(online, 3);
    }

    lab.signal("TERM");
    let status = lab.exited();
    assert!(status.success(), "lab exits cleanly on SIGTERM: {status:?}");
}

#[test]
fn an_sp_whose_log_reader_is_gone_still_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("sp");
    let state_s = state.to_str().expect("utf8 path");
    run_ok(&mut rac(&["sp", "init", "--state-dir", state_s, "--json"]));
    let mut sp = Proc(
        sp_run(state_s)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the SP"),
    );
    // Read up to the ready line, then close the pipe: every later log line hits a dead reader
    // (as when whatever started the SP and read its log has died).
    let mut log = BufReader::new(sp.0.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("SP listening on") {
        line.clear();
        assert!(
            log.read_line(&mut line).expect("read the log") > 0,
            "no ready line"
        );
    }
    drop(log);
    sp.signal("TERM");
    sp.exited();
}
