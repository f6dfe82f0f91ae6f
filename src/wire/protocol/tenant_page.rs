//! The tenant list's compact form: pages of rows written as short JSON arrays, with times
//! counted back from the page's `now` and the repeated strings (agent versions, service sets)
//! named once per page. 15,000 tenants take about a quarter of the bytes of the
//! [`TenantInfo`] objects, and a console can show the first page while the rest arrives.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{TenantInfo, TenantStatus};

/// Rows a page holds at most: the first page of 15,000 tenants is on the screen within a
/// millisecond or two of the request.
pub const ROWS_PER_PAGE: usize = 1000;

/// One page of a tenant list snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TenantPage {
    /// Unix seconds the rows' times count back from.
    pub now: u64,
    /// The agent versions the rows name by index.
    #[serde(default)]
    pub agents: Vec<String>,
    /// The service sets the rows name by index.
    #[serde(default)]
    pub service_sets: Vec<Vec<String>>,
    #[serde(default)]
    pub rows: Vec<TenantRow>,
    /// The snapshot's first page: the list starts over with it.
    pub first: bool,
    /// More pages of the same snapshot follow.
    pub more: bool,
}

/// One tenant in a page: `[name, status, provider_access, services, connected_ago,
/// last_seen_ago, remote_addr, agent, heartbeat_rtt_us, open_sessions, description]`, with
/// the trailing elements that hold their defaults (null, 0, "") left off.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TenantRow {
    pub name: String,
    /// 0 online, 1 offline, 2 disabled.
    pub status: u8,
    pub provider_access: bool,
    /// Index into the page's `service_sets`.
    pub services: usize,
    /// Seconds before `now` the control connection was accepted.
    pub connected_ago: Option<u64>,
    /// Seconds before `now` the tenant was last seen (0 while online).
    pub last_seen_ago: Option<u64>,
    pub remote_addr: Option<String>,
    /// Index into the page's `agents`.
    pub agent: Option<usize>,
    /// The last heartbeat round trip in whole microseconds.
    pub heartbeat_rtt_us: Option<u64>,
    pub open_sessions: u32,
    pub description: String,
}

/// Why a page could not be read back into tenants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("tenant {name:?}: {what} index {index} is past the page's {len}")]
    Index {
        name: String,
        what: &'static str,
        index: usize,
        len: usize,
    },
    #[error("tenant {name:?}: unknown status {status}")]
    Status { name: String, status: u8 },
}

fn status_code(status: TenantStatus) -> u8 {
    match status {
        TenantStatus::Online => 0,
        TenantStatus::Offline => 1,
        TenantStatus::Disabled => 2,
    }
}

/// Interns values, handing out their indices in first-seen order.
struct Interner<T> {
    values: Vec<T>,
    index: HashMap<T, usize>,
}

impl<T: Clone + Eq + std::hash::Hash> Interner<T> {
    fn new() -> Self {
        Interner {
            values: Vec::new(),
            index: HashMap::new(),
        }
    }

    fn intern(&mut self, value: &T) -> usize {
        if let Some(&i) = self.index.get(value) {
            return i;
        }
        let i = self.values.len();
        self.values.push(value.clone());
        self.index.insert(value.clone(), i);
        i
    }
}

impl TenantPage {
    /// The pages of a snapshot taken at `now` (one, empty, for no tenants), each made only
    /// when it is asked for: the first can be on the wire before the rest are encoded. The
    /// rows take the tenants' strings instead of copying them.
    pub fn paginate(tenants: Vec<TenantInfo>, now: u64) -> impl Iterator<Item = TenantPage> {
        let pages = tenants.len().div_ceil(ROWS_PER_PAGE).max(1);
        let mut rest = tenants.into_iter();
        (0..pages).map(move |i| TenantPage {
            first: i == 0,
            more: i + 1 < pages,
            ..TenantPage::of(rest.by_ref().take(ROWS_PER_PAGE), now)
        })
    }

    /// One page of `tenants` (its `first` and `more` left for the caller to set).
    pub fn of(tenants: impl Iterator<Item = TenantInfo>, now: u64) -> TenantPage {
        let mut agents = Interner::new();
        let mut sets = Interner::new();
        let ago = |t: Option<u64>| t.map(|t| now.saturating_sub(t));
        let rows = tenants
            .map(|t| TenantRow {
                status: status_code(t.status),
                provider_access: t.provider_access,
                services: sets.intern(&t.services),
                connected_ago: ago(t.connected_since),
                last_seen_ago: ago(t.last_seen),
                agent: t.agent_version.as_ref().map(|a| agents.intern(a)),
                heartbeat_rtt_us: t.heartbeat_rtt_ms.map(|ms| (ms * 1000.0).round() as u64),
                open_sessions: t.open_sessions,
                name: t.name,
                remote_addr: t.remote_addr,
                description: t.description,
            })
            .collect();
        TenantPage {
            now,
            agents: agents.values,
            service_sets: sets.values,
            rows,
            first: false,
            more: false,
        }
    }

    /// The page's tenants as [`TenantInfo`] rows.
    pub fn into_tenants(self) -> Result<Vec<TenantInfo>, PageError> {
        let TenantPage {
            now,
            agents,
            service_sets,
            rows,
            ..
        } = self;
        let since = |ago: Option<u64>| ago.map(|a| now.saturating_sub(a));
        rows.into_iter()
            .map(|row| {
                let lookup = |what, index: usize, len: usize| PageError::Index {
                    name: row.name.clone(),
                    what,
                    index,
                    len,
                };
                let status = match row.status {
                    0 => TenantStatus::Online,
                    1 => TenantStatus::Offline,
                    2 => TenantStatus::Disabled,
                    status => {
                        return Err(PageError::Status {
                            name: row.name,
                            status,
                        });
                    }
                };
                let services = service_sets
                    .get(row.services)
                    .ok_or_else(|| lookup("services", row.services, service_sets.len()))?
                    .clone();
                let agent_version = match row.agent {
                    Some(i) => Some(
                        agents
                            .get(i)
                            .ok_or_else(|| lookup("agent", i, agents.len()))?
                            .clone(),
                    ),
                    None => None,
                };
                Ok(TenantInfo {
                    status,
                    description: row.description,
                    connected_since: since(row.connected_ago),
                    last_seen: since(row.last_seen_ago),
                    remote_addr: row.remote_addr,
                    agent_version,
                    services,
                    provider_access: row.provider_access,
                    heartbeat_rtt_ms: row.heartbeat_rtt_us.map(|us| us as f64 / 1000.0),
                    open_sessions: row.open_sessions,
                    name: row.name,
                    tenant_key: None,
                })
            })
            .collect()
    }
}

/// The elements of a row, for writing.
enum Cell<'a> {
    Str(&'a str),
    Num(u64),
    Opt(Option<u64>),
    OptStr(Option<&'a str>),
}

impl Cell<'_> {
    fn is_default(&self) -> bool {
        match self {
            Cell::Str(s) => s.is_empty(),
            Cell::Num(n) => *n == 0,
            Cell::Opt(o) => o.is_none(),
            Cell::OptStr(o) => o.is_none(),
        }
    }
}

impl Serialize for Cell<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Cell::Str(v) => s.serialize_str(v),
            Cell::Num(v) => s.serialize_u64(*v),
            Cell::Opt(v) => v.serialize(s),
            Cell::OptStr(v) => v.serialize(s),
        }
    }
}

impl Serialize for TenantRow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let cells = [
            Cell::Str(&self.name),
            Cell::Num(self.status.into()),
            Cell::Num(self.provider_access.into()),
            Cell::Num(self.services as u64),
            Cell::Opt(self.connected_ago),
            Cell::Opt(self.last_seen_ago),
            Cell::OptStr(self.remote_addr.as_deref()),
            Cell::Opt(self.agent.map(|a| a as u64)),
            Cell::Opt(self.heartbeat_rtt_us),
            Cell::Num(self.open_sessions.into()),
            Cell::Str(&self.description),
        ];
        // The name always; then up to the last element that is not its default.
        let len = 1 + cells[1..]
            .iter()
            .rposition(|c| !c.is_default())
            .map_or(0, |i| i + 1);
        let mut seq = s.serialize_seq(Some(len))?;
        for cell in &cells[..len] {
            seq.serialize_element(cell)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for TenantRow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RowVisitor;

        impl<'de> Visitor<'de> for RowVisitor {
            type Value = TenantRow;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a tenant row: an array starting with the tenant's name")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TenantRow, A::Error> {
                let name: String = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                // Each later element may be left off (its default) or null.
                let mut row = TenantRow {
                    name,
                    ..TenantRow::default()
                };
                macro_rules! next {
                    ($field:expr) => {
                        match seq.next_element()? {
                            Some(Some(v)) => $field = v,
                            Some(None) => {}
                            None => return Ok(row),
                        }
                    };
                }
                let mut access = 0u8;
                next!(row.status);
                next!(access);
                row.provider_access = access != 0;
                next!(row.services);
                next!(row.connected_ago);
                next!(row.last_seen_ago);
                next!(row.remote_addr);
                next!(row.agent);
                next!(row.heartbeat_rtt_us);
                next!(row.open_sessions);
                next!(row.description);
                // A later version's columns.
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(row)
            }
        }

        d.deserialize_seq(RowVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn online(n: usize) -> TenantInfo {
        TenantInfo {
            name: format!("tenant-{n:05}"),
            status: TenantStatus::Online,
            description: String::new(),
            connected_since: Some(1_795_000_000 - n as u64),
            last_seen: Some(1_795_000_420),
            remote_addr: Some(format!("127.0.0.{}:{}", 2 + n % 64, 40000 + n)),
            agent_version: Some("rac-tenant/0.1.0".into()),
            services: vec!["backup".into(), "echo".into()],
            provider_access: true,
            heartbeat_rtt_ms: Some(0.137),
            open_sessions: (n % 3) as u32,
            tenant_key: None,
        }
    }

    #[test]
    fn pages_read_back_as_the_tenants_they_were_made_of() {
        let mut tenants: Vec<TenantInfo> = (0..2500).map(online).collect();
        tenants.push(TenantInfo {
            name: "gone".into(),
            status: TenantStatus::Offline,
            last_seen: Some(1_794_999_000),
            ..TenantInfo::default()
        });
        tenants.push(TenantInfo {
            name: "never".into(),
            status: TenantStatus::Disabled,
            description: "Acme \"old\" Corp".into(),
            ..TenantInfo::default()
        });
        let pages: Vec<TenantPage> = TenantPage::paginate(tenants.clone(), 1_795_000_420).collect();
        assert_eq!(pages.len(), 3);
        assert_eq!(
            pages.iter().map(|p| (p.first, p.more)).collect::<Vec<_>>(),
            [(true, true), (false, true), (false, false)]
        );
        let mut back = Vec::new();
        for page in pages {
            let wire = serde_json::to_string(&page).expect("encode");
            let page: TenantPage = serde_json::from_str(&wire).expect("decode");
            back.extend(page.into_tenants().expect("indices in range"));
        }
        assert_eq!(back, tenants);
    }

    #[test]
    fn rows_leave_off_their_trailing_defaults() {
        let page = TenantPage::paginate(
            vec![TenantInfo {
                name: "gone".into(),
                status: TenantStatus::Offline,
                last_seen: Some(100),
                ..TenantInfo::default()
            }],
            160,
        )
        .next()
        .expect("one page");
        let wire = serde_json::to_string(&page.rows).expect("encode");
        assert_eq!(wire, r#"[["gone",1,0,0,null,60]]"#);
        let online = serde_json::to_string(
            &TenantPage::paginate(vec![online(7)], 1_795_000_420)
                .next()
                .expect("one page"),
        )
        .expect("encode");
        assert!(
            online.contains(r#"["tenant-00007",0,1,0,427,0,"127.0.0.9:40007",0,137,1]"#),
            "{online}"
        );
    }

    #[test]
    fn a_later_versions_columns_are_ignored_and_bad_indices_refused() {
        let page: TenantPage = serde_json::from_str(
            r#"{"now":10,"agents":[],"service_sets":[[]],"rows":[["a",0,1,0,null,0,null,null,null,0,"",42,"x"]],"first":true,"more":false}"#,
        )
        .expect("extra columns are fine");
        assert_eq!(page.rows[0].name, "a");
        let bad: TenantPage = serde_json::from_str(
            r#"{"now":10,"service_sets":[],"rows":[["a",0,1,3]],"first":true,"more":false}"#,
        )
        .expect("well-formed");
        assert!(matches!(
            bad.into_tenants(),
            Err(PageError::Index {
                what: "services",
                index: 3,
                ..
            })
        ));
        assert!(
            serde_json::from_str::<TenantRow>("[]").is_err(),
            "a row names its tenant"
        );
    }
}
