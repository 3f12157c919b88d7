//! Runs generated servers in-process: argument decoding, dispatch by index and hygiene, against
//! the real runtime's `Service` API (no network).

use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use serde::{Deserialize, Serialize};
use stardust::{Call, ErrorKind, Service};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct T(pub u8);

#[stardust::service(name = "test.Recorder")]
pub trait Recorder {
    async fn add(&self, a: i64, b: i64) -> i64;
    async fn single(&self, inner: T) -> u8;
    #[stardust(idempotent)]
    async fn ping(&self);
    /// Arguments named like the generated code's own variables.
    async fn collide(&self, inner: u32, method: u32, args: u32, self_: u32) -> u32;
    async fn clone(&self) -> String;
}

#[derive(Default)]
struct Log(Mutex<Vec<String>>);

impl Log {
    fn push(&self, entry: String) {
        self.0.lock().unwrap().push(entry);
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

impl Recorder for Log {
    async fn add(&self, a: i64, b: i64) -> i64 {
        self.push(format!("add({a}, {b})"));
        a + b
    }

    async fn single(&self, inner: T) -> u8 {
        self.push(format!("single({inner:?})"));
        inner.0
    }

    async fn ping(&self) {
        self.push("ping()".to_owned());
    }

    async fn collide(&self, inner: u32, method: u32, args: u32, self_: u32) -> u32 {
        self.push(format!("collide({inner}, {method}, {args}, {self_})"));
        0
    }

    async fn clone(&self) -> String {
        self.push("clone()".to_owned());
        String::new()
    }
}

/// Drives a call to completion; the handlers above never wait, so one poll is enough.
fn run(mut call: Call) {
    let mut cx = Context::from_waker(Waker::noop());
    assert_eq!(call.poll_call(&mut cx), Poll::Ready(()));
}

fn server() -> (std::sync::Arc<Log>, RecorderServer<Log>) {
    let log = std::sync::Arc::new(Log::default());
    (log.clone(), RecorderServer::from_arc(log))
}

#[test]
fn calls_reach_the_right_method_with_decoded_arguments() {
    let (log, server) = server();
    // MessagePack: 0x9N is an N-element array, small integers encode as themselves.
    run(server.call(0, &[0x92, 0x01, 0x02]).unwrap());
    run(server.call(1, &[0x91, 0x07]).unwrap());
    run(server.call(2, &[0x90]).unwrap());
    run(server.call(3, &[0x94, 0x01, 0x02, 0x03, 0x04]).unwrap());
    run(server.call(4, &[0x90]).unwrap());
    assert_eq!(
        log.take(),
        [
            "add(1, 2)",
            "single(T(7))",
            "ping()",
            "collide(1, 2, 3, 4)",
            "clone()"
        ]
    );
}

#[test]
fn zero_argument_methods_ignore_their_argument_bytes() {
    let (log, server) = server();
    run(server.call(2, &[]).unwrap());
    assert_eq!(log.take(), ["ping()"]);
}

#[test]
fn bad_arguments_fail_before_the_handler_runs() {
    let (log, server) = server();
    // A string where an integer is expected.
    let error = server.call(0, &[0x92, 0xa1, b'x', 0x02]).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidArguments);
    assert!(log.take().is_empty());
}

#[test]
fn unknown_method_indexes_are_errors() {
    let (_, server) = server();
    let error = server.call(5, &[0x90]).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::UnknownMethod);
    assert!(error.message().contains("test.Recorder"), "{error:?}");
}

#[test]
fn descriptor_lists_methods_in_declaration_order() {
    let (_, server) = server();
    let descriptor = server.descriptor();
    assert_eq!(descriptor, RecorderClient::DESCRIPTOR);
    assert_eq!(descriptor.name, "test.Recorder");
    assert_eq!(descriptor.version, "1.0.0");
    let names: Vec<_> = descriptor.methods.iter().map(|m| m.name).collect();
    assert_eq!(names, ["add", "single", "ping", "collide", "clone"]);
    let idempotent: Vec<_> = descriptor.methods.iter().map(|m| m.idempotent).collect();
    assert_eq!(idempotent, [false, false, true, false, false]);
}
