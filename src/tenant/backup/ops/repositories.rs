//! Repositories: add, edit and remove; a repository in use keeps its kind and its data.

use serde::{Deserialize, Serialize};

use super::{ActionError, Applied, check_name, check_unique, done, invalid, not_found};
use crate::tenant::backup::model::*;

/// The settings of a repository an operator gives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositorySpec {
    /// Display name (unique).
    pub name: String,
    /// `local` (needs `path`) or `object_storage` (needs `bucket`).
    pub kind: RepositoryKind,
    /// Folder, for `local`.
    #[serde(default)]
    pub path: Option<String>,
    /// Bucket, for `object_storage`.
    #[serde(default)]
    pub bucket: Option<String>,
    /// Capacity, more than zero and not below the space in use.
    pub capacity_bytes: u64,
    /// Retention, 1..=36500 days.
    pub retention_days: u32,
}

/// Adds a repository.
pub(super) fn add(
    inv: &mut Inventory,
    repository: &RepositorySpec,
) -> Result<Applied, ActionError> {
    validate_repository(inv, repository, None)?;
    let id = Inventory::next_id("repo", inv.repositories.iter().map(|r| r.id.as_str()));
    inv.repositories.push(Repository {
        id: id.to_owned(),
        name: repository.name.clone(),
        kind: repository.kind,
        path: repository.path.clone(),
        bucket: repository.bucket.clone(),
        capacity_bytes: repository.capacity_bytes,
        used_bytes: 0,
        retention_days: repository.retention_days,
    });
    done(&id, "repository", "added")
}

/// Changes a repository's settings.
pub(super) fn edit(
    inv: &mut Inventory,
    id: &str,
    repository: &RepositorySpec,
) -> Result<Applied, ActionError> {
    let current = inv
        .repositories
        .iter()
        .find(|r| r.id == *id)
        .ok_or_else(|| not_found("repository", id))?;
    validate_repository(inv, repository, Some(id))?;
    if repository.capacity_bytes < current.used_bytes {
        return Err(invalid(
            "capacity_bytes",
            format!("below the {} bytes in use", current.used_bytes),
        ));
    }
    if current.kind != repository.kind
        && let Some(job) = inv.jobs.iter().find(|j| j.repository == *id)
    {
        return Err(ActionError::InUse {
            kind: "repository",
            id: id.to_owned(),
            by: format!("job '{}' (its kind cannot change)", job.id),
        });
    }
    if let Some(r) = inv.repositories.iter_mut().find(|r| r.id == *id) {
        r.name = repository.name.clone();
        r.kind = repository.kind;
        r.path = repository.path.clone();
        r.bucket = repository.bucket.clone();
        r.capacity_bytes = repository.capacity_bytes;
        r.retention_days = repository.retention_days;
    }
    done(id, "repository", "edited")
}

/// Removes a repository no job uses.
pub(super) fn remove(inv: &mut Inventory, id: &str) -> Result<Applied, ActionError> {
    if !inv.repositories.iter().any(|r| r.id == *id) {
        return Err(not_found("repository", id));
    }
    if let Some(job) = inv.jobs.iter().find(|j| j.repository == *id) {
        return Err(ActionError::InUse {
            kind: "repository",
            id: id.to_owned(),
            by: format!("job '{}'", job.id),
        });
    }
    inv.repositories.retain(|r| r.id != *id);
    done(id, "repository", "removed")
}

fn validate_repository(
    inv: &Inventory,
    spec: &RepositorySpec,
    except: Option<&str>,
) -> Result<(), ActionError> {
    check_name("name", &spec.name)?;
    match spec.kind {
        RepositoryKind::Local => {
            if spec.path.as_deref().is_none_or(|p| p.trim().is_empty()) {
                return Err(invalid("path", "a local repository needs a path"));
            }
            if spec.bucket.is_some() {
                return Err(invalid("bucket", "only object storage has a bucket"));
            }
        }
        RepositoryKind::ObjectStorage => {
            if spec.bucket.as_deref().is_none_or(|b| b.trim().is_empty()) {
                return Err(invalid("bucket", "object storage needs a bucket"));
            }
            if spec.path.is_some() {
                return Err(invalid("path", "only a local repository has a path"));
            }
        }
    }
    if spec.capacity_bytes == 0 {
        return Err(invalid("capacity_bytes", "must be more than 0"));
    }
    if !(1..=36_500).contains(&spec.retention_days) {
        return Err(invalid("retention_days", "must be 1..=36500"));
    }
    check_unique(
        "repository",
        &spec.name,
        inv.repositories
            .iter()
            .map(|r| (r.id.as_str(), r.name.as_str())),
        except,
    )
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;

    #[test]
    fn add_edit_remove_repository() {
        let mut inv = fixture();
        let id = ok(
            &mut inv,
            BackupAction::AddRepository {
                repository: repo_spec("Extra", RepositoryKind::ObjectStorage),
            },
        )
        .target;
        assert_eq!(id, "repo-3");
        let mut spec = repo_spec("Extra local", RepositoryKind::Local);
        spec.retention_days = 30;
        ok(
            &mut inv,
            BackupAction::EditRepository {
                id: id.clone(),
                repository: spec,
            },
        );
        let r = inv.repositories.iter().find(|r| r.id == id).expect("repo");
        assert_eq!((r.kind, r.retention_days), (RepositoryKind::Local, 30));
        ok(&mut inv, BackupAction::RemoveRepository { id: id.clone() });
        assert!(!inv.repositories.iter().any(|r| r.id == id));
    }

    #[test]
    fn repository_refusals() {
        let mut inv = fixture();
        let mut no_path = repo_spec("X", RepositoryKind::Local);
        no_path.path = None;
        refused(
            &mut inv,
            BackupAction::AddRepository {
                repository: no_path,
            },
            "invalid",
        );
        let mut no_bucket = repo_spec("X", RepositoryKind::ObjectStorage);
        no_bucket.bucket = Some(" ".into());
        refused(
            &mut inv,
            BackupAction::AddRepository {
                repository: no_bucket,
            },
            "invalid",
        );
        let mut zero = repo_spec("X", RepositoryKind::Local);
        zero.capacity_bytes = 0;
        refused(
            &mut inv,
            BackupAction::AddRepository { repository: zero },
            "invalid",
        );
        let mut forever = repo_spec("X", RepositoryKind::Local);
        forever.retention_days = 0;
        refused(
            &mut inv,
            BackupAction::AddRepository {
                repository: forever,
            },
            "invalid",
        );
        refused(
            &mut inv,
            BackupAction::AddRepository {
                repository: repo_spec("local", RepositoryKind::Local),
            },
            "duplicate_name",
        );
        refused(
            &mut inv,
            BackupAction::RemoveRepository {
                id: "repo-1".into(),
            },
            "in_use",
        );
        refused(
            &mut inv,
            BackupAction::RemoveRepository {
                id: "repo-9".into(),
            },
            "not_found",
        );
        refused(
            &mut inv,
            BackupAction::EditRepository {
                id: "repo-9".into(),
                repository: repo_spec("Y", RepositoryKind::Local),
            },
            "not_found",
        );
        refused(
            &mut inv,
            BackupAction::EditRepository {
                id: "repo-1".into(),
                repository: repo_spec("Local", RepositoryKind::ObjectStorage),
            },
            "in_use",
        );
        inv.repositories[0].used_bytes = 5 << 40;
        let mut small = repo_spec("Local", RepositoryKind::Local);
        small.capacity_bytes = 1 << 40;
        refused(
            &mut inv,
            BackupAction::EditRepository {
                id: "repo-1".into(),
                repository: small,
            },
            "invalid",
        );
    }
}
