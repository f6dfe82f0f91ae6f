//! The tenant list panel (steps 3–4 seen from the desk): every tenant of the SP, live, with
//! search, sorting by any column and filters. Only the visible rows are drawn, and the
//! filtered, sorted view is rebuilt only when the data or the query changed.
//!
//! Kept whole at ~710 lines with its tests: one panel, one file (STYLE.md), and its list
//! state and its drawing functions already stand apart in it (the state first, `_ui` below).

use eframe::egui;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use egui::{Key, Sense, Ui};
use egui_extras::{Column, TableBuilder};
use serde::{Deserialize, Serialize};

use crate::wire::protocol::{TenantInfo, TenantStatus};

use super::action::Action;
use crate::util::format;

/// The columns, in order; each one sorts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SortKey {
    #[default]
    Name,
    Status,
    Since,
    Remote,
    Services,
    Rtt,
    Sessions,
    Description,
}

const COLUMNS: [(SortKey, &str, &str); 8] = [
    (
        SortKey::Name,
        "Tenant",
        "The tenant's account name at the SP",
    ),
    (
        SortKey::Status,
        "Status",
        "online; offline (its redirector is not connected); disabled (by the SP); provider access off (the tenant refuses provider sessions)",
    ),
    (
        SortKey::Since,
        "Connected / last seen",
        "How long the tenant's control connection has been up, or when it was last seen",
    ),
    (
        SortKey::Remote,
        "Remote address",
        "Where the tenant's control connection comes from (after NAT)",
    ),
    (
        SortKey::Services,
        "Services",
        "The services the tenant offers to a console session",
    ),
    (
        SortKey::Rtt,
        "Heartbeat RTT",
        "Round trip of the last heartbeat on the control connection",
    ),
    (
        SortKey::Sessions,
        "Sessions",
        "Console sessions open to this tenant now (all operators)",
    ),
    (
        SortKey::Description,
        "Description",
        "The SP's note on the account",
    ),
];

/// How the list is sorted and filtered; persisted with the window settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ListSettings {
    pub sort: SortKey,
    pub descending: bool,
    pub online_only: bool,
    pub has_sessions: bool,
}

/// The status in words, as the list and the CSV show it.
pub fn status_words(t: &TenantInfo) -> &'static str {
    match t.status {
        TenantStatus::Online if !t.provider_access => "provider access off",
        TenantStatus::Online => "online",
        TenantStatus::Offline => "offline",
        TenantStatus::Disabled => "disabled",
    }
}

fn status_rank(t: &TenantInfo) -> u8 {
    match (t.status, t.provider_access) {
        (TenantStatus::Online, true) => 0,
        (TenantStatus::Online, false) => 1,
        (TenantStatus::Offline, _) => 2,
        (TenantStatus::Disabled, _) => 3,
    }
}

/// The tenant list: rows as the SP sent them, plus the current view of them.
#[derive(Default)]
pub struct TenantList {
    rows: Vec<TenantInfo>,
    by_name: HashMap<String, usize>,
    /// Indices into `rows`, filtered and sorted.
    view: Vec<usize>,
    dirty: bool,
    last_rebuild: Option<Instant>,
    /// The settings the view was built with.
    built_for: Option<(ListSettings, String)>,
    /// True once the first snapshot arrived.
    pub received: bool,
    pub search: String,
    pub selected: Option<String>,
    /// Set by Ctrl+F; the search field takes focus on the next frame.
    pub focus_search: bool,
    scroll_to_selected: bool,
}

/// The view is rebuilt at most this often while changes stream in.
const REBUILD_EVERY: Duration = Duration::from_millis(200);

impl TenantList {
    /// Replaces every row (the feed's snapshot).
    pub fn set_all(&mut self, tenants: Vec<TenantInfo>) {
        self.by_name = tenants
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        self.rows = tenants;
        self.received = true;
        self.dirty = true;
        // A rebuild after a snapshot is immediate (the list may have been empty).
        self.last_rebuild = None;
    }

    /// Adds the rest of a snapshot's rows as they arrive (the first page is on the screen;
    /// the view takes the rest in at its rebuild pace).
    pub fn extend(&mut self, tenants: Vec<TenantInfo>) {
        tenants.into_iter().for_each(|t| self.upsert(t));
    }

    pub fn upsert(&mut self, tenant: TenantInfo) {
        match self.by_name.get(&tenant.name) {
            Some(&i) => self.rows[i] = tenant,
            None => {
                self.by_name.insert(tenant.name.clone(), self.rows.len());
                self.rows.push(tenant);
            }
        }
        self.dirty = true;
    }

    pub fn remove(&mut self, name: &str) {
        if let Some(i) = self.by_name.remove(name) {
            self.rows.swap_remove(i);
            if let Some(moved) = self.rows.get(i) {
                self.by_name.insert(moved.name.clone(), i);
            }
            self.dirty = true;
            self.view.clear();
            self.last_rebuild = None;
        }
    }

    pub fn get(&self, name: &str) -> Option<&TenantInfo> {
        self.by_name.get(name).map(|&i| &self.rows[i])
    }

    pub fn all(&self) -> &[TenantInfo] {
        &self.rows
    }

    pub fn online(&self) -> usize {
        self.rows
            .iter()
            .filter(|t| t.status == TenantStatus::Online)
            .count()
    }

    /// The rows as shown (after filters and sort), in order.
    pub fn visible(&self) -> impl Iterator<Item = &TenantInfo> {
        self.view.iter().filter_map(|&i| self.rows.get(i))
    }

    pub fn visible_len(&self) -> usize {
        self.view.len()
    }

    /// Rebuilds the view if the data or the query changed (rate-limited for data changes).
    pub fn refresh_view(&mut self, settings: &ListSettings) {
        let query_changed = self
            .built_for
            .as_ref()
            .is_none_or(|(s, q)| s != settings || *q != self.search);
        let due = self
            .last_rebuild
            .is_none_or(|at| at.elapsed() >= REBUILD_EVERY);
        if !(query_changed || (self.dirty && due)) {
            return;
        }
        let needle = self.search.trim().to_lowercase();
        let rows = &self.rows;
        let mut view: Vec<usize> = (0..rows.len())
            .filter(|&i| {
                let t = &rows[i];
                (!settings.online_only || t.status == TenantStatus::Online)
                    && (!settings.has_sessions || t.open_sessions > 0)
                    && (needle.is_empty() || matches_search(t, &needle))
            })
            .collect();
        let now = crate::util::now_unix_secs();
        view.sort_by(|&a, &b| {
            let order = compare(&rows[a], &rows[b], settings.sort, now)
                .then_with(|| rows[a].name.cmp(&rows[b].name));
            if settings.descending {
                order.reverse()
            } else {
                order
            }
        });
        self.view = view;
        // A selection the filters hide is no selection: Enter and Connect act on what is seen.
        if self.selected_position().is_none() {
            self.selected = None;
        }
        self.dirty = false;
        self.last_rebuild = Some(Instant::now());
        self.built_for = Some((settings.clone(), self.search.clone()));
    }

    /// True while changes wait for the next rebuild (the app repaints for them).
    pub fn pending(&self) -> bool {
        self.dirty
    }

    fn selected_position(&self) -> Option<usize> {
        let name = self.selected.as_deref()?;
        self.view.iter().position(|&i| self.rows[i].name == name)
    }

    /// Moves the selection by `delta` rows (keyboard navigation).
    pub fn move_selection(&mut self, delta: isize) {
        if self.view.is_empty() {
            return;
        }
        let last = self.view.len() as isize - 1;
        let next = match self.selected_position() {
            Some(p) => (p as isize + delta).clamp(0, last),
            None if delta < 0 => last,
            None => 0,
        };
        self.selected = Some(self.rows[self.view[next as usize]].name.clone());
        self.scroll_to_selected = true;
    }

    /// The tenant list as CSV (the visible rows, in order).
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "name,status,connected_since,last_seen,remote_address,agent_version,services,heartbeat_rtt_ms,open_sessions,description\n",
        );
        for t in self.visible() {
            let fields = [
                t.name.clone(),
                status_words(t).to_string(),
                t.connected_since.map(|s| s.to_string()).unwrap_or_default(),
                t.last_seen.map(|s| s.to_string()).unwrap_or_default(),
                t.remote_addr.clone().unwrap_or_default(),
                t.agent_version.clone().unwrap_or_default(),
                t.services.join(" "),
                t.heartbeat_rtt_ms
                    .map(|r| format!("{r:.1}"))
                    .unwrap_or_default(),
                t.open_sessions.to_string(),
                t.description.clone(),
            ];
            let line: Vec<String> = fields.iter().map(|f| super::export::csv_cell(f)).collect();
            out.push_str(&line.join(","));
            out.push('\n');
        }
        out
    }
}

fn matches_search(t: &TenantInfo, needle: &str) -> bool {
    t.name.to_lowercase().contains(needle)
        || t.description.to_lowercase().contains(needle)
        || t.remote_addr.as_deref().is_some_and(|a| a.contains(needle))
}

fn compare(a: &TenantInfo, b: &TenantInfo, key: SortKey, now: u64) -> Ordering {
    match key {
        SortKey::Name => a.name.cmp(&b.name),
        SortKey::Status => status_rank(a).cmp(&status_rank(b)),
        // Longest-connected first, then most recently seen.
        SortKey::Since => since_key(a, now).cmp(&since_key(b, now)),
        SortKey::Remote => a.remote_addr.cmp(&b.remote_addr),
        SortKey::Services => a.services.cmp(&b.services),
        SortKey::Rtt => a
            .heartbeat_rtt_ms
            .unwrap_or(f64::INFINITY)
            .total_cmp(&b.heartbeat_rtt_ms.unwrap_or(f64::INFINITY)),
        SortKey::Sessions => a.open_sessions.cmp(&b.open_sessions),
        SortKey::Description => a.description.cmp(&b.description),
    }
}

fn since_key(t: &TenantInfo, now: u64) -> (u8, u64) {
    match (t.status, t.connected_since, t.last_seen) {
        (TenantStatus::Online, Some(since), _) => (0, since),
        (_, _, Some(seen)) => (1, now.saturating_sub(seen)),
        _ => (2, 0),
    }
}

fn since_text(t: &TenantInfo, now: u64) -> String {
    match (t.status, t.connected_since, t.last_seen) {
        (TenantStatus::Online, Some(since), _) => {
            format!("up {}", format::span(now.saturating_sub(since)))
        }
        (_, _, Some(seen)) => format!("seen {}", format::ago(seen, now)),
        _ => "never connected".to_string(),
    }
}

fn status_color(ui: &Ui, t: &TenantInfo) -> egui::Color32 {
    let dark = ui.visuals().dark_mode;
    match (t.status, t.provider_access) {
        (TenantStatus::Online, true) if dark => egui::Color32::from_rgb(110, 200, 120),
        (TenantStatus::Online, true) => egui::Color32::from_rgb(20, 130, 40),
        (TenantStatus::Online, false) => ui.visuals().warn_fg_color,
        (TenantStatus::Disabled, _) => ui.visuals().error_fg_color,
        (TenantStatus::Offline, _) => ui.visuals().weak_text_color(),
    }
}

/// The search field's id (Ctrl+F focuses it; tests find it).
pub fn search_id() -> egui::Id {
    egui::Id::unique("tenant-search")
}

/// Draws the toolbar and the table. Opening, exporting and the like become [`Action`]s.
pub fn tenant_list_ui(
    ui: &mut Ui,
    list: &mut TenantList,
    settings: &mut ListSettings,
    actions: &mut Vec<Action>,
) {
    toolbar_ui(ui, list, settings, actions);
    list.refresh_view(settings);
    ui.separator();

    if !list.received {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label("Waiting for the tenant list from the SP…");
        });
        return;
    }
    if list.rows.is_empty() {
        empty_state_ui(
            ui,
            "No tenants are registered at this SP yet.",
            "Add one with `rac sp tenant add NAME`.",
        );
        return;
    }
    if list.view.is_empty() {
        empty_state_ui(ui, "No tenant matches the search and filters.", "");
        if ui.button("Clear search and filters").clicked() {
            list.search.clear();
            settings.online_only = false;
            settings.has_sessions = false;
        }
        return;
    }
    keyboard_ui(ui, list, actions);
    table_ui(ui, list, settings, actions);
}

fn empty_state_ui(ui: &mut Ui, headline: &str, hint: &str) {
    ui.add_space(24.0);
    ui.vertical_centered(|ui| {
        ui.heading(headline);
        if !hint.is_empty() {
            ui.label(egui::RichText::new(hint).weak());
        }
    });
    ui.add_space(12.0);
}

fn toolbar_ui(
    ui: &mut Ui,
    list: &mut TenantList,
    settings: &mut ListSettings,
    actions: &mut Vec<Action>,
) {
    ui.horizontal(|ui| {
        let label = ui.label("Search");
        let search = ui
            .add(
                egui::TextEdit::singleline(&mut list.search)
                    .id(search_id())
                    .hint_text("name, description or address (Ctrl+F)")
                    .desired_width(260.0),
            )
            .labelled_by(label.id);
        if list.focus_search {
            search.request_focus();
            list.focus_search = false;
        }
        // Enter in the search field opens the selection, or the only match.
        if search.lost_focus() && ui.input(|i| i.key_pressed(Key::Enter)) {
            list.refresh_view(settings);
            if list.selected.is_none() && list.view.len() == 1 {
                list.selected = Some(list.rows[list.view[0]].name.clone());
            }
            if let Some(name) = list.selected.clone() {
                actions.push(Action::OpenTenant(name));
            }
        }
        if !list.search.is_empty()
            && ui
                .button("Clear")
                .on_hover_text("Clear the search")
                .clicked()
        {
            list.search.clear();
        }
        ui.separator();
        ui.checkbox(&mut settings.online_only, "Online only")
            .on_hover_text("Hide offline and disabled tenants");
        ui.checkbox(&mut settings.has_sessions, "Has sessions")
            .on_hover_text("Only tenants with console sessions open now");
        ui.separator();
        let can_open = list.selected.as_deref().and_then(|n| list.get(n)).is_some();
        let connect = ui
            .add_enabled(can_open, egui::Button::new("Connect"))
            .on_hover_text("Open the selected tenant in a new tab (or double-click, or Enter)")
            .on_disabled_hover_text("Select a tenant first");
        if connect.clicked()
            && let Some(name) = list.selected.clone()
        {
            actions.push(Action::OpenTenant(name));
        }
        if ui
            .button("Export CSV…")
            .on_hover_text("Save the tenant list as shown (filters and order) as CSV")
            .clicked()
        {
            actions.push(Action::ExportTenants);
        }
        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
            ui.label(format!(
                "{} of {} tenants",
                list.view.len(),
                list.rows.len()
            ));
        });
    });
}

fn keyboard_ui(ui: &mut Ui, list: &mut TenantList, actions: &mut Vec<Action>) {
    // Arrows and Enter belong to the list unless some other text field is being edited.
    let focus = ui.memory(|m| m.focused());
    if focus.is_some() && focus != Some(search_id()) {
        return;
    }
    let (down, up, page_down, page_up, enter) = ui.input(|i| {
        (
            i.key_pressed(Key::ArrowDown),
            i.key_pressed(Key::ArrowUp),
            i.key_pressed(Key::PageDown),
            i.key_pressed(Key::PageUp),
            i.key_pressed(Key::Enter),
        )
    });
    if down {
        list.move_selection(1);
    }
    if up {
        list.move_selection(-1);
    }
    if page_down {
        list.move_selection(20);
    }
    if page_up {
        list.move_selection(-20);
    }
    if enter
        && focus.is_none()
        && let Some(name) = list.selected.clone()
    {
        actions.push(Action::OpenTenant(name));
    }
}

fn table_ui(
    ui: &mut Ui,
    list: &mut TenantList,
    settings: &mut ListSettings,
    actions: &mut Vec<Action>,
) {
    let now = crate::util::now_unix_secs();
    let row_height = ui.text_style_height(&egui::TextStyle::Body) + 6.0;
    let mut table = TableBuilder::new(ui)
        .id_salt("tenant-table")
        .striped(true)
        .resizable(true)
        .sense(Sense::click())
        .cell_layout(egui::Layout::left_to_right(egui::Align::Center))
        .column(Column::initial(170.0).at_least(80.0).clip(true))
        .column(Column::initial(130.0).at_least(70.0))
        .column(Column::initial(150.0).at_least(80.0).clip(true))
        .column(Column::initial(140.0).at_least(80.0).clip(true))
        .column(Column::initial(110.0).at_least(60.0).clip(true))
        .column(Column::initial(100.0).at_least(60.0))
        .column(Column::initial(70.0).at_least(50.0))
        .column(Column::remainder().at_least(100.0).clip(true))
        .min_scrolled_height(0.0);
    if list.scroll_to_selected {
        list.scroll_to_selected = false;
        if let Some(p) = list.selected_position() {
            table = table.scroll_to_row(p, None);
        }
    }
    table
        .header(row_height + 4.0, |mut header| {
            for (key, title, tip) in COLUMNS {
                header.col(|ui| {
                    let active = settings.sort == key;
                    let response = ui
                        .add(egui::Button::selectable(
                            active,
                            egui::RichText::new(title).strong(),
                        ))
                        .on_hover_text(format!(
                            "{tip}.\nClick to sort by this column; again to reverse."
                        ));
                    if active {
                        super::widgets::sort_arrow_ui(ui, settings.descending);
                    }
                    if response.clicked() {
                        if active {
                            settings.descending = !settings.descending;
                        } else {
                            settings.sort = key;
                            settings.descending = false;
                        }
                    }
                });
            }
        })
        .body(|mut body| {
            // A click anywhere on a row, its text included, selects the row: labels that
            // could be selected as text would take the click for themselves.
            body.ui_mut().style_mut().interaction.selectable_labels = false;
            let view = &list.view;
            let rows = &list.rows;
            let selected = &mut list.selected;
            body.rows(row_height, view.len(), |mut row| {
                let t = &rows[view[row.index()]];
                row.set_selected(selected.as_deref() == Some(t.name.as_str()));
                row.col(|ui| {
                    ui.label(egui::RichText::new(&t.name).strong());
                });
                row.col(|ui| {
                    let color = status_color(ui, t);
                    super::widgets::dot_ui(ui, color, t.status == TenantStatus::Online);
                    ui.colored_label(color, status_words(t));
                });
                row.col(|ui| {
                    ui.label(since_text(t, now));
                });
                row.col(|ui| {
                    ui.label(t.remote_addr.as_deref().unwrap_or("—"));
                });
                row.col(|ui| {
                    ui.label(if t.services.is_empty() {
                        "—".to_string()
                    } else {
                        t.services.join(", ")
                    });
                });
                row.col(|ui| {
                    ui.label(
                        t.heartbeat_rtt_ms
                            .map(|r| format!("{r:.1} ms"))
                            .unwrap_or_else(|| "—".into()),
                    );
                });
                row.col(|ui| {
                    ui.label(t.open_sessions.to_string());
                });
                row.col(|ui| {
                    ui.label(egui::RichText::new(&t.description).weak());
                });
                let response = row.response();
                if response.clicked() {
                    *selected = Some(t.name.clone());
                }
                if response.double_clicked() {
                    *selected = Some(t.name.clone());
                    actions.push(Action::OpenTenant(t.name.clone()));
                }
            });
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str, status: TenantStatus, sessions: u32) -> TenantInfo {
        TenantInfo {
            name: name.into(),
            status,
            provider_access: true,
            open_sessions: sessions,
            description: format!("about {name}"),
            ..TenantInfo::default()
        }
    }

    #[test]
    fn the_first_page_shows_at_once_and_the_rest_joins_it() {
        let mut list = TenantList::default();
        let settings = ListSettings::default();
        list.set_all(vec![tenant("globex", TenantStatus::Online, 0)]);
        list.refresh_view(&settings);
        assert!(list.received);
        assert_eq!(list.visible_len(), 1, "the first page is on the screen");
        list.extend(vec![
            tenant("acme", TenantStatus::Online, 0),
            tenant("globex", TenantStatus::Offline, 0),
        ]);
        assert_eq!(list.all().len(), 2, "a row named again replaces its first");
        std::thread::sleep(REBUILD_EVERY);
        list.refresh_view(&settings);
        let names: Vec<_> = list.visible().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["acme", "globex"]);
    }

    #[test]
    fn search_filter_and_sort_build_the_view() {
        let mut list = TenantList::default();
        list.set_all(vec![
            tenant("globex", TenantStatus::Online, 0),
            tenant("acme", TenantStatus::Online, 2),
            tenant("initech", TenantStatus::Offline, 0),
        ]);
        let mut settings = ListSettings::default();
        list.refresh_view(&settings);
        let names: Vec<_> = list.visible().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["acme", "globex", "initech"]);

        settings.online_only = true;
        settings.descending = true;
        list.refresh_view(&settings);
        let names: Vec<_> = list.visible().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["globex", "acme"]);

        list.search = "ACM".into();
        list.refresh_view(&settings);
        assert_eq!(list.visible_len(), 1);

        settings = ListSettings {
            has_sessions: true,
            ..ListSettings::default()
        };
        list.search.clear();
        list.refresh_view(&settings);
        assert_eq!(
            list.visible().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["acme"]
        );
    }

    #[test]
    fn changes_and_removals_keep_the_index_right() {
        let mut list = TenantList::default();
        list.set_all(vec![
            tenant("a", TenantStatus::Online, 0),
            tenant("b", TenantStatus::Online, 0),
            tenant("c", TenantStatus::Online, 0),
        ]);
        list.remove("a");
        list.upsert(tenant("c", TenantStatus::Offline, 0));
        list.upsert(tenant("d", TenantStatus::Online, 0));
        assert_eq!(list.get("c").map(|t| t.status), Some(TenantStatus::Offline));
        assert!(list.get("a").is_none());
        assert_eq!(list.all().len(), 3);
        assert_eq!(list.online(), 2);
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let mut list = TenantList::default();
        let mut t = tenant("acme", TenantStatus::Online, 1);
        t.description = "north, \"big\"".into();
        t.provider_access = false;
        list.set_all(vec![t]);
        list.refresh_view(&ListSettings::default());
        let csv = list.to_csv();
        assert!(csv.contains("acme,provider access off,"), "{csv}");
        assert!(csv.ends_with("\"north, \"\"big\"\"\"\n"), "{csv}");
    }

    #[test]
    fn csv_export_neutralises_formula_cells() {
        let mut list = TenantList::default();
        let mut t = tenant("acme", TenantStatus::Online, 1);
        t.description = "=HYPERLINK(\"http://evil\",\"click\")".into();
        t.agent_version = Some("@SUM(1+1)".into());
        t.services = vec!["-cmd".into()];
        list.set_all(vec![t]);
        list.refresh_view(&ListSettings::default());
        let csv = list.to_csv();
        let row = csv.lines().nth(1).expect("one row");
        assert!(row.contains(",'@SUM(1+1),"), "{row}");
        assert!(row.contains(",'-cmd,"), "{row}");
        assert!(
            row.ends_with("\"'=HYPERLINK(\"\"http://evil\"\",\"\"click\"\")\""),
            "{row}"
        );
        for cell in row.split(',') {
            assert!(!cell.starts_with(['=', '+', '-', '@']), "{cell} in {row}");
        }
    }
}
