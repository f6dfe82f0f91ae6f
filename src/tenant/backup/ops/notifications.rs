//! Email notifications: replaced as a whole; enabled settings must be complete.

use super::{ActionError, Applied, done, invalid};
use crate::tenant::backup::model::*;

/// Replaces the email notification settings.
pub(super) fn set(inv: &mut Inventory, n: &Notifications) -> Result<Applied, ActionError> {
    if n.enabled {
        if n.smtp_server.trim().is_empty() {
            return Err(invalid("smtp_server", "required when enabled"));
        }
        if n.smtp_port == 0 {
            return Err(invalid("smtp_port", "must not be 0"));
        }
        if !n.from.contains('@') {
            return Err(invalid("from", "not an email address"));
        }
        if n.to.is_empty() || n.to.iter().any(|t| !t.contains('@')) {
            return Err(invalid("to", "needs at least one email address"));
        }
    }
    inv.server.notifications = n.clone();
    let name = inv.server.name.clone();
    done(&name, "notifications", "edited")
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;

    #[test]
    fn notifications() {
        let mut inv = fixture();
        let good = Notifications {
            enabled: true,
            smtp_server: "smtp.example".into(),
            smtp_port: 587,
            use_tls: true,
            from: "backup@example".into(),
            to: vec!["ops@example".into()],
            on_success: false,
            on_warning: true,
            on_failure: true,
        };
        ok(
            &mut inv,
            BackupAction::SetNotifications {
                notifications: good.clone(),
            },
        );
        assert_eq!(inv.server.notifications, good);
        refused(
            &mut inv,
            BackupAction::SetNotifications {
                notifications: Notifications {
                    smtp_server: String::new(),
                    ..good.clone()
                },
            },
            "invalid",
        );
        refused(
            &mut inv,
            BackupAction::SetNotifications {
                notifications: Notifications {
                    to: vec![],
                    ..good.clone()
                },
            },
            "invalid",
        );
        // Disabled settings may be incomplete.
        ok(
            &mut inv,
            BackupAction::SetNotifications {
                notifications: Notifications::default(),
            },
        );
    }
}
