//! Seeded generator of lab tenants: backup servers of varied size and shape, from a single
//! local proxy up to hundreds of jobs over proxy pools and Azure regions. The same seed and
//! name always give the same server.

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use super::model::*;

/// The overall shape of a generated tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The local proxy, one local repository, one organization, a few jobs.
    Small,
    /// Domain and workgroup proxies grouped in pools, several organizations.
    Pooled,
    /// Azure VM backup in one to three regions, little Microsoft 365.
    Azure,
    /// Pools and Azure together.
    Mixed,
    /// Many proxies, organizations and VMs; hundreds of jobs.
    Large,
}

impl Shape {
    /// Every shape, in the order the lab cycles through them.
    pub const ALL: [Shape; 5] = [
        Shape::Small,
        Shape::Pooled,
        Shape::Azure,
        Shape::Mixed,
        Shape::Large,
    ];
}

/// A tenant of a shape drawn from `seed`, named `tenant_name`, with times relative to
/// `now_unix_secs`. Deterministic for the same arguments.
pub fn generate(seed: u64, tenant_name: &str, now_unix_secs: u64) -> Inventory {
    let mut rng = rng_for(seed, tenant_name);
    let shape = match rng.random_range(0..10) {
        0..=2 => Shape::Small,
        3..=5 => Shape::Pooled,
        6..=7 => Shape::Azure,
        8 => Shape::Mixed,
        _ => Shape::Large,
    };
    generate_shape(&mut rng, shape, tenant_name, now_unix_secs)
}

/// The lab's `index`-th tenant: shapes cycle with the index so that neighbouring lab
/// tenants differ (index 4, 9, … are large).
pub fn generate_for_index(index: usize, tenant_name: &str, now_unix_secs: u64) -> Inventory {
    let mut rng = rng_for(index as u64, tenant_name);
    let shape = Shape::ALL[index % Shape::ALL.len()];
    generate_shape(&mut rng, shape, tenant_name, now_unix_secs)
}

/// A tenant of the given shape. Deterministic for the same arguments.
pub fn generate_with_shape(
    seed: u64,
    shape: Shape,
    tenant_name: &str,
    now_unix_secs: u64,
) -> Inventory {
    let mut rng = rng_for(seed, tenant_name);
    generate_shape(&mut rng, shape, tenant_name, now_unix_secs)
}

fn rng_for(seed: u64, tenant_name: &str) -> StdRng {
    let digest = Sha256::new()
        .chain_update(seed.to_be_bytes())
        .chain_update(tenant_name.as_bytes())
        .finalize();
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(&digest);
    StdRng::from_seed(bytes)
}

const GB: u64 = 1 << 30;
const TB: u64 = 1 << 40;

const REGIONS_365: &[&str] = &["EMEA", "North America", "APAC", "Germany", "UK"];
const AZURE_REGIONS: &[&str] = &[
    "westeurope",
    "northeurope",
    "eastus",
    "westus2",
    "uksouth",
    "germanywestcentral",
];
const ORG_WORDS: &[&str] = &[
    "contoso",
    "fabrikam",
    "northwind",
    "adatum",
    "litware",
    "tailspin",
    "wingtip",
    "proseware",
    "fourthcoffee",
    "woodgrove",
    "alpineski",
    "margie",
    "lucerne",
    "trey",
    "wideworld",
];
const VM_ROLES: &[&str] = &[
    "sql", "web", "app", "dc", "file", "erp", "crm", "build", "mail",
];

fn generate_shape(rng: &mut StdRng, shape: Shape, name: &str, now: u64) -> Inventory {
    let host = format!("vbo-{}", slug(name));
    let mut inv = Inventory::empty(&host, now);
    inv.server.version = "8.1.0.305".into();
    inv.server.os = "Windows Server 2022".into();
    inv.server.started_at_unix_secs = now - rng.random_range(3600..40 * 86_400);
    inv.server.notifications = Notifications {
        enabled: rng.random_bool(0.7),
        smtp_server: format!("smtp.{}.example", slug(name)),
        smtp_port: 587,
        use_tls: true,
        from: format!("backup@{}.example", slug(name)),
        to: vec![format!("it-ops@{}.example", slug(name))],
        on_success: false,
        on_warning: true,
        on_failure: true,
    };
    inv.proxies[0].max_concurrent_tasks = rng.random_range(4..=16);

    let (domain_proxies, workgroup_proxies, pools, orgs, regions, vms, jobs_per_org) = match shape {
        Shape::Small => (0, 0, 0, 1, 0, 0, rng.random_range(1..=3)),
        Shape::Pooled => (
            rng.random_range(2..=4),
            rng.random_range(1..=2),
            rng.random_range(1..=2),
            rng.random_range(2..=5),
            0,
            0,
            rng.random_range(1..=3),
        ),
        Shape::Azure => (
            0,
            0,
            0,
            rng.random_range(0..=1),
            rng.random_range(1..=3),
            rng.random_range(4..=20),
            1,
        ),
        Shape::Mixed => (
            rng.random_range(2..=3),
            1,
            1,
            rng.random_range(2..=4),
            rng.random_range(1..=2),
            rng.random_range(4..=12),
            2,
        ),
        Shape::Large => (
            rng.random_range(8..=14),
            rng.random_range(3..=6),
            3,
            rng.random_range(40..=70),
            rng.random_range(3..=5),
            rng.random_range(60..=120),
            rng.random_range(3..=4),
        ),
    };

    // Proxies.
    for i in 0..domain_proxies + workgroup_proxies {
        let workgroup = i >= domain_proxies;
        let id = format!("proxy-{}", inv.proxies.len() + 1);
        let short = if workgroup { "wg" } else { "px" };
        let n = inv.proxies.len();
        inv.proxies.push(Proxy {
            id,
            name: format!("{short}{n:02}"),
            host: if workgroup {
                format!(
                    "10.{}.{}.{}",
                    rng.random_range(0..=20),
                    rng.random_range(0..=255),
                    rng.random_range(2..=250)
                )
            } else {
                format!("{short}{n:02}.{}.local", slug(name))
            },
            kind: if workgroup {
                ProxyKind::Workgroup
            } else {
                ProxyKind::Domain
            },
            certificate_thumbprint: workgroup.then(|| {
                let bytes: [u8; 20] = rng.random();
                hex::encode_upper(bytes)
            }),
            state: if rng.random_bool(0.05) {
                ProxyState::Offline
            } else {
                ProxyState::Online
            },
            max_concurrent_tasks: *[8u32, 16, 32, 64].choose(rng).unwrap_or(&16),
            organizations: Vec::new(),
            pool: None,
        });
    }

    // Pools: split the non-local proxies between the pools.
    let remote: Vec<String> = inv.proxies.iter().skip(1).map(|p| p.id.clone()).collect();
    if pools > 0 && !remote.is_empty() {
        let per_pool = remote.len().div_ceil(pools + 1).max(1);
        for (i, members) in remote.chunks(per_pool).take(pools).enumerate() {
            let id = format!("pool-{}", i + 1);
            inv.proxy_pools.push(new_pool(
                &id,
                &format!("Pool {}", i + 1),
                members.to_vec(),
                &slug(name),
            ));
        }
    }

    // Repositories.
    let local_repos = if shape == Shape::Azure {
        0
    } else {
        1 + usize::from(shape == Shape::Large) * 2
    };
    let object_repos = match shape {
        Shape::Small => 0,
        Shape::Pooled => rng.random_range(1..=2),
        Shape::Azure | Shape::Mixed => rng.random_range(1..=2),
        Shape::Large => 4,
    };
    for i in 0..local_repos {
        let capacity = rng.random_range(2..=40) * TB;
        inv.repositories.push(Repository {
            id: format!("repo-{}", inv.repositories.len() + 1),
            name: format!("Local repository {}", i + 1),
            kind: RepositoryKind::Local,
            path: Some(format!("E:\\Backups\\Repo{}", i + 1)),
            bucket: None,
            capacity_bytes: capacity,
            used_bytes: (capacity as f64 * rng.random_range(0.15..0.85)) as u64,
            retention_days: *[30u32, 90, 365, 1095].choose(rng).unwrap_or(&365),
        });
    }
    for i in 0..object_repos {
        let capacity = rng.random_range(10..=200) * TB;
        inv.repositories.push(Repository {
            id: format!("repo-{}", inv.repositories.len() + 1),
            name: format!("Object storage {}", i + 1),
            kind: RepositoryKind::ObjectStorage,
            path: None,
            bucket: Some(format!("{}-backup-{}", slug(name), i + 1)),
            capacity_bytes: capacity,
            used_bytes: (capacity as f64 * rng.random_range(0.05..0.6)) as u64,
            retention_days: *[90u32, 365, 2555].choose(rng).unwrap_or(&365),
        });
    }

    // Organizations.
    for i in 0..orgs {
        let word = ORG_WORDS[i % ORG_WORDS.len()];
        let suffix = if i < ORG_WORDS.len() {
            String::new()
        } else {
            format!("{}", i / ORG_WORDS.len())
        };
        let mailboxes = match shape {
            Shape::Small => rng.random_range(10..=150),
            Shape::Large => rng.random_range(50..=8000),
            _ => rng.random_range(50..=2500),
        };
        inv.organizations.push(Organization {
            id: format!("org-{}", i + 1),
            name: format!("{word}{suffix}.onmicrosoft.com"),
            region: REGIONS_365.choose(rng).unwrap_or(&"EMEA").to_string(),
            mailboxes,
            sites: mailboxes / rng.random_range(3..=12) + 1,
            teams: mailboxes / rng.random_range(5..=20),
            proxies: Vec::new(),
        });
    }

    // Azure regions and VMs.
    let mut region_names: Vec<&str> = AZURE_REGIONS.to_vec();
    region_names.truncate(regions);
    for (r, region) in region_names.iter().enumerate() {
        let sa = format!("vbazure{}{r}", slug(name).replace('-', ""));
        let net = format!("10.{}.{}", 100 + r, rng.random_range(0..=255));
        inv.azure.regions.push(AzureRegion {
            name: region.to_string(),
            vnet: format!("vnet-backup-{region}"),
            storage_account: sa,
            workers: (0..rng.random_range(1..=3))
                .map(|w| Worker {
                    id: format!("worker-{region}-{}", w + 1),
                    vm_size: "Standard_F4s_v2".into(),
                    state: WorkerState::Deallocated,
                })
                .collect(),
            private_endpoints: [
                (EndpointKind::Blob, "blob"),
                (EndpointKind::Queue, "queue"),
                (EndpointKind::DiskAccess, "disk"),
            ]
            .into_iter()
            .enumerate()
            .map(|(e, (kind, short))| PrivateEndpoint {
                name: format!("pe-{short}-{region}"),
                kind,
                address: format!("{net}.{}", 4 + e),
                connected: true,
            })
            .collect(),
        });
    }
    if !region_names.is_empty() {
        for i in 0..vms {
            let disks = rng.random_range(1..=4);
            let provisioned =
                u64::from(disks) * *[128u64, 256, 512, 1024].choose(rng).unwrap_or(&256) * GB;
            inv.azure.vms.push(AzureVm {
                id: format!("vm-{}", i + 1),
                name: format!(
                    "{}-{}{:02}",
                    slug(name),
                    VM_ROLES.choose(rng).unwrap_or(&"app"),
                    i + 1
                ),
                region: region_names
                    .choose(rng)
                    .unwrap_or(&"westeurope")
                    .to_string(),
                disks,
                provisioned_bytes: provisioned,
                used_bytes: (provisioned as f64 * rng.random_range(0.2..0.9)) as u64,
                daily_change_permille: rng.random_range(10..120),
            });
        }
    }

    // Jobs: Microsoft 365 jobs per organization, over a pool or a proxy.
    let m365_repos: Vec<String> = inv.repositories.iter().map(|r| r.id.clone()).collect();
    let object_repo_ids: Vec<String> = inv
        .repositories
        .iter()
        .filter(|r| r.kind == RepositoryKind::ObjectStorage)
        .map(|r| r.id.clone())
        .collect();
    let online_proxies: Vec<String> = inv
        .proxies
        .iter()
        .filter(|p| p.pool.is_none())
        .map(|p| p.id.clone())
        .collect();
    let pool_ids: Vec<String> = inv.proxy_pools.iter().map(|p| p.id.clone()).collect();
    let mut job_no = 0;
    let job_kinds = ["Mailboxes", "SharePoint", "Teams", "OneDrive"];
    for org in inv.organizations.clone() {
        let org_short = org.name.split('.').next().unwrap_or("org").to_owned();
        for k in 0..jobs_per_org {
            job_no += 1;
            let use_pool = !pool_ids.is_empty() && rng.random_bool(0.7);
            let (proxy, pool) = if use_pool {
                (None, pool_ids.choose(rng).cloned())
            } else {
                (online_proxies.choose(rng).cloned(), None)
            };
            inv.jobs.push(Job {
                id: format!("job-{job_no}"),
                name: format!("{org_short} {}", job_kinds[k % job_kinds.len()]),
                kind: JobKind::M365,
                source: JobSource::Organization(org.id.clone()),
                proxy,
                pool,
                repository: m365_repos.choose(rng).cloned().unwrap_or_default(),
                schedule: random_schedule(rng),
                enabled: rng.random_bool(0.92),
                last_result: None,
                last_run_unix_secs: None,
                next_run_unix_secs: None,
            });
        }
    }
    // Azure jobs: VMs grouped a few per job.
    let vm_ids: Vec<String> = inv.azure.vms.iter().map(|v| v.id.clone()).collect();
    let mut start = 0;
    while start < vm_ids.len() {
        let n = rng.random_range(1..=4).min(vm_ids.len() - start);
        job_no += 1;
        let group = vm_ids[start..start + n].to_vec();
        let first = inv
            .azure
            .vms
            .iter()
            .find(|v| v.id == group[0])
            .map(|v| v.name.clone())
            .unwrap_or_default();
        inv.jobs.push(Job {
            id: format!("job-{job_no}"),
            name: format!(
                "Azure {first}{}",
                if n > 1 {
                    format!(" +{}", n - 1)
                } else {
                    String::new()
                }
            ),
            kind: JobKind::AzureVm,
            source: JobSource::AzureVms(group),
            proxy: None,
            pool: None,
            repository: object_repo_ids
                .choose(rng)
                .cloned()
                .or_else(|| m365_repos.first().cloned())
                .unwrap_or_default(),
            schedule: random_schedule(rng),
            enabled: rng.random_bool(0.95),
            last_result: None,
            last_run_unix_secs: None,
            next_run_unix_secs: None,
        });
        start += n;
    }

    // History: last results and a few finished sessions per job.
    let mut session_no = 0;
    for job in &mut inv.jobs {
        job.next_run_unix_secs = if job.enabled {
            job.schedule.next_after(now)
        } else {
            None
        };
        if rng.random_bool(0.1) {
            continue; // never ran yet
        }
        let result = match rng.random_range(0..100) {
            0..=84 => JobResult::Success,
            85..=94 => JobResult::Warning,
            _ => JobResult::Failed,
        };
        let ended = now - rng.random_range(600..86_400);
        job.last_result = Some(result);
        job.last_run_unix_secs = Some(ended);
        if session_no < MAX_SESSIONS / 2 {
            session_no += 1;
            let duration = rng.random_range(120..5400);
            let bytes_read = rng.random_range(GB / 4..60 * GB);
            let bytes_transferred = (bytes_read as f64 * rng.random_range(0.45..0.75)) as u64;
            let (state, severity, text) = match result {
                JobResult::Success => (
                    RunState::Success,
                    Severity::Info,
                    "Job finished successfully",
                ),
                JobResult::Warning => (
                    RunState::Warning,
                    Severity::Warning,
                    "Job finished with warnings: some items were retried",
                ),
                _ => (
                    RunState::Failed,
                    Severity::Error,
                    "Job failed: connection to the source timed out",
                ),
            };
            let started = ended - duration;
            inv.sessions.push(JobRun {
                id: format!("session-{session_no}"),
                job: job.id.clone(),
                job_name: job.name.clone(),
                state,
                stage: RunStage::Done,
                progress: 1.0,
                bytes_read,
                bytes_transferred,
                rate_bytes_per_sec: bytes_read / duration,
                started_at_unix_secs: started,
                ended_at_unix_secs: Some(ended),
                tasks: Vec::new(),
                log: vec![
                    LogLine {
                        time_unix_secs: started,
                        severity: Severity::Info,
                        text: "Job started".into(),
                    },
                    LogLine {
                        time_unix_secs: ended,
                        severity,
                        text: text.into(),
                    },
                ],
                simulated: true,
            });
            if result == JobResult::Failed {
                inv.server.alarms.push(Alarm {
                    time_unix_secs: ended,
                    severity: Severity::Error,
                    object: job.id.clone(),
                    text: format!("Job {} failed", job.name),
                });
            }
        }
    }
    inv.sessions.sort_by_key(|s| s.started_at_unix_secs);
    inv.normalize();
    inv
}

fn random_schedule(rng: &mut StdRng) -> Schedule {
    match rng.random_range(0..10) {
        0 => Schedule::Manual,
        1..=2 => Schedule::Periodically {
            every_minutes: *[30u32, 60, 240].choose(rng).unwrap_or(&60),
        },
        _ => Schedule::Daily {
            hour: rng.random_range(18..24),
            minute: *[0u8, 15, 30, 45].choose(rng).unwrap_or(&0),
        },
    }
}

/// A new pool over `members`, with the JetStream streams the members exchange work on.
pub fn new_pool(id: &str, name: &str, members: Vec<String>, bus_host: &str) -> ProxyPool {
    let consumers = members.len() as u32;
    let prefix = id.to_uppercase().replace('-', "_");
    let streams = ["TASKS", "RESULTS", "EVENTS"]
        .into_iter()
        .map(|kind| BusStream {
            name: format!("VBO_{prefix}_{kind}"),
            subjects: vec![format!("vbo.{id}.{}.>", kind.to_lowercase())],
            messages: 0,
            bytes: 0,
            consumers,
        })
        .collect();
    ProxyPool {
        id: id.to_owned(),
        name: name.to_owned(),
        members,
        bus: MessageBus {
            url: format!("nats://{bus_host}-nats:4222"),
            streams,
        },
    }
}

fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if s.is_empty() { "tenant".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_780_000_000;

    #[test]
    fn deterministic_for_a_seed() {
        for seed in 0..20 {
            assert_eq!(generate(seed, "acme", NOW), generate(seed, "acme", NOW));
        }
        assert_eq!(
            generate_for_index(3, "t3", NOW),
            generate_for_index(3, "t3", NOW)
        );
        assert_ne!(generate(1, "acme", NOW), generate(2, "acme", NOW));
    }

    #[test]
    fn shapes_vary_and_are_consistent() {
        let small = generate_with_shape(1, Shape::Small, "a", NOW);
        assert_eq!(small.proxies.len(), 1);
        assert!(small.proxy_pools.is_empty());
        let pooled = generate_with_shape(1, Shape::Pooled, "b", NOW);
        assert!(!pooled.proxy_pools.is_empty());
        assert!(
            pooled
                .proxies
                .iter()
                .any(|p| p.kind == ProxyKind::Workgroup)
        );
        assert!(pooled.proxies.iter().any(|p| p.kind == ProxyKind::Domain));
        let azure = generate_with_shape(1, Shape::Azure, "c", NOW);
        assert!(!azure.azure.vms.is_empty());
        assert!(azure.jobs.iter().any(|j| j.kind == JobKind::AzureVm));
        let large = generate_with_shape(1, Shape::Large, "d", NOW);
        assert!(large.jobs.len() >= 100, "{} jobs", large.jobs.len());

        for seed in 0..30 {
            let inv = generate(seed, "x", NOW);
            assert_valid(&inv);
        }
        for i in 0..10 {
            assert_valid(&generate_for_index(i, &format!("t{i}"), NOW));
        }
    }

    fn assert_valid(inv: &Inventory) {
        for proxy in &inv.proxies {
            if proxy.kind == ProxyKind::Workgroup {
                assert!(proxy.certificate_thumbprint.is_some());
            }
        }
        for job in &inv.jobs {
            assert!(
                inv.repositories.iter().any(|r| r.id == job.repository),
                "{job:?}"
            );
            if job.kind == JobKind::M365 {
                assert!(job.proxy.is_some() ^ job.pool.is_some(), "{job:?}");
            }
        }
        for repo in &inv.repositories {
            assert!(repo.used_bytes <= repo.capacity_bytes);
        }
        assert!(inv.sessions.len() <= MAX_SESSIONS);
    }
}
