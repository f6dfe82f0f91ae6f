//! What a panel asks the app to do. Panels push [`Action`]s while they draw; the app applies
//! them after the frame, so no panel needs the app and the app needs no panel's internals.

use super::engine::{Command, TabId};
use super::export::ExportClick;

#[derive(Debug)]
pub enum Action {
    OpenTenant(String),
    /// Connect the tab's desktop with the credentials its Desktop view holds.
    OpenDesktop(TabId),
    /// Forget the certificate pinned for the tab's desktop.
    ForgetDesktopPin(TabId),
    /// Show the tab's desktop alone on the whole screen, or stop.
    ToggleFullscreen(TabId),
    CloseTab(TabId),
    Retry(TabId),
    ExportTenants,
    Export {
        form: ExportClick,
        contents: String,
    },
    /// A command the app passes on to the engine unchanged.
    Engine(Command),
}
