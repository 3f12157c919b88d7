//! Hand-made inputs for the registry: discovery pushes and `watch` replies, an argument array for
//! each method of its API, and raw HTTP requests to its monitoring server.

use std::collections::BTreeMap;

use bytes::BytesMut;
use stardust::__wire::frame;
use stardust::__wire::message;
use stardust::discovery::api::{
    DiscoveryEvent, Instance, Registration, RegistryError, Status, WatchReply,
};

use super::{body, enc};

pub(super) fn instance() -> Instance {
    Instance {
        app: "calc-provider".into(),
        service: "calc.Calculator".into(),
        version: "1.2.0".into(),
        endpoint: "127.0.0.1:9000".into(),
        weight: 100,
        tags: BTreeMap::from([("zone".into(), "a".into())]),
        tls: false,
    }
}

pub(super) fn registration() -> Registration {
    Registration {
        service: "calc.Calculator".into(),
        version: "1.2.0".into(),
        endpoint: "127.0.0.1:9000".into(),
        weight: 100,
        tags: BTreeMap::from([("zone".into(), "a".into())]),
        tls: true,
        description: Some(stardust::discovery::api::ServiceDescription {
            docs: "A calculator.".into(),
            methods: vec![stardust::discovery::api::MethodDescription {
                name: "add".into(),
                args: vec![stardust::discovery::api::ArgDescription {
                    name: "a".into(),
                    ty: "i64".into(),
                }],
                returns: "i64".into(),
                idempotent: true,
                ..Default::default()
            }],
        }),
    }
}

pub(super) fn discovery_push() -> Vec<u8> {
    let event = DiscoveryEvent {
        service: "calc.Calculator".into(),
        version_req: "^1".into(),
        instances: vec![instance()],
    };
    let mut buf = BytesMut::new();
    message::put_notify(
        &mut buf,
        stardust::discovery::api::DISCOVERY_TOPIC,
        &event,
        frame::DEFAULT_MAX_FRAME,
    )
    .expect("encodes");
    body(&buf)
}

pub(super) fn delta() -> stardust::discovery::api::DiscoveryDelta {
    stardust::discovery::api::DiscoveryDelta {
        service: "calc.Calculator".into(),
        version_req: "^1".into(),
        epoch: 7,
        from: 41,
        to: 43,
        upserted: vec![instance()],
        removed: vec!["127.0.0.1:9001".into()],
    }
}

pub(super) fn delta_push() -> Vec<u8> {
    let push = stardust::discovery::api::DiscoveryPush::Delta(delta());
    let mut buf = BytesMut::new();
    message::put_notify(
        &mut buf,
        stardust::discovery::api::DELTA_TOPIC,
        &push,
        frame::DEFAULT_MAX_FRAME,
    )
    .expect("encodes");
    body(&buf)
}

pub(super) fn watch_replies() -> Vec<(&'static str, Result<WatchReply, RegistryError>)> {
    let at = stardust::discovery::api::Revision { epoch: 7, rev: 43 };
    vec![
        (
            "watch-snapshot",
            Ok(WatchReply::Snapshot {
                at,
                instances: stardust::discovery::api::InstanceList::new(&[instance()]),
            }),
        ),
        ("watch-delta", Ok(WatchReply::Delta(delta()))),
        ("watch-unchanged", Ok(WatchReply::Unchanged { at })),
    ]
}

pub(super) fn registry_calls() -> Vec<(&'static str, Vec<u8>)> {
    let status = Status {
        in_flight: 1,
        uptime_ms: 1000,
        version: "stardust-rust/0.1.0".into(),
        window_ms: 5000,
        cpu_ms: 3,
        rss_bytes: 1 << 20,
        unbound_tokens_accepted: 0,
        served: vec![stardust::discovery::api::MethodFigures {
            service: "calc.Calculator".into(),
            method: "add".into(),
            calls: 3,
            ..Default::default()
        }],
        called: Vec::new(),
        faults: vec![stardust::discovery::api::FaultCount {
            service: "calc.Calculator".into(),
            fault: "drill".into(),
            kind: "abort".into(),
            count: 2,
        }],
    };
    let pair = |a: &str, b: &str| enc(&(a, b));
    vec![
        ("login", pair("web", "web-secret")),
        ("renew", enc(&stardust::__private::NoArgs)),
        ("public_keys", enc(&stardust::__private::NoArgs)),
        ("register", enc(&(registration(),))),
        ("deregister", pair("calc.Calculator", "127.0.0.1:9000")),
        ("heartbeat", enc(&(status,))),
        ("discover", pair("calc.Calculator", "^1.2")),
        ("subscribe", pair("calc.Calculator", "*")),
        ("unsubscribe", pair("calc.Calculator", ">=1, <2")),
        (
            "watch",
            enc(&(
                "calc.Calculator",
                "^1",
                Some(stardust::discovery::api::Revision { epoch: 7, rev: 42 }),
            )),
        ),
        ("resume", enc(&("sd1.e30.c2ln",))),
        ("traffic", enc(&("calc.Calculator", Some(7u64)))),
        ("rules", enc(&stardust::__private::NoArgs)),
        ("services", enc(&stardust::__private::NoArgs)),
        ("describe", enc(&("calc.Calculator",))),
        (
            "edit_rules",
            enc(&(
                stardust::traffic::RulesEdit::SetFault {
                    service: "calc.Calculator".into(),
                    fault: stardust::traffic::Fault {
                        name: "drill".into(),
                        matches: stardust::traffic::Match::default(),
                        percent: 12.5,
                        action: stardust::traffic::FaultAction::Abort {
                            error: "Overloaded".into(),
                        },
                    },
                },
                Some(3u64),
            )),
        ),
    ]
}

pub(super) fn http_requests() -> Vec<(&'static str, &'static str)> {
    vec![
        ("console", "GET / HTTP/1.1\r\nHost: 127.0.0.1:7601\r\n\r\n"),
        (
            "metrics",
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n",
        ),
        (
            "healthz-head",
            "HEAD /healthz HTTP/1.1\r\nHost: [::1]:7601\r\n\r\n",
        ),
        (
            "service",
            "GET /api/services/calc.Calculator HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        ),
        (
            "service-escaped",
            "GET /api/services/odd%2Fname%20%C3%BC HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        ),
        (
            "history-pipelined",
            "GET /api/history?minutes=5 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n\
             GET /api/instances HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n\
             GET /api HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        ),
        ("overview-http10", "GET /api/services HTTP/1.0\r\n\r\n"),
        (
            "post",
            "POST /api HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n\r\nabc",
        ),
        (
            "rebinding",
            "GET /metrics HTTP/1.1\r\nHost: evil.example:7601\r\n\r\n",
        ),
    ]
}
