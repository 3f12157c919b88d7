//! Request bodies (`protocol::message::parse_request`, metadata included), then the arguments
//! through the decoding code `#[stardust::service]` generates (`Service::call`, which calls
//! `protocol::codec::decode_args`), as a provider does for every call.
//!
//! Input: a Request frame's body. The method is looked up by name in the echo service
//! ([`crate::echo`]); an unknown name picks a method by its length, so the fuzzer reaches every
//! parameter list without having to guess names.
//!
//! Checks: the request's head re-encodes to the same head; arguments either decode or fail
//! with `InvalidArguments`; decoded arguments (echoed back as the result) survive re-encoding.

use std::collections::BTreeMap;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use serde::Serialize;
use serde::de::DeserializeOwned;
use stardust::__wire::frame::{self, DEFAULT_MAX_FRAME};
use stardust::__wire::message::{self, RequestHead, RequestView};
use stardust::{Call, ErrorKind, Service};

use super::roundtrip::decodes_stably;
use crate::echo::{EchoServer, Mirror, Record, Scalars};

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(request) = message::parse_request(data) else {
        return;
    };
    check_head(&request);
    let server = EchoServer::new(Mirror);
    let methods = server.descriptor().methods;
    let index = server
        .descriptor()
        .method_index(request.method)
        .unwrap_or(request.method.len() % methods.len());
    let call = match server.call(index, request.args) {
        Ok(call) => call,
        // A method taking a stream gets its input from the server, which is not here: after
        // its arguments decode, it reports the missing stream.
        Err(e) if methods[index].input_stream && e.kind() == ErrorKind::Protocol => return,
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidArguments, "{e}");
            return;
        }
    };
    let output = finish(call);
    match methods[index].name {
        "pair" => stable::<(i64, i64)>(&output),
        "text" => stable::<(String, Option<String>)>(&output),
        "record" => stable::<Record>(&output),
        "scalars" => stable::<Scalars>(&output),
        "nothing" => stable::<()>(&output),
        "nested" => stable::<(Vec<(String, Option<u32>)>, BTreeMap<u64, Vec<u8>>)>(&output),
        "result" => stable::<Result<u32, String>>(&output),
        // A method returning only a stream answers nil after its items.
        "count" => stable::<()>(&output),
        other => panic!("no check for method `{other}`"),
    }
}

/// The head a client would write for this request parses back to the same head.
fn check_head(request: &RequestView<'_>) {
    let head = RequestHead {
        id: 1,
        flags: 0,
        service: request.service,
        method: request.method,
        timeout_us: request.timeout_us,
        trace_id: request.trace_id,
        meta: &request.meta,
    };
    let mut buf = BytesMut::new();
    message::put_request(&mut buf, &head, &(), DEFAULT_MAX_FRAME)
        .expect("a request read from a frame fits in one");
    let back = message::parse_request(&buf[frame::HEADER_LEN..]).expect("parses again");
    assert_eq!(
        (back.service, back.method, back.timeout_us, back.trace_id),
        (
            request.service,
            request.method,
            request.timeout_us,
            request.trace_id
        )
    );
    assert_eq!(back.meta, request.meta);
}

/// Runs a call to completion (echo handlers never wait) and returns its encoded output.
fn finish(mut call: Call) -> Vec<u8> {
    let mut cx = Context::from_waker(Waker::noop());
    assert_eq!(call.poll_call(&mut cx), Poll::Ready(()));
    let mut buf = BytesMut::new();
    call.encode_output(&mut buf)
        .expect("echoed arguments encode");
    buf.to_vec()
}

fn stable<T: Serialize + DeserializeOwned>(output: &[u8]) {
    assert!(
        decodes_stably::<T>(output).is_some(),
        "the echoed value does not decode as {}",
        std::any::type_name::<T>()
    );
}
