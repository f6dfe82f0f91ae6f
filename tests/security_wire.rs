//! Strings and frames a tenant (or anyone reaching the SP port) chooses, over real TLS on
//! loopback: hello names are validated before anything logs them, a tenant cannot answer a
//! session with an SP code or escapes of its own, and a `status` flood reaches operators as
//! a trickle. `docs/SECURITY.md` ("Gateway, logs and tenant strings") names these tests.

mod common;

use common::wire::{hand_made_config, patient_open_config};
use common::{
    PATIENCE, TestSp, echo_checked, next_control, open_in_background, pattern, quick_config,
    wait_status,
};
use rac::net::console::ConsoleError;
use rac::wire::frame::write_frame;
use rac::wire::protocol::{ApiResponse, ControlMsg, ErrorCode, Hello, Role, TenantStatus};
use serde_json::{Value, json};

/// Sends one hello on a fresh connection; the SP's first answer.
async fn hello_reply(sp: &TestSp, role: Role) -> Value {
    sp.first_frame_reply(&Hello::new(role)).await
}

fn control(tenant: &str, secret: &str, agent: &str, services: Vec<String>) -> Role {
    Role::TenantControl {
        tenant: tenant.into(),
        secret: secret.into(),
        agent: agent.into(),
        services,
        provider_access: true,
        tenant_key: common::wire::test_tenant_key(tenant),
        early_client_hello: false,
    }
}

/// A hello whose tenant, service, session id or agent string carries terminal escapes, a
/// newline or too much is `bad_request` naming the field, before any log line or presence
/// entry is made of it; the SP carries on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hellos_with_escapes_or_oversized_strings_are_bad_requests() {
    let sp = TestSp::start(quick_config()).await;
    let secret = sp.add_tenant("acme");
    let too_many: Vec<String> = (0..33).map(|i| format!("s{i}")).collect();
    let cases: Vec<(&str, Role, &str)> = vec![
        (
            "ANSI escape in the tenant",
            control("acme\u{1b}[31m", &secret, "a/1", vec![]),
            "tenant:",
        ),
        (
            "newline in the tenant",
            control("acme\nINFO forged log line", &secret, "a/1", vec![]),
            "tenant:",
        ),
        (
            "control character in the agent",
            control("acme", &secret, "agent\u{7}", vec![]),
            "agent:",
        ),
        (
            "agent over 64 characters",
            control("acme", &secret, &"a".repeat(65), vec![]),
            "agent:",
        ),
        (
            "escape in a service",
            control("acme", &secret, "a/1", vec!["echo\u{1b}[2J".into()]),
            "services:",
        ),
        (
            "33 services",
            control("acme", &secret, "a/1", too_many),
            "services:",
        ),
        (
            "escape in a data channel's tenant",
            Role::TenantData {
                tenant: "acme\u{1b}]0;x\u{7}".into(),
                session_id: "00".into(),
                nonce: "00".into(),
            },
            "tenant:",
        ),
        (
            "newline in a session id",
            Role::TenantData {
                tenant: "acme".into(),
                session_id: "00\n11".into(),
                nonce: "00".into(),
            },
            "session_id:",
        ),
        (
            "escape in a console's tenant",
            Role::ConsoleSession {
                token: "t".into(),
                tenant: "\u{1b}[1macme".into(),
                service: "echo".into(),
                client_hello: None,
            },
            "tenant:",
        ),
        (
            "newline in a console's service",
            Role::ConsoleSession {
                token: "t".into(),
                tenant: "acme".into(),
                service: "echo\r\nx".into(),
                client_hello: None,
            },
            "service:",
        ),
        (
            "a ClientHello sent ahead that is not hex",
            Role::ConsoleSession {
                token: "t".into(),
                tenant: "acme".into(),
                service: "echo".into(),
                client_hello: Some("16zz\u{1b}".into()),
            },
            "client_hello:",
        ),
        (
            "a ClientHello sent ahead that is no TLS handshake record",
            Role::ConsoleSession {
                token: "t".into(),
                tenant: "acme".into(),
                service: "echo".into(),
                client_hello: Some("474554202f20".into()),
            },
            "client_hello:",
        ),
        (
            "a ClientHello sent ahead that is too long",
            Role::ConsoleSession {
                token: "t".into(),
                tenant: "acme".into(),
                service: "echo".into(),
                client_hello: Some("16".repeat(5000)),
            },
            "client_hello:",
        ),
    ];
    for (name, role, field) in cases {
        let reply = hello_reply(&sp, role).await;
        assert_eq!(reply["type"], "error", "{name}: {reply}");
        assert_eq!(reply["code"], "bad_request", "{name}: {reply}");
        let message = reply["message"].as_str().expect("a message");
        assert!(message.contains(field), "{name}: {message:?} lacks {field}");
        assert!(
            !message.chars().any(|c| c.is_control()),
            "{name}: the message carries the raw string: {message:?}"
        );
    }

    // Valid strings at the limits still pass, and the SP serves as before.
    let limits: Vec<String> = (0..32).map(|i| format!("{i}{}", "x".repeat(62))).collect();
    let reply = hello_reply(&sp, control("acme", &secret, &"~".repeat(64), limits)).await;
    assert_eq!(reply["type"], "welcome", "{reply}");
    drop(reply);
    let _good = sp.online_tenant("good").await;
    let console = sp.console().await;
    let session = console
        .open_session("good", "echo", |_, _| {})
        .await
        .expect("a session after the bad hellos");
    echo_checked(session.stream, pattern(7, 64 * 1024)).await;
}

/// The codes a tenant may give in `reject` reach the console as sent; any other (an SP code
/// such as `token_expired`, an unknown word, not a string at all) arrives as `tenant_rejected`
/// at once, not after the open timeout, with the tenant's reason escaped, and the control
/// connection carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_answer_with_an_sp_code_or_raw_escapes() {
    let sp = TestSp::start(patient_open_config()).await;
    let mut control = sp.hand_made_tenant("acme").await;
    let console = sp.console().await;
    wait_status(&console, "acme", TenantStatus::Online).await;

    let cases: [(Value, ErrorCode); 8] = [
        (json!("token_expired"), ErrorCode::TenantRejected),
        (json!("auth_failed"), ErrorCode::TenantRejected),
        (json!("access_denied"), ErrorCode::TenantRejected),
        (json!("no_such_code\u{1b}[2J"), ErrorCode::TenantRejected),
        (json!(42), ErrorCode::TenantRejected),
        (json!("busy"), ErrorCode::Busy),
        (json!("service_not_offered"), ErrorCode::ServiceNotOffered),
        (
            json!("provider_access_disabled"),
            ErrorCode::ProviderAccessDisabled,
        ),
    ];
    for (code, expected) in cases {
        let waiting = open_in_background(&console, "acme");
        let session_id = next_control(&mut control, |m| match m {
            ControlMsg::OpenData { session_id, .. } => Some(session_id.clone()),
            _ => None,
        })
        .await;
        let reject = json!({"type": "reject", "session_id": session_id, "code": code,
            "reason": "\u{1b}[2J\u{1b}[31mSP: your token expired\nlog in at evil.example"});
        write_frame(&mut control, &reject).await.expect("reject");
        let refused = tokio::time::timeout(PATIENCE, waiting)
            .await
            .unwrap_or_else(|_| panic!("{code}: the console still waits"))
            .expect("join");
        match refused {
            Err(ConsoleError::Refused { code: got, message }) => {
                assert_eq!(got, expected, "{code}: {message}");
                assert!(
                    !message.chars().any(|c| c.is_control()),
                    "{code}: raw reason reached the console: {message:?}"
                );
                assert!(message.contains("\\u{1b}[2J"), "{code}: {message:?}");
            }
            Err(other) => panic!("{code}: expected a refusal, got {other:?}"),
            Ok(_) => panic!("{code}: expected a refusal, got a session"),
        }
    }
}

/// A thousand `status` frames in a burst reach the operator feed as at most a handful of
/// changes, and the list ends on the last one; an invalid status ends the control
/// connection with `bad_request`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_flood_is_coalesced_and_the_last_status_wins() {
    const BURST: usize = 1000;
    let sp = TestSp::start(hand_made_config()).await;
    let mut control = sp.hand_made_tenant("chatty").await;
    let console = sp.console().await;
    wait_status(&console, "chatty", TenantStatus::Online).await;
    let mut feed = console.subscribe().await.expect("feed");
    let snapshot = feed.next().await.expect("read").expect("snapshot");
    assert!(
        matches!(snapshot, ApiResponse::TenantPage(_)),
        "{snapshot:?}"
    );

    let last = vec![format!("s{}", BURST - 1)];
    for i in 0..BURST {
        let status = ControlMsg::Status {
            services: vec![format!("s{i}")],
            provider_access: i % 2 == 0,
        };
        write_frame(&mut control, &status).await.expect("status");
    }

    // Count the changes of the offered services the feed shows until it shows the last one.
    let mut shown = vec!["echo".to_string()];
    let mut changes = 0;
    tokio::time::timeout(PATIENCE, async {
        while shown != last {
            let event = feed.next().await.expect("read").expect("feed open");
            if let ApiResponse::TenantChanged { tenant } = event
                && tenant.name == "chatty"
                && tenant.services != shown
            {
                changes += 1;
                shown = tenant.services;
            }
        }
    })
    .await
    .expect("the last status reaches the feed");
    eprintln!("{BURST} status frames made {changes} feed changes");
    assert!(
        changes <= 5,
        "{BURST} status frames made {changes} feed changes"
    );
    let listed = console.tenants().await.expect("list");
    let chatty = listed.iter().find(|t| t.name == "chatty").expect("listed");
    assert_eq!(chatty.services, last);
    assert!(!chatty.provider_access, "the last status said no consent");

    // A status the hello rules would refuse ends the connection with bad_request.
    let status = ControlMsg::Status {
        services: vec!["ok".into(), "bad\u{1b}[31m".into()],
        provider_access: true,
    };
    write_frame(&mut control, &status).await.expect("status");
    let (code, reason) = next_control(&mut control, |m| match m {
        ControlMsg::Goodbye { code, reason } => Some((*code, reason.clone())),
        _ => None,
    })
    .await;
    assert_eq!(code, ErrorCode::BadRequest, "{reason}");
    assert!(reason.contains("services:"), "{reason}");
    // Until the tenant shows offline, the feed never shows the invalid status.
    tokio::time::timeout(PATIENCE, async {
        loop {
            let event = feed.next().await.expect("read").expect("feed open");
            if let ApiResponse::TenantChanged { tenant } = event
                && tenant.name == "chatty"
            {
                assert!(
                    !tenant.services.iter().any(|s| s == "ok"),
                    "an invalid status was stored: {:?}",
                    tenant.services
                );
                if tenant.status == TenantStatus::Offline {
                    return;
                }
            }
        }
    })
    .await
    .expect("the tenant goes offline");
}
