//! Proxies: add, edit, remove, and maintenance; a proxy busy with a running job is left alone.

use serde::{Deserialize, Serialize};

use super::{ActionError, Applied, check_name, check_unique, done, invalid, not_found};
use crate::tenant::backup::model::*;

/// The settings of a proxy an operator gives (state and derived fields are the server's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySpec {
    /// Display name (unique).
    pub name: String,
    /// Host name or address.
    pub host: String,
    /// `domain` or `workgroup` (there is one `local` proxy, made by the install).
    pub kind: ProxyKind,
    /// Required for workgroup proxies: SHA-1 thumbprint, 40 hex digits.
    #[serde(default)]
    pub certificate_thumbprint: Option<String>,
    /// Tasks at once, 1..=256.
    pub max_concurrent_tasks: u32,
}

/// Adds a proxy.
pub(super) fn add(inv: &mut Inventory, proxy: &ProxySpec) -> Result<Applied, ActionError> {
    validate_proxy(inv, proxy, None)?;
    if proxy.kind == ProxyKind::Local {
        return Err(ActionError::LocalProxy);
    }
    let id = Inventory::next_id("proxy", inv.proxies.iter().map(|p| p.id.as_str()));
    inv.proxies.push(Proxy {
        id: id.to_owned(),
        name: proxy.name.clone(),
        host: proxy.host.clone(),
        kind: proxy.kind,
        certificate_thumbprint: proxy.certificate_thumbprint.clone(),
        state: ProxyState::Online,
        max_concurrent_tasks: proxy.max_concurrent_tasks,
        organizations: Vec::new(),
        pool: None,
    });
    done(&id, "proxy", "added")
}

/// Changes a proxy's settings.
pub(super) fn edit(
    inv: &mut Inventory,
    id: &str,
    proxy: &ProxySpec,
) -> Result<Applied, ActionError> {
    let current = inv.proxy(id).ok_or_else(|| not_found("proxy", id))?;
    if (current.kind == ProxyKind::Local) != (proxy.kind == ProxyKind::Local) {
        return Err(ActionError::LocalProxy);
    }
    validate_proxy(inv, proxy, Some(id))?;
    if let Some(job) = busy_job(inv, id) {
        return Err(ActionError::ProxyBusy {
            proxy: id.to_owned(),
            job,
        });
    }
    if let Some(p) = inv.proxies.iter_mut().find(|p| p.id == *id) {
        p.name = proxy.name.clone();
        p.host = proxy.host.clone();
        p.kind = proxy.kind;
        p.certificate_thumbprint = proxy.certificate_thumbprint.clone();
        p.max_concurrent_tasks = proxy.max_concurrent_tasks;
    }
    done(id, "proxy", "edited")
}

/// Removes a proxy no job or pool uses.
pub(super) fn remove(inv: &mut Inventory, id: &str) -> Result<Applied, ActionError> {
    let p = inv.proxy(id).ok_or_else(|| not_found("proxy", id))?;
    if p.kind == ProxyKind::Local {
        return Err(ActionError::LocalProxy);
    }
    if let Some(job) = inv.jobs.iter().find(|j| j.proxy.as_deref() == Some(id)) {
        return Err(ActionError::InUse {
            kind: "proxy",
            id: id.to_owned(),
            by: format!("job '{}'", job.id),
        });
    }
    if let Some(pool) = &p.pool {
        return Err(ActionError::InUse {
            kind: "proxy",
            id: id.to_owned(),
            by: format!("pool '{pool}'"),
        });
    }
    inv.proxies.retain(|p| p.id != *id);
    done(id, "proxy", "removed")
}

/// Puts a proxy into maintenance (`true`) or back online (`false`).
pub(super) fn set_maintenance(
    inv: &mut Inventory,
    id: &str,
    maintenance: bool,
) -> Result<Applied, ActionError> {
    inv.proxy(id).ok_or_else(|| not_found("proxy", id))?;
    if maintenance && let Some(job) = busy_job(inv, id) {
        return Err(ActionError::ProxyBusy {
            proxy: id.to_owned(),
            job,
        });
    }
    if let Some(p) = inv.proxies.iter_mut().find(|p| p.id == *id) {
        p.state = if maintenance {
            ProxyState::Maintenance
        } else {
            ProxyState::Online
        };
    }
    let what = if maintenance {
        "maintenance_on"
    } else {
        "maintenance_off"
    };
    done(id, "proxy", what)
}

/// A running job whose work goes to this proxy, if any.
fn busy_job(inv: &Inventory, proxy: &str) -> Option<String> {
    inv.jobs
        .iter()
        .filter(|j| inv.running_session(&j.id).is_some())
        .find(|j| inv.job_proxies(j).iter().any(|p| p == proxy))
        .map(|j| j.id.clone())
}

fn validate_proxy(
    inv: &Inventory,
    spec: &ProxySpec,
    except: Option<&str>,
) -> Result<(), ActionError> {
    check_name("name", &spec.name)?;
    check_name("host", &spec.host)?;
    if spec.host.contains(char::is_whitespace) {
        return Err(invalid("host", "must not contain spaces"));
    }
    if !(1..=256).contains(&spec.max_concurrent_tasks) {
        return Err(invalid("max_concurrent_tasks", "must be 1..=256"));
    }
    if spec.kind == ProxyKind::Workgroup {
        match &spec.certificate_thumbprint {
            None => return Err(ActionError::CertificateRequired),
            Some(t) if t.len() != 40 || !t.chars().all(|c| c.is_ascii_hexdigit()) => {
                return Err(ActionError::CertificateRequired);
            }
            Some(_) => {}
        }
    } else if spec.certificate_thumbprint.is_some() {
        return Err(invalid(
            "certificate_thumbprint",
            "only workgroup proxies use a certificate",
        ));
    }
    check_unique(
        "proxy",
        &spec.name,
        inv.proxies.iter().map(|p| (p.id.as_str(), p.name.as_str())),
        except,
    )
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;

    #[test]
    fn add_edit_remove_proxy() {
        let mut inv = fixture();
        let id = ok(
            &mut inv,
            BackupAction::AddProxy {
                proxy: proxy_spec("px04", ProxyKind::Domain, None),
            },
        )
        .target;
        assert_eq!(id, "proxy-4");
        let mut spec = proxy_spec("px04-renamed", ProxyKind::Workgroup, Some(THUMB));
        spec.max_concurrent_tasks = 32;
        ok(
            &mut inv,
            BackupAction::EditProxy {
                id: id.clone(),
                proxy: spec,
            },
        );
        let p = inv.proxy(&id).expect("proxy");
        assert_eq!(
            (p.name.as_str(), p.kind, p.max_concurrent_tasks),
            ("px04-renamed", ProxyKind::Workgroup, 32)
        );
        ok(&mut inv, BackupAction::RemoveProxy { id: id.clone() });
        assert!(inv.proxy(&id).is_none());
    }

    #[test]
    fn proxy_refusals() {
        let mut inv = fixture();
        refused(
            &mut inv,
            BackupAction::AddProxy {
                proxy: proxy_spec("wg9", ProxyKind::Workgroup, None),
            },
            "certificate_required",
        );
        refused(
            &mut inv,
            BackupAction::AddProxy {
                proxy: proxy_spec("wg9", ProxyKind::Workgroup, Some("xyz")),
            },
            "certificate_required",
        );
        refused(
            &mut inv,
            BackupAction::EditProxy {
                id: "proxy-2".into(),
                proxy: proxy_spec("px02", ProxyKind::Workgroup, None),
            },
            "certificate_required",
        );
        refused(
            &mut inv,
            BackupAction::AddProxy {
                proxy: proxy_spec("px9", ProxyKind::Domain, Some(THUMB)),
            },
            "invalid",
        );
        refused(
            &mut inv,
            BackupAction::AddProxy {
                proxy: proxy_spec("PX02", ProxyKind::Domain, None),
            },
            "duplicate_name",
        );
        refused(
            &mut inv,
            BackupAction::AddProxy {
                proxy: proxy_spec("", ProxyKind::Domain, None),
            },
            "invalid",
        );
        let mut zero = proxy_spec("px9", ProxyKind::Domain, None);
        zero.max_concurrent_tasks = 0;
        refused(&mut inv, BackupAction::AddProxy { proxy: zero }, "invalid");
        refused(
            &mut inv,
            BackupAction::AddProxy {
                proxy: proxy_spec("loc2", ProxyKind::Local, None),
            },
            "local_proxy",
        );
        refused(
            &mut inv,
            BackupAction::EditProxy {
                id: "proxy-1".into(),
                proxy: proxy_spec("x", ProxyKind::Domain, None),
            },
            "local_proxy",
        );
        refused(
            &mut inv,
            BackupAction::EditProxy {
                id: "proxy-9".into(),
                proxy: proxy_spec("x", ProxyKind::Domain, None),
            },
            "not_found",
        );
        refused(
            &mut inv,
            BackupAction::RemoveProxy {
                id: "proxy-1".into(),
            },
            "local_proxy",
        );
        refused(
            &mut inv,
            BackupAction::RemoveProxy {
                id: "proxy-2".into(),
            },
            "in_use",
        );
        refused(
            &mut inv,
            BackupAction::RemoveProxy {
                id: "proxy-9".into(),
            },
            "not_found",
        );
        // A proxy used directly by a job.
        ok(
            &mut inv,
            BackupAction::EditJob {
                id: "job-3".into(),
                job: m365_spec("Sites", Some("proxy-3"), None),
            },
        );
        refused(
            &mut inv,
            BackupAction::RemoveProxy {
                id: "proxy-3".into(),
            },
            "in_use",
        );
    }

    #[test]
    fn maintenance() {
        let mut inv = fixture();
        ok(
            &mut inv,
            BackupAction::SetProxyMaintenance {
                id: "proxy-3".into(),
                maintenance: true,
            },
        );
        assert_eq!(
            inv.proxy("proxy-3").map(|p| p.state),
            Some(ProxyState::Maintenance)
        );
        ok(
            &mut inv,
            BackupAction::SetProxyMaintenance {
                id: "proxy-3".into(),
                maintenance: false,
            },
        );
        assert_eq!(
            inv.proxy("proxy-3").map(|p| p.state),
            Some(ProxyState::Online)
        );
        refused(
            &mut inv,
            BackupAction::SetProxyMaintenance {
                id: "proxy-9".into(),
                maintenance: true,
            },
            "not_found",
        );
        ok(
            &mut inv,
            BackupAction::StartJob {
                job: "job-1".into(),
            },
        );
        refused(
            &mut inv,
            BackupAction::SetProxyMaintenance {
                id: "proxy-2".into(),
                maintenance: true,
            },
            "proxy_busy",
        );
        refused(
            &mut inv,
            BackupAction::EditProxy {
                id: "proxy-2".into(),
                proxy: proxy_spec("px02", ProxyKind::Domain, None),
            },
            "proxy_busy",
        );
    }
}
