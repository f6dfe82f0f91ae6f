//! Codec round trips, by property: every message type of the relay protocol survives
//! encode → frame → decode unchanged, frames concatenate and split correctly, and a cut-off or
//! oversized frame is an error, never a wrong message.

use proptest::prelude::*;
use rac::net::cloud_redirector::parse_hello;
use rac::wire::frame::{FrameError, MAX_FRAME_LEN, MAX_HELLO_LEN, encode_frame, read_frame};
use rac::wire::protocol::{
    ApiRequest, ApiResponse, ControlMsg, ErrorCode, ErrorMsg, Hello, HelloReply, Role, SessionMsg,
    Stage, TenantInfo, TenantPage, TenantStatus, Welcome,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Any text, including quotes, backslashes, control characters and non-ASCII.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_.-]{0,24}",
        any::<String>(),
        Just("\"\\\u{0}\u{1f}\u{7f}é€😀".to_string()),
    ]
}

/// A name by the SP's rule (tenant, service, session id): what a valid hello carries.
fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}"
}

/// A valid agent string: up to 64 printable ASCII characters.
fn agent() -> impl Strategy<Value = String> {
    "[ -~]{0,64}"
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(vec![
        ErrorCode::VersionMismatch,
        ErrorCode::BadRequest,
        ErrorCode::AuthFailed,
        ErrorCode::RateLimited,
        ErrorCode::TokenExpired,
        ErrorCode::AccessDenied,
        ErrorCode::UnknownTenant,
        ErrorCode::TenantDisabled,
        ErrorCode::TenantOffline,
        ErrorCode::ProviderAccessDisabled,
        ErrorCode::ServiceNotOffered,
        ErrorCode::ServiceUnavailable,
        ErrorCode::TenantTimeout,
        ErrorCode::TenantRejected,
        ErrorCode::BadNonce,
        ErrorCode::AlreadyConnected,
        ErrorCode::Busy,
        ErrorCode::Overloaded,
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
    ])
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        (
            name(),
            text(),
            agent(),
            prop::collection::vec(name(), 0..4),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(
                |(tenant, secret, agent, services, provider_access, early_client_hello)| {
                    Role::TenantControl {
                        tenant,
                        secret,
                        agent,
                        services,
                        provider_access,
                        tenant_key: rac::wire::format_fingerprint(&[9; 32]),
                        early_client_hello,
                    }
                }
            ),
        (name(), name(), text()).prop_map(|(tenant, session_id, nonce)| Role::TenantData {
            tenant,
            session_id,
            nonce
        }),
        (
            text(),
            name(),
            name(),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..64))
        )
            .prop_map(|(token, tenant, service, tail)| Role::ConsoleSession {
                token,
                tenant,
                service,
                // A handshake record's first bytes, then anything: the SP checks only that.
                client_hello: tail.map(|tail| format!("1603010000{}", hex::encode(tail))),
            }),
        (text(), prop::option::of(text()), prop::option::of(text())).prop_map(
            |(user, password, token)| Role::Operator {
                user,
                password,
                token,
                console_key: None,
            }
        ),
    ]
}

fn hello_reply() -> impl Strategy<Value = HelloReply> {
    prop_oneof![
        (
            text(),
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(text(), 0..3),
            prop::option::of(text()),
            prop::option::of(any::<u64>()),
            (prop::option::of(text()), prop::option::of(any::<u64>()))
        )
            .prop_map(
                |(
                    server,
                    heartbeat_secs,
                    dead_after_secs,
                    gateways,
                    token,
                    ttl,
                    (grant_key, now),
                )| {
                    HelloReply::Welcome(Welcome {
                        server,
                        heartbeat_secs,
                        dead_after_secs,
                        gateways,
                        token,
                        token_expires_in_secs: ttl,
                        grant_key,
                        now,
                    })
                }
            ),
        (error_code(), text())
            .prop_map(|(code, message)| HelloReply::Error(ErrorMsg { code, message })),
    ]
}

fn control_msg() -> impl Strategy<Value = ControlMsg> {
    prop_oneof![
        (any::<u64>(), any::<Option<u64>>())
            .prop_map(|(seq, rtt_us)| ControlMsg::Ping { seq, rtt_us }),
        any::<u64>().prop_map(|seq| ControlMsg::Pong { seq }),
        (
            (text(), text(), text()),
            (text(), text(), prop::option::of(text()))
        )
            .prop_map(
                |((session_id, nonce, service), (body, signature, client_hello))| {
                    ControlMsg::OpenData {
                        session_id,
                        nonce,
                        service,
                        grant: rac::wire::protocol::Grant { body, signature },
                        client_hello,
                    }
                }
            ),
        (text(), error_code(), text()).prop_map(|(session_id, code, reason)| {
            ControlMsg::Reject {
                session_id,
                code,
                reason,
            }
        }),
        (prop::collection::vec(text(), 0..4), any::<bool>()).prop_map(
            |(services, provider_access)| ControlMsg::Status {
                services,
                provider_access
            }
        ),
        prop::collection::vec(text(), 0..4).prop_map(|gateways| ControlMsg::Gateways { gateways }),
        (error_code(), text()).prop_map(|(code, reason)| ControlMsg::Goodbye { code, reason }),
    ]
}

fn session_msg() -> impl Strategy<Value = SessionMsg> {
    prop_oneof![
        Just(SessionMsg::Progress {
            stage: Stage::WaitingForTenant
        }),
        (text(), prop::option::of(text()), any::<bool>()).prop_map(
            |(session_id, tenant_key, client_hello_sent)| SessionMsg::Ready {
                session_id,
                tenant_key,
                client_hello_sent,
            }
        ),
        (error_code(), text()).prop_map(|(code, message)| SessionMsg::Error { code, message }),
    ]
}

fn api_request() -> impl Strategy<Value = ApiRequest> {
    prop_oneof![
        (any::<bool>(), any::<bool>())
            .prop_map(|(subscribe, compact)| ApiRequest::ListTenants { subscribe, compact }),
        Just(ApiRequest::Logout),
    ]
}

fn tenant_info() -> impl Strategy<Value = TenantInfo> {
    (
        (
            text(),
            prop::sample::select(vec![
                TenantStatus::Online,
                TenantStatus::Offline,
                TenantStatus::Disabled,
            ]),
            text(),
            prop::option::of(any::<u64>()),
            prop::option::of(any::<u64>()),
            prop::option::of(text()),
        ),
        (
            prop::option::of(text()),
            prop::collection::vec(text(), 0..3),
            any::<bool>(),
            // Milliseconds with three decimals: what the SP reports.
            prop::option::of((0u32..10_000_000).prop_map(|v| f64::from(v) / 1000.0)),
            any::<u32>(),
        ),
    )
        .prop_map(
            |(
                (name, status, description, connected_since, last_seen, remote_addr),
                (agent_version, services, provider_access, heartbeat_rtt_ms, open_sessions),
            )| TenantInfo {
                name,
                status,
                description,
                connected_since,
                last_seen,
                remote_addr,
                agent_version,
                services,
                provider_access,
                heartbeat_rtt_ms,
                open_sessions,
                tenant_key: None,
            },
        )
}

fn api_response() -> impl Strategy<Value = ApiResponse> {
    prop_oneof![
        prop::collection::vec(tenant_info(), 0..4)
            .prop_map(|tenants| ApiResponse::Tenants { tenants }),
        (prop::collection::vec(tenant_info(), 0..4), any::<u64>()).prop_map(|(tenants, now)| {
            ApiResponse::TenantPage(TenantPage::paginate(tenants, now).next().expect("a page"))
        }),
        tenant_info().prop_map(|tenant| ApiResponse::TenantChanged { tenant }),
        text().prop_map(|name| ApiResponse::TenantRemoved { name }),
        Just(ApiResponse::LoggedOut),
        (error_code(), text()).prop_map(|(code, message)| ApiResponse::Error { code, message }),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

/// Encodes `msg` as a frame and reads it back through the frame reader.
fn through_frame<T: Serialize + DeserializeOwned>(msg: &T) -> T {
    let bytes = encode_frame(msg).expect("encode");
    let len = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
    assert_eq!(len, bytes.len() - 4, "the prefix is the body length");
    runtime().block_on(async {
        let mut reader = bytes.as_slice();
        let back = read_frame::<T, _>(&mut reader, MAX_FRAME_LEN)
            .await
            .expect("decode")
            .expect("a frame");
        assert!(reader.is_empty(), "the reader took exactly one frame");
        back
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn a_compact_tenant_list_reads_back_as_its_tenants(
        tenants in prop::collection::vec(tenant_info(), 0..40),
        now in any::<u64>(),
    ) {
        // The SP stamps a snapshot as it takes it: no time in it is later than its `now`.
        let tenants: Vec<TenantInfo> = tenants
            .into_iter()
            .map(|mut t| {
                t.connected_since = t.connected_since.map(|at| at.min(now));
                t.last_seen = t.last_seen.map(|at| at.min(now));
                t
            })
            .collect();
        let mut back = Vec::new();
        for page in TenantPage::paginate(tenants.clone(), now) {
            let ApiResponse::TenantPage(page) = through_frame(&ApiResponse::TenantPage(page)) else {
                panic!("a page reads back as a page");
            };
            back.extend(page.into_tenants().expect("every index in range"));
        }
        prop_assert_eq!(back, tenants);
    }

    #[test]
    fn hello_round_trips_and_passes_the_sp_parse(role in role()) {
        let hello = Hello::new(role);
        prop_assert_eq!(&through_frame(&hello), &hello);
        let body = serde_json::to_vec(&hello).expect("encode");
        prop_assert_eq!(&parse_hello(&body).expect("the SP accepts it"), &hello);
    }

    #[test]
    fn a_hello_with_any_tenant_string_is_accepted_only_by_the_name_rule(
        tenant in text(),
        service in text(),
    ) {
        let hello = Hello::new(Role::ConsoleSession {
            token: "t".into(),
            tenant: tenant.clone(),
            service: service.clone(),
            client_hello: None,
        });
        let body = serde_json::to_vec(&hello).expect("encode");
        let valid = |s: &str| rac::wire::validate_name(s).is_ok();
        match parse_hello(&body) {
            Ok(parsed) => {
                prop_assert!(valid(&tenant) && valid(&service));
                prop_assert_eq!(parsed, hello);
            }
            Err(refusal) => {
                prop_assert!(!valid(&tenant) || !valid(&service));
                prop_assert_eq!(refusal.code, ErrorCode::BadRequest);
                let field = if valid(&tenant) { "service:" } else { "tenant:" };
                prop_assert!(refusal.message.contains(field), "{}", refusal.message);
                prop_assert!(!refusal.message.chars().any(char::is_control), "{}", refusal.message);
            }
        }
    }

    #[test]
    fn a_hello_of_another_version_is_told_so(role in role(), version in any::<u32>()) {
        prop_assume!(version != rac::wire::protocol::PROTOCOL_VERSION);
        let hello = Hello { version, role };
        let body = serde_json::to_vec(&hello).expect("encode");
        let refusal = parse_hello(&body).expect_err("refused");
        prop_assert_eq!(refusal.code, ErrorCode::VersionMismatch);
        prop_assert!(refusal.message.contains(&version.to_string()));
    }

    #[test]
    fn hello_reply_round_trips(msg in hello_reply()) {
        prop_assert_eq!(through_frame(&msg), msg);
    }

    #[test]
    fn control_msg_round_trips(msg in control_msg()) {
        prop_assert_eq!(through_frame(&msg), msg);
    }

    #[test]
    fn session_msg_round_trips(msg in session_msg()) {
        prop_assert_eq!(through_frame(&msg), msg);
    }

    #[test]
    fn api_request_round_trips(msg in api_request()) {
        prop_assert_eq!(through_frame(&msg), msg);
    }

    #[test]
    fn api_response_round_trips(msg in api_response()) {
        prop_assert_eq!(through_frame(&msg), msg);
    }

    /// Several frames back to back come out one by one, in order, then a clean end.
    #[test]
    fn frames_in_a_row_split_exactly(msgs in prop::collection::vec(control_msg(), 0..8)) {
        let mut bytes = Vec::new();
        for msg in &msgs {
            bytes.extend(encode_frame(msg).expect("encode"));
        }
        let got = runtime().block_on(async {
            let mut reader = bytes.as_slice();
            let mut got = Vec::new();
            while let Some(msg) = read_frame::<ControlMsg, _>(&mut reader, MAX_HELLO_LEN)
                .await
                .expect("decode")
            {
                got.push(msg);
            }
            got
        });
        prop_assert_eq!(got, msgs);
    }

    /// Every strict prefix of a frame is a truncation (or, when empty, a clean end).
    #[test]
    fn a_cut_frame_is_truncated_never_a_message(msg in control_msg(), cut in any::<prop::sample::Index>()) {
        let bytes = encode_frame(&msg).expect("encode");
        let cut = cut.index(bytes.len());
        let result = runtime().block_on(async {
            read_frame::<ControlMsg, _>(&mut &bytes[..cut], MAX_HELLO_LEN).await
        });
        match result {
            Ok(None) => prop_assert_eq!(cut, 0),
            Err(FrameError::Truncated) => prop_assert!(cut > 0),
            other => prop_assert!(false, "a {cut}-byte prefix gave {other:?}"),
        }
    }

    /// A frame over the reader's limit is refused from its prefix alone.
    #[test]
    fn an_oversized_frame_is_refused(msg in control_msg(), max in 0usize..64) {
        let bytes = encode_frame(&msg).expect("encode");
        let body_len = bytes.len() - 4;
        let result = runtime().block_on(async {
            // Only the prefix: the reader must decide before reading the body.
            read_frame::<ControlMsg, _>(&mut &bytes[..4], max).await
        });
        if body_len > max {
            prop_assert!(
                matches!(result, Err(FrameError::TooLarge { len, .. }) if len == body_len),
                "{result:?}"
            );
        } else {
            prop_assert!(matches!(result, Err(FrameError::Truncated) | Ok(None)), "{result:?}");
        }
    }
}

proptest! {
    /// Regression for the fuzz finding `fuzz/seeds/tenant_config/secret_inside_a_field_name.toml`
    /// (a secret that is a substring of a field name, which a naive "does Debug contain the
    /// secret" check flags): the tenant config's Debug output does not depend on the secret.
    #[test]
    fn tenant_config_debug_never_depends_on_the_secret(secret in any::<String>()) {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/seeds/tenant_config/secret_inside_a_field_name.toml"
        ))
        .expect("seed");
        let config: rac::tenant::config::TenantConfig = toml::from_str(&text).expect("parses");
        let mut other = config.clone();
        other.secret = secret;
        let (shown, other_shown) = (format!("{config:?}"), format!("{other:?}"));
        prop_assert!(other_shown.contains("secret: \"***\""), "{}", other_shown);
        prop_assert_eq!(shown, other_shown);
    }
}
