//! The fixture and shorthands the action tests share.

use super::*;

pub(super) const NOW: u64 = 1_780_000_000;
pub(super) const THUMB: &str = "0123456789ABCDEF0123456789ABCDEF01234567";

/// Local proxy-1, domain proxy-2 in pool-1, workgroup proxy-3, repo-1 local, repo-2
/// object storage, org-1, vm-1; job-1 m365 on pool-1 → repo-1, job-2 azure → repo-2,
/// job-3 m365 on proxy-1, disabled.
pub(super) fn fixture() -> Inventory {
    let mut inv = Inventory::empty("srv", NOW);
    let steps = [
        BackupAction::AddProxy {
            proxy: proxy_spec("px02", ProxyKind::Domain, None),
        },
        BackupAction::AddProxy {
            proxy: proxy_spec("wg03", ProxyKind::Workgroup, Some(THUMB)),
        },
        BackupAction::AddPool {
            pool: PoolSpec {
                name: "Pool A".into(),
                members: vec!["proxy-2".into()],
            },
        },
        BackupAction::AddRepository {
            repository: repo_spec("Local", RepositoryKind::Local),
        },
        BackupAction::AddRepository {
            repository: repo_spec("Cloud", RepositoryKind::ObjectStorage),
        },
    ];
    for step in steps {
        apply(&mut inv, &step, NOW, true).expect("fixture step");
    }
    inv.organizations.push(Organization {
        id: "org-1".into(),
        name: "contoso.onmicrosoft.com".into(),
        region: "EMEA".into(),
        mailboxes: 100,
        sites: 10,
        teams: 5,
        proxies: Vec::new(),
    });
    inv.azure.vms.push(AzureVm {
        id: "vm-1".into(),
        name: "sql01".into(),
        region: "westeurope".into(),
        disks: 2,
        provisioned_bytes: 512 << 30,
        used_bytes: 200 << 30,
        daily_change_permille: 50,
    });
    let jobs = [
        m365_spec("Mail", None, Some("pool-1")),
        JobSpec {
            name: "Azure".into(),
            kind: JobKind::AzureVm,
            source: JobSource::AzureVms(vec!["vm-1".into()]),
            proxy: None,
            pool: None,
            repository: "repo-2".into(),
            schedule: Schedule::Daily {
                hour: 22,
                minute: 0,
            },
            enabled: true,
        },
        JobSpec {
            enabled: false,
            ..m365_spec("Sites", Some("proxy-1"), None)
        },
    ];
    for job in jobs {
        apply(&mut inv, &BackupAction::AddJob { job }, NOW, true).expect("fixture job");
    }
    inv
}

pub(super) fn proxy_spec(name: &str, kind: ProxyKind, thumb: Option<&str>) -> ProxySpec {
    ProxySpec {
        name: name.into(),
        host: format!("{name}.corp.local"),
        kind,
        certificate_thumbprint: thumb.map(str::to_owned),
        max_concurrent_tasks: 16,
    }
}

pub(super) fn repo_spec(name: &str, kind: RepositoryKind) -> RepositorySpec {
    let local = kind == RepositoryKind::Local;
    RepositorySpec {
        name: name.into(),
        kind,
        path: local.then(|| "E:\\Backups".into()),
        bucket: (!local).then(|| "bucket-1".into()),
        capacity_bytes: 10 << 40,
        retention_days: 365,
    }
}

pub(super) fn m365_spec(name: &str, proxy: Option<&str>, pool: Option<&str>) -> JobSpec {
    JobSpec {
        name: name.into(),
        kind: JobKind::M365,
        source: JobSource::Organization("org-1".into()),
        proxy: proxy.map(str::to_owned),
        pool: pool.map(str::to_owned),
        repository: "repo-1".into(),
        schedule: Schedule::Daily {
            hour: 22,
            minute: 0,
        },
        enabled: true,
    }
}

pub(super) fn ok(inv: &mut Inventory, action: BackupAction) -> ActionOutcome {
    apply(inv, &action, NOW, true)
        .unwrap_or_else(|e| panic!("{action:?} refused: {e}"))
        .0
}

/// Applies an action that must be refused, checks the code and that nothing changed.
pub(super) fn refused(inv: &mut Inventory, action: BackupAction, code: &str) -> ActionError {
    let before = inv.clone();
    let err = apply(inv, &action, NOW, true).expect_err("must be refused");
    assert_eq!(err.code().as_str(), code, "{action:?}: {err}");
    assert_eq!(*inv, before, "a refused action changed the inventory");
    err
}
