//! The server of `tests/foreign_client.rs`: a real Stardust server hosting a hand-written
//! `stardust::Service` (`calc.Calculator`, no proc macro), and the harness that runs the blocking
//! client against it.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use serde::Serialize;
use stardust::{
    Call, Context, Error, MethodDescriptor, Server, ServerBuilder, Service, ServiceDescriptor,
};

use crate::doc_client::IO_TIMEOUT;

pub static DESC: ServiceDescriptor = ServiceDescriptor {
    name: "calc.Calculator",
    version: "1.0.0",
    methods: &[
        MethodDescriptor {
            idempotent: true,
            ..MethodDescriptor::unary("add")
        },
        MethodDescriptor::unary("sleep"),
        MethodDescriptor {
            idempotent: true,
            ..MethodDescriptor::unary("div")
        },
        MethodDescriptor::unary("hold"),
        MethodDescriptor::unary("release"),
        MethodDescriptor::unary("forever"),
        MethodDescriptor::unary("publish"),
        MethodDescriptor {
            idempotent: true,
            ..MethodDescriptor::unary("blob")
        },
        MethodDescriptor {
            idempotent: true,
            ..MethodDescriptor::unary("label")
        },
    ],
    docs: "",
};

/// What the handlers share with the test.
pub struct Shared {
    /// Handler events (`"hold started"`, `"forever dropped"`), for the test to wait on.
    pub events: mpsc::Sender<&'static str>,
    /// Lets `hold` calls finish.
    pub release: tokio::sync::Notify,
}

pub struct Calc(Arc<Shared>);

#[derive(Serialize)]
pub struct Sum {
    pub sum: i64,
}

/// Reports that the `forever` handler was dropped (cancelled) rather than completed.
pub struct DropReport(mpsc::Sender<&'static str>);

impl Drop for DropReport {
    fn drop(&mut self) {
        let _ = self.0.send("forever dropped");
    }
}

impl Service for Calc {
    fn descriptor(&self) -> &'static ServiceDescriptor {
        &DESC
    }

    fn call(&self, method: usize, args: &[u8]) -> Result<Call, Error> {
        use stardust::__private::decode_args;
        let shared = self.0.clone();
        match method {
            0 => {
                let (a, b) = decode_args::<(i64, i64)>(args, 2)?;
                Ok(Call::new(async move { a + b }))
            }
            1 => {
                let (ms,) = decode_args::<(u64,)>(args, 1)?;
                Ok(Call::new(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    ms
                }))
            }
            2 => {
                let (a, b) = decode_args::<(i64, i64)>(args, 2)?;
                Ok(Call::new(async move {
                    a.checked_div(b)
                        .ok_or_else(|| "division by zero".to_owned())
                }))
            }
            3 => Ok(Call::new(async move {
                let _ = shared.events.send("hold started");
                shared.release.notified().await;
                "held"
            })),
            4 => Ok(Call::new(async move { shared.release.notify_one() })),
            5 => {
                let report = DropReport(shared.events.clone());
                Ok(Call::new(async move {
                    let _report = report;
                    std::future::pending::<()>().await
                }))
            }
            6 => Ok(Call::new(async move {
                let notifier = Context::current()
                    .and_then(|c| c.notifier())
                    .expect("a notifier in the handler's context");
                notifier
                    .notify("calc.done", &Sum { sum: 3 })
                    .expect("notify");
            })),
            7 => {
                let (n,) = decode_args::<(usize,)>(args, 1)?;
                Ok(Call::new(async move {
                    serde_bytes::ByteBuf::from(vec![0xabu8; n])
                }))
            }
            8 => {
                // A method that grew an optional trailing parameter.
                let (a, label) = decode_args::<(i64, Option<String>)>(args, 2)?;
                Ok(Call::new(async move {
                    format!("{a}:{}", label.as_deref().unwrap_or("none"))
                }))
            }
            _ => Err(stardust::__private::unknown_method(&DESC, method)),
        }
    }
}

pub struct TestServer {
    pub server: Server,
    pub shared: Arc<Shared>,
    pub events: mpsc::Receiver<&'static str>,
}

pub async fn start(builder: ServerBuilder) -> TestServer {
    let (tx, events) = mpsc::channel();
    let shared = Arc::new(Shared {
        events: tx,
        release: tokio::sync::Notify::new(),
    });
    let server = builder
        .serve(Calc(shared.clone()))
        .bind("127.0.0.1:0")
        .await
        .expect("bind");
    TestServer {
        server,
        shared,
        events,
    }
}

/// Waits (bounded) for the handler event `what`, skipping others.
pub fn wait_event(events: &mpsc::Receiver<&'static str>, what: &str) {
    for _ in 0..100 {
        match events.recv_timeout(IO_TIMEOUT) {
            Ok(e) if e == what => return,
            Ok(_) => {}
            Err(e) => panic!("no `{what}` event: {e}"),
        }
    }
    panic!("no `{what}` event among the first 100");
}

/// Runs the blocking client `f` on the blocking pool and propagates its panics.
pub async fn client<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
