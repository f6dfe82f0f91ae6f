//! Proxy pools: add, edit and remove; a pool's members serve no job directly.

use serde::{Deserialize, Serialize};

use super::{ActionError, Applied, check_name, check_unique, done, invalid, not_found};
use crate::tenant::backup::generator::new_pool;
use crate::tenant::backup::model::*;

/// The settings of a pool an operator gives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// Display name (unique).
    pub name: String,
    /// Proxy ids; at least one, none in another pool.
    pub members: Vec<String>,
}

/// Adds a proxy pool.
pub(super) fn add(inv: &mut Inventory, pool: &PoolSpec) -> Result<Applied, ActionError> {
    validate_pool(inv, pool, None)?;
    let id = Inventory::next_id("pool", inv.proxy_pools.iter().map(|p| p.id.as_str()));
    let host = inv.server.name.clone();
    inv.proxy_pools
        .push(new_pool(&id, &pool.name, pool.members.clone(), &host));
    inv.normalize();
    done(&id, "pool", "added")
}

/// Changes a pool's name or members.
pub(super) fn edit(inv: &mut Inventory, id: &str, pool: &PoolSpec) -> Result<Applied, ActionError> {
    inv.pool(id).ok_or_else(|| not_found("pool", id))?;
    validate_pool(inv, pool, Some(id))?;
    if let Some(job) = inv
        .jobs
        .iter()
        .find(|j| j.pool.as_deref() == Some(id) && inv.running_session(&j.id).is_some())
    {
        return Err(ActionError::JobRunning(job.id.clone()));
    }
    if let Some(p) = inv.proxy_pools.iter_mut().find(|p| p.id == *id) {
        p.name = pool.name.clone();
        p.members = pool.members.clone();
        for stream in &mut p.bus.streams {
            stream.consumers = p.members.len() as u32;
        }
    }
    inv.normalize();
    done(id, "pool", "edited")
}

/// Removes a pool no job uses.
pub(super) fn remove(inv: &mut Inventory, id: &str) -> Result<Applied, ActionError> {
    inv.pool(id).ok_or_else(|| not_found("pool", id))?;
    if let Some(job) = inv.jobs.iter().find(|j| j.pool.as_deref() == Some(id)) {
        return Err(ActionError::InUse {
            kind: "pool",
            id: id.to_owned(),
            by: format!("job '{}'", job.id),
        });
    }
    inv.proxy_pools.retain(|p| p.id != *id);
    inv.normalize();
    done(id, "pool", "removed")
}

fn validate_pool(
    inv: &Inventory,
    spec: &PoolSpec,
    except: Option<&str>,
) -> Result<(), ActionError> {
    check_name("name", &spec.name)?;
    if spec.members.is_empty() {
        return Err(invalid("members", "a pool needs at least one proxy"));
    }
    for (i, member) in spec.members.iter().enumerate() {
        if spec.members[..i].contains(member) {
            return Err(invalid("members", format!("'{member}' is listed twice")));
        }
        let proxy = inv
            .proxy(member)
            .ok_or_else(|| not_found("proxy", member))?;
        if let Some(pool) = &proxy.pool
            && Some(pool.as_str()) != except
        {
            return Err(ActionError::InUse {
                kind: "proxy",
                id: member.clone(),
                by: format!("pool '{pool}'"),
            });
        }
        if let Some(job) = inv.jobs.iter().find(|j| j.proxy.as_deref() == Some(member)) {
            return Err(ActionError::InUse {
                kind: "proxy",
                id: member.clone(),
                by: format!(
                    "job '{}' (a pool member cannot serve jobs directly)",
                    job.id
                ),
            });
        }
    }
    check_unique(
        "pool",
        &spec.name,
        inv.proxy_pools
            .iter()
            .map(|p| (p.id.as_str(), p.name.as_str())),
        except,
    )
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;

    #[test]
    fn add_edit_remove_pool() {
        let mut inv = fixture();
        let id = ok(
            &mut inv,
            BackupAction::AddPool {
                pool: PoolSpec {
                    name: "Pool B".into(),
                    members: vec!["proxy-3".into()],
                },
            },
        )
        .target;
        assert_eq!(
            inv.proxy("proxy-3").and_then(|p| p.pool.clone()),
            Some(id.clone())
        );
        let pool = inv.pool(&id).expect("pool");
        assert_eq!(pool.bus.streams.len(), 3);
        assert!(pool.bus.url.starts_with("nats://"));
        ok(
            &mut inv,
            BackupAction::EditPool {
                id: "pool-1".into(),
                pool: PoolSpec {
                    name: "Pool A".into(),
                    members: vec!["proxy-2".into()],
                },
            },
        );
        ok(&mut inv, BackupAction::RemovePool { id: id.clone() });
        assert!(inv.proxy("proxy-3").and_then(|p| p.pool.clone()).is_none());
    }

    #[test]
    fn pool_refusals() {
        let mut inv = fixture();
        let pool = |members: &[&str]| PoolSpec {
            name: "P".into(),
            members: members.iter().map(|m| m.to_string()).collect(),
        };
        refused(
            &mut inv,
            BackupAction::AddPool { pool: pool(&[]) },
            "invalid",
        );
        refused(
            &mut inv,
            BackupAction::AddPool {
                pool: pool(&["proxy-3", "proxy-3"]),
            },
            "invalid",
        );
        refused(
            &mut inv,
            BackupAction::AddPool {
                pool: pool(&["proxy-9"]),
            },
            "not_found",
        );
        refused(
            &mut inv,
            BackupAction::AddPool {
                pool: pool(&["proxy-2"]),
            },
            "in_use",
        );
        refused(
            &mut inv,
            BackupAction::AddPool {
                pool: pool(&["proxy-1"]),
            },
            "in_use",
        ); // job-3 uses it
        refused(
            &mut inv,
            BackupAction::AddPool {
                pool: PoolSpec {
                    name: "pool a".into(),
                    members: vec!["proxy-3".into()],
                },
            },
            "duplicate_name",
        );
        refused(
            &mut inv,
            BackupAction::EditPool {
                id: "pool-9".into(),
                pool: pool(&["proxy-3"]),
            },
            "not_found",
        );
        refused(
            &mut inv,
            BackupAction::RemovePool {
                id: "pool-9".into(),
            },
            "not_found",
        );
        refused(
            &mut inv,
            BackupAction::RemovePool {
                id: "pool-1".into(),
            },
            "in_use",
        );
        ok(
            &mut inv,
            BackupAction::StartJob {
                job: "job-1".into(),
            },
        );
        refused(
            &mut inv,
            BackupAction::EditPool {
                id: "pool-1".into(),
                pool: pool(&["proxy-2", "proxy-3"]),
            },
            "job_running",
        );
    }
}
