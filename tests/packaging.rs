//! What the server packages ship: the systemd units pass `systemd-analyze verify` without a
//! warning (where it is installed; `.ci/run` installs it) and are sandboxed, the .deb's assets
//! exist, and `rac man` writes a page per command from the same parser. The .deb itself is
//! built and its contents listed by `.ci/run` (`cargo deb` after the release build).

mod common;

use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn units() -> Vec<std::path::PathBuf> {
    let mut units: Vec<_> = std::fs::read_dir(Path::new(ROOT).join("packaging/systemd"))
        .expect("packaging/systemd")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "service"))
        .collect();
    units.sort();
    units
}

#[test]
fn every_unit_is_sandboxed_and_reloads_only_where_config_reloads() {
    let units = units();
    assert_eq!(units.len(), 3, "{units:?}");
    for unit in &units {
        let text = std::fs::read_to_string(unit).expect("read");
        for key in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "CapabilityBoundingSet=",
        ] {
            assert!(text.contains(key), "{}: {key}", unit.display());
        }
        assert!(
            text.contains("DynamicUser=yes") || text.contains("User=rac"),
            "{}: its own user",
            unit.display()
        );
        // The SP (sp.toml's gateway pool) and the tenant redirector (its
        // allow_provider_access) re-read their config on SIGHUP; a gateway's config is its
        // command line, so it has nothing to reload.
        let name = unit.file_name().expect("name").to_string_lossy();
        assert_eq!(
            text.contains("ExecReload=/bin/kill -HUP $MAINPID"),
            name == "rac-tenant.service" || name == "rac-sp.service",
            "{name}"
        );
    }
}

#[test]
fn systemd_analyze_accepts_the_units() {
    let Ok(probe) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing, and .ci/run installs it"
        );
        eprintln!("systemd-analyze not installed: skipping");
        return;
    };
    assert!(probe.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    for unit in units() {
        // The units name the installed binary; verify them against the one this run built.
        let text = std::fs::read_to_string(&unit)
            .expect("read")
            .replace("/usr/bin/rac", common::RAC);
        let copy = dir.path().join(unit.file_name().expect("name"));
        std::fs::write(&copy, text).expect("write");
        let target = if copy.to_string_lossy().contains('@') {
            dir.path().join("rac-gateway@edge1.service")
        } else {
            copy.clone()
        };
        if target != copy {
            std::fs::copy(&copy, &target).expect("instance");
        }
        let out = std::process::Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&target)
            .output()
            .expect("systemd-analyze");
        // An unknown key or a value it cannot parse is only a warning (exit status 0): every
        // word it says is a finding.
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}: {}",
            unit.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_deb_assets_exist_and_rac_man_writes_the_pages() {
    let manifest = std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).expect("toml");
    let manifest: toml::Value = toml::from_str(&manifest).expect("parse");
    let assets = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .expect("assets");
    for asset in assets {
        let source = asset[0].as_str().expect("source");
        if source.starts_with("target/") {
            continue;
        }
        assert!(Path::new(ROOT).join(source).exists(), "{source}");
    }
    for unit in units() {
        let name = unit.strip_prefix(ROOT).expect("in the crate");
        assert!(
            assets
                .iter()
                .any(|a| Path::new(a[0].as_str().unwrap_or_default())
                    == name.strip_prefix("/").unwrap_or(name)),
            "{} is not in the package",
            name.display()
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(common::RAC)
        .args(["man", "--out"])
        .arg(dir.path())
        .output()
        .expect("rac man");
    assert!(out.status.success(), "{out:?}");
    let run = std::fs::read_to_string(dir.path().join("rac-sp-run.1")).expect("rac-sp-run.1");
    assert!(run.contains("admin"), "{run}");
    assert!(dir.path().join("rac.1").exists());
    assert!(dir.path().join("rac-sp-admin-token-create.1").exists());
    assert!(
        !dir.path().join("rac-man.1").exists(),
        "the hidden command has no page"
    );
}
