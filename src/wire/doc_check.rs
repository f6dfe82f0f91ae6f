//! docs/PROTOCOL.md held to the code it describes, so a peer written from the document meets
//! the bytes `rac` sends: every error code in the error table and nothing else there, every
//! message type and field in the section that documents it, the `reject` whitelist, the frame
//! limits, and the worked examples (one frame in hex, a whole session frame by frame) decoded
//! and encoded again byte for byte. The SP's configurable defaults in the limits table are
//! checked by `tests/protocol.rs` (this layer does not see the SP's config).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use super::frame::{MAX_FRAME_LEN, MAX_HELLO_LEN, encode_frame, read_frame};
use super::protocol::{
    ApiRequest, ApiResponse, ControlMsg, ErrorCode, ErrorMsg, Hello, HelloReply, MAX_AGENT_LEN,
    MAX_SERVICES, Role, SessionMsg, Stage, TENANT_REJECT_CODES, TenantInfo, TenantPage,
    TenantStatus, Welcome, parse_control,
};

const DOC: &str = include_str!("../../docs/PROTOCOL.md");

/// Lists every [`ErrorCode`] the SP may send, and fails to compile when a code is added to the
/// enum but not here: a new code cannot be left out of this check, and so out of the document.
macro_rules! every_code {
    ($($code:ident),* $(,)?) => {
        const EVERY_CODE: &[ErrorCode] = &[$(ErrorCode::$code),*];
        #[allow(dead_code)]
        fn every_code_is_listed(code: ErrorCode) {
            match code {
                $(ErrorCode::$code)|* | ErrorCode::Other => {}
            }
        }
    };
}

every_code!(
    VersionMismatch,
    BadRequest,
    AuthFailed,
    RateLimited,
    TokenExpired,
    AccessDenied,
    UnknownTenant,
    TenantDisabled,
    TenantOffline,
    ProviderAccessDisabled,
    ServiceNotOffered,
    ServiceUnavailable,
    TenantTimeout,
    TenantRejected,
    BadNonce,
    AlreadyConnected,
    Busy,
    Overloaded,
    ShuttingDown,
    Internal,
    Replaced,
    TenantKeyChanged,
    GrantRefused,
    ConsoleKeyMissing,
);

/// A value's wire form, as a JSON value.
fn json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("serializes")
}

/// A code's name on the wire (`tenant_offline`).
fn wire_name(code: ErrorCode) -> String {
    json(&code).as_str().expect("a string").to_string()
}

fn heading_level(line: &str) -> Option<usize> {
    let hashes = line.chars().take_while(|c| *c == '#').count();
    (hashes > 0 && line[hashes..].starts_with(' ')).then_some(hashes)
}

/// The text under the heading line `heading` (`## Errors`), up to the next heading of the
/// same level or above. Lines in code blocks are not headings (`# step 2` in an example).
fn section(heading: &str) -> &'static str {
    let level = heading_level(heading).expect("a heading");
    let mut offset = 0;
    let mut start = None;
    let mut fenced = false;
    for line in DOC.split_inclusive('\n') {
        let text = line.trim_end();
        if text.starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            match start {
                Some(start) if heading_level(text).is_some_and(|l| l <= level) => {
                    return &DOC[start..offset];
                }
                None if text == heading => start = Some(offset + line.len()),
                _ => {}
            }
        }
        offset += line.len();
    }
    match start {
        Some(start) => &DOC[start..],
        None => panic!("PROTOCOL.md has no heading {heading:?}"),
    }
}

/// The bodies of the code blocks in `text` that open with ```` ```lang ````.
fn code_blocks<'a>(text: &'a str, lang: &str) -> Vec<&'a str> {
    let fence = format!("```{lang}\n");
    text.match_indices(&fence)
        .map(|(at, _)| {
            let body = &text[at + fence.len()..];
            &body[..body.find("```").expect("a closed code block")]
        })
        .collect()
}

/// The words in backquotes in `text`.
fn quoted(text: &str) -> impl Iterator<Item = &str> {
    text.split('`').skip(1).step_by(2)
}

/// The rows of every table in `text` whose header row starts with `header`, as cells.
fn table_rows<'a>(text: &'a str, header: &str) -> Vec<Vec<&'a str>> {
    let mut rows = Vec::new();
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if !line.starts_with('|') {
            inside = false;
        } else if line.starts_with(header) {
            inside = true;
        } else if inside && !line.starts_with("|---") {
            let cells = line.trim_matches('|').split(" | ").map(str::trim).collect();
            rows.push(cells);
        }
    }
    assert!(!rows.is_empty(), "no table with header {header:?}");
    rows
}

/// The backquoted names in the first cells of the tables whose header starts with `header`.
fn first_cells(text: &str, header: &str) -> BTreeSet<String> {
    table_rows(text, header)
        .iter()
        .flat_map(|row| quoted(row[0]))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_error_table_lists_every_code_and_no_other() {
    let documented = first_cells(section("## Errors"), "| code |");
    let codes: BTreeSet<String> = EVERY_CODE.iter().map(|c| wire_name(*c)).collect();
    assert_eq!(documented, codes, "the error table of PROTOCOL.md");
}

#[test]
fn every_code_the_document_tabulates_is_a_real_code() {
    for heading in [
        "## Errors",
        "## Tenant control connection (steps 2, 3, 6, 7)",
        "### Codes a tenant may send in `reject`",
    ] {
        for name in first_cells(section(heading), "| code |") {
            let code: ErrorCode = serde_json::from_value(Value::String(name.clone()))
                .expect("a string parses as a code");
            assert_ne!(code, ErrorCode::Other, "{heading}: `{name}` is not a code");
        }
    }
}

#[test]
fn the_reject_table_is_the_whitelist() {
    let documented = first_cells(
        section("### Codes a tenant may send in `reject`"),
        "| code |",
    );
    let allowed: BTreeSet<String> = TENANT_REJECT_CODES.iter().map(|c| wire_name(*c)).collect();
    assert_eq!(documented, allowed);
}

/// One value of each variant of each message enum, with the section that documents it and
/// its [`message_index`]. A variant added to an enum does not compile until `message_index`
/// names it: add its sample here at the same time.
fn samples() -> Vec<(&'static str, usize, Value)> {
    let info = TenantInfo {
        name: "acme".into(),
        tenant_key: Some("k".into()),
        ..TenantInfo::default()
    };
    let error = ErrorMsg {
        code: ErrorCode::BadRequest,
        message: "m".into(),
    };
    let welcome = Welcome {
        server: "0.1.0".into(),
        heartbeat_secs: 30,
        dead_after_secs: 95,
        gateways: vec![],
        token: Some("t".into()),
        token_expires_in_secs: Some(1),
        grant_key: Some("ab".repeat(32)),
        now: Some(1),
    };
    let control = "## Tenant control connection (steps 2, 3, 6, 7)";
    let session = "## Opening a session (steps 5 to 9)";
    let operator = "## Operator API (step 4)";
    let hello = "## The hello";
    let mut all = Vec::new();
    let mut add = |at: &'static str, message: Message<'_>, value: Value| {
        all.push((at, message_index(message), value));
    };
    for msg in [
        ControlMsg::Ping {
            seq: 1,
            rtt_us: None,
        },
        ControlMsg::Pong { seq: 1 },
        ControlMsg::OpenData {
            session_id: "s".into(),
            nonce: "n".into(),
            service: "backup".into(),
            grant: crate::wire::protocol::Grant {
                body: "{}".into(),
                signature: "00".into(),
            },
            client_hello: Some("16".into()),
        },
        ControlMsg::Reject {
            session_id: "s".into(),
            code: ErrorCode::Busy,
            reason: "r".into(),
        },
        ControlMsg::Status {
            services: vec![],
            provider_access: true,
        },
        ControlMsg::Gateways { gateways: vec![] },
        ControlMsg::Goodbye {
            code: ErrorCode::Replaced,
            reason: "r".into(),
        },
    ] {
        add(control, Message::Control(&msg), json(&msg));
    }
    for msg in [
        SessionMsg::Progress {
            stage: Stage::WaitingForTenant,
        },
        SessionMsg::Ready {
            session_id: "s".into(),
            tenant_key: Some("k".into()),
            client_hello_sent: true,
        },
        SessionMsg::Error {
            code: ErrorCode::BadNonce,
            message: "m".into(),
        },
    ] {
        add(session, Message::Session(&msg), json(&msg));
    }
    for msg in [
        ApiRequest::ListTenants {
            subscribe: true,
            compact: true,
        },
        ApiRequest::Logout,
        ApiRequest::SessionEnd {
            session_id: "s".into(),
        },
    ] {
        add(operator, Message::Request(&msg), json(&msg));
    }
    for msg in [
        ApiResponse::Tenants {
            tenants: vec![info.clone()],
        },
        ApiResponse::TenantPage(
            TenantPage::paginate(vec![info.clone()], 1)
                .next()
                .expect("a page"),
        ),
        ApiResponse::TenantChanged {
            tenant: info.clone(),
        },
        ApiResponse::TenantRemoved {
            name: "acme".into(),
        },
        ApiResponse::LoggedOut,
        ApiResponse::SessionEnded {
            session_id: "s".into(),
            reason: Some("r".into()),
        },
        ApiResponse::Error {
            code: ErrorCode::Internal,
            message: "m".into(),
        },
    ] {
        add(operator, Message::Response(&msg), json(&msg));
    }
    // The welcome's fields are in the tenant's section and the operator's (the test joins
    // the two); an error's in "Errors".
    let welcome = HelloReply::Welcome(welcome);
    add(control, Message::Reply(&welcome), json(&welcome));
    let error = HelloReply::Error(error);
    add("## Errors", Message::Reply(&error), json(&error));
    for role in [
        Role::TenantControl {
            tenant: "acme".into(),
            secret: "s".into(),
            agent: "a".into(),
            services: vec![],
            provider_access: true,
            tenant_key: "k".into(),
            early_client_hello: true,
        },
        Role::TenantData {
            tenant: "acme".into(),
            session_id: "s".into(),
            nonce: "n".into(),
        },
        Role::ConsoleSession {
            token: "t".into(),
            tenant: "acme".into(),
            service: "backup".into(),
            client_hello: Some("16".into()),
        },
        Role::Operator {
            user: "admin".into(),
            password: Some("p".into()),
            token: Some("t".into()),
            console_key: Some("k".into()),
        },
    ] {
        add(hello, Message::Role(&role), json(&Hello::new(role.clone())));
    }
    all
}

enum Message<'a> {
    Control(&'a ControlMsg),
    Session(&'a SessionMsg),
    Request(&'a ApiRequest),
    Response(&'a ApiResponse),
    Reply(&'a HelloReply),
    Role(&'a Role),
}

/// Names every variant of every message enum: a new variant does not compile until it is
/// named here, and the comment on [`samples`] says to add a sample beside it.
fn message_index(message: Message<'_>) -> usize {
    match message {
        Message::Control(msg) => match msg {
            ControlMsg::Ping { .. } => 0,
            ControlMsg::Pong { .. } => 1,
            ControlMsg::OpenData { .. } => 2,
            ControlMsg::Reject { .. } => 3,
            ControlMsg::Status { .. } => 4,
            ControlMsg::Gateways { .. } => 5,
            ControlMsg::Goodbye { .. } => 6,
        },
        Message::Session(msg) => match msg {
            SessionMsg::Progress { .. } => 10,
            SessionMsg::Ready { .. } => 11,
            SessionMsg::Error { .. } => 12,
        },
        Message::Request(msg) => match msg {
            ApiRequest::ListTenants { .. } => 20,
            ApiRequest::Logout => 21,
            ApiRequest::SessionEnd { .. } => 22,
        },
        Message::Response(msg) => match msg {
            ApiResponse::Tenants { .. } => 30,
            ApiResponse::TenantChanged { .. } => 31,
            ApiResponse::TenantRemoved { .. } => 32,
            ApiResponse::LoggedOut => 33,
            ApiResponse::Error { .. } => 34,
            ApiResponse::TenantPage(_) => 35,
            ApiResponse::SessionEnded { .. } => 36,
        },
        Message::Reply(msg) => match msg {
            HelloReply::Welcome(_) => 40,
            HelloReply::Error(_) => 41,
        },
        Message::Role(role) => match role {
            Role::TenantControl { .. } => 50,
            Role::TenantData { .. } => 51,
            Role::ConsoleSession { .. } => 52,
            Role::Operator { .. } => 53,
        },
    }
}

/// The backquoted names in the first cells of every table in `text`.
fn tabulated(text: &str) -> BTreeSet<&str> {
    text.lines()
        .map(str::trim)
        .filter(|line| line.starts_with('|') && !line.starts_with("|---"))
        .filter_map(|line| line.trim_matches('|').split(" | ").next())
        .flat_map(quoted)
        .collect()
}

#[test]
fn every_message_type_and_field_is_in_its_section() {
    let welcome_sections = [
        section("## Tenant control connection (steps 2, 3, 6, 7)"),
        section("## Operator API (step 4)"),
    ]
    .concat();
    let samples = samples();
    let variants: BTreeSet<usize> = samples.iter().map(|(_, index, _)| *index).collect();
    assert_eq!(variants.len(), samples.len(), "one sample per variant");
    for (heading, _, value) in &samples {
        let object = value.as_object().expect("an object");
        let (tag_key, tag) = ["role", "type"]
            .into_iter()
            .find_map(|key| Some((key, object.get(key)?.as_str()?)))
            .expect("a role or type");
        let text = if tag == "welcome" {
            welcome_sections.as_str()
        } else {
            section(heading)
        };
        // Types and roles have a row in their section's table; an error and a welcome are
        // described in prose and a field table.
        assert!(
            tabulated(text).contains(tag) || matches!(tag, "error" | "welcome"),
            "{heading}: no table row for `{tag}`"
        );
        let words: BTreeSet<&str> = quoted(text).collect();
        for key in object.keys().filter(|key| *key != tag_key) {
            assert!(
                words.contains(key.as_str()),
                "{heading}: the field `{key}` of `{tag}` is not documented"
            );
        }
    }
    assert!(
        welcome_sections.contains("{\"type\": \"welcome\""),
        "a welcome example"
    );
}

#[test]
fn every_stage_and_tenant_field_is_documented() {
    let opening = section("## Opening a session (steps 5 to 9)");
    let stage = json(&Stage::WaitingForTenant);
    let stage = stage.as_str().expect("a string");
    assert!(opening.contains(&format!("`{stage}`")), "stage {stage}");

    let operator = section("## Operator API (step 4)");
    // Every optional field set, so that none is left off the wire.
    let info = json(&TenantInfo {
        tenant_key: Some("k".into()),
        ..TenantInfo::default()
    });
    let fields: BTreeSet<String> = info.as_object().expect("object").keys().cloned().collect();
    let documented = first_cells(operator, "| field | online |");
    assert_eq!(documented, fields, "the TenantInfo table");
    for status in [
        TenantStatus::Online,
        TenantStatus::Offline,
        TenantStatus::Disabled,
    ] {
        assert!(
            operator.contains(&format!("`{}`", status.as_str())),
            "{status:?}"
        );
    }
}

#[test]
fn the_fixed_limits_are_the_code_s() {
    let frames = section("## Frames");
    assert_eq!(MAX_HELLO_LEN, 16 * 1024);
    assert!(frames.contains("**16 KiB** (16384 bytes of body)"));
    assert_eq!(MAX_FRAME_LEN, 16 * 1024 * 1024);
    assert!(frames.contains("**16 MiB**"));
    let limits: BTreeMap<&str, &str> = table_rows(section("## Timeouts and limits"), "| what |")
        .into_iter()
        .map(|row| (row[0], row[1]))
        .collect();
    assert_eq!(limits["the hello, and every frame to the SP"], "16 KiB");
    assert_eq!(limits["services a tenant offers"], MAX_SERVICES.to_string());
    assert_eq!(
        limits["a tenant's `agent`"],
        format!("{MAX_AGENT_LEN} printable ASCII characters")
    );
}

#[tokio::test]
async fn the_hex_frame_is_what_the_codec_writes() {
    let blocks = code_blocks(section("## Frames"), "hex");
    let [block] = blocks.as_slice() else {
        panic!("one hex block, found {}", blocks.len());
    };
    let bytes = hex::decode(block.split_whitespace().collect::<String>()).expect("hex");
    let ping = ControlMsg::Ping {
        seq: 1,
        rtt_us: None,
    };
    assert_eq!(bytes, encode_frame(&ping).expect("encode"));
    let read: Option<ControlMsg> = read_frame(&mut bytes.as_slice(), MAX_HELLO_LEN)
        .await
        .expect("a frame");
    assert_eq!(read, Some(ping));
}

/// Decodes one frame of the whole-session example as the type a peer on that connection
/// reads, and encodes it again.
fn decode_and_encode(connection: &str, to_sp: bool, nth: usize, body: &str) -> String {
    fn again<T: serde::de::DeserializeOwned + Serialize>(body: &str) -> String {
        let msg: T = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body}: {e}"));
        serde_json::to_string(&msg).expect("encode")
    }
    match (connection, to_sp, nth) {
        (_, true, 0) => again::<Hello>(body),
        ("control" | "operator", false, 0) => again::<HelloReply>(body),
        ("control", true, _) => {
            let msg = parse_control(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}"));
            serde_json::to_string(&msg).expect("encode")
        }
        ("control", false, _) => again::<ControlMsg>(body),
        ("operator", true, _) => again::<ApiRequest>(body),
        ("operator", false, _) => again::<ApiResponse>(body),
        ("console" | "data", false, _) => again::<SessionMsg>(body),
        _ => panic!("{connection} {to_sp} #{nth}: no frame of the protocol goes there"),
    }
}

#[test]
fn the_whole_session_is_what_the_code_sends() {
    let blocks = code_blocks(section("## A whole session, frame by frame"), "text");
    let [block] = blocks.as_slice() else {
        panic!("one example block, found {}", blocks.len());
    };
    let mut counts: BTreeMap<(String, bool), usize> = BTreeMap::new();
    let mut frames: Vec<(String, Value)> = Vec::new();
    for line in block
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (head, body) = line.split_at(line.find('{').expect("a JSON body"));
        let (connection, direction) = head
            .trim()
            .split_once(' ')
            .unwrap_or_else(|| panic!("{line}: `connection >|< {{...}}`"));
        let to_sp = match direction.trim() {
            ">" => true,
            "<" => false,
            other => panic!("{line}: direction {other:?}"),
        };
        let nth = counts.entry((connection.to_string(), to_sp)).or_default();
        let encoded = decode_and_encode(connection, to_sp, *nth, body);
        assert_eq!(encoded, body, "{connection}: encoded again, differs");
        *nth += 1;
        frames.push((
            connection.to_string(),
            serde_json::from_str(body).expect("JSON"),
        ));
    }
    // The example hangs together: the token, session id and nonce go where they should.
    let find = |connection: &str, field: &str| -> Vec<Value> {
        frames
            .iter()
            .filter(|(c, _)| c == connection)
            .filter_map(|(_, v)| v.get(field).cloned())
            .collect()
    };
    assert_eq!(find("operator", "token"), find("console", "token"));
    let session_id = find("control", "session_id");
    assert_eq!(session_id.len(), 1, "one open_data");
    assert_eq!(
        find("data", "session_id"),
        [&session_id[..], &session_id[..]].concat()
    );
    assert_eq!(find("console", "session_id"), session_id);
    assert_eq!(find("control", "nonce"), find("data", "nonce"));
    for connection in ["control", "operator", "console", "data"] {
        assert!(
            counts.contains_key(&(connection.to_string(), true)),
            "{connection} sends"
        );
    }
}

#[test]
fn the_json_examples_of_the_relay_protocol_decode_exactly() {
    let relay = &DOC[..DOC
        .find("\n## The tenant backup service")
        .expect("the backup section")];
    let mut checked = 0;
    for block in code_blocks(relay, "json") {
        let Ok(value) = serde_json::from_str::<Value>(block) else {
            assert!(
                block.contains("..."),
                "not JSON and not a template: {block}"
            );
            continue;
        };
        let fits = [
            serde_json::from_value::<HelloReply>(value.clone()).map(|m| json(&m)),
            serde_json::from_value::<TenantInfo>(value.clone()).map(|m| json(&m)),
            serde_json::from_value::<SessionMsg>(value.clone()).map(|m| json(&m)),
            serde_json::from_value::<ControlMsg>(value.clone()).map(|m| json(&m)),
            serde_json::from_value::<ApiResponse>(value.clone()).map(|m| json(&m)),
        ]
        .into_iter()
        .any(|decoded| decoded.is_ok_and(|again| again == value));
        assert!(fits, "no relay message is exactly {value}");
        checked += 1;
    }
    assert!(checked >= 3, "{checked} examples checked");
}
