//! Relaying a streaming call through the agent, generically: items are moved as raw
//! MessagePack bodies, never decoded, so the agent needs no knowledge of the service's types.
//!
//! Flow control holds end to end: an item is taken from one side only when the other side has
//! credit for it, so the agent holds at most one item per direction, and a slow reader at
//! either end slows the producer at the other end through both connections' windows.

use std::future::poll_fn;
use std::task::{Context, Poll};

use bytes::Bytes;

use crate::client::ClientStream;
use crate::error::Error;
use crate::server::ForwardedStream;
use crate::stream::flow::Recv;

/// Relays `local` (the application's end, on the agent's server) to and from `provider` (the
/// stream the agent opened on a provider) until the provider ends the call; gives its final
/// response body or error.
pub(crate) async fn relay(
    mut local: ForwardedStream,
    mut provider: ClientStream,
) -> Result<Bytes, Error> {
    // An item taken from one side, waiting for credit on the other.
    let mut up: Option<Bytes> = None;
    let mut down: Option<Bytes> = None;
    poll_fn(|cx| {
        upstream(&mut local, &provider, &mut up, cx);
        let end = downstream(&local, &mut provider, &mut down, cx);
        // What this turn moved leaves in one write per side, not one per item.
        provider.flush();
        local.output.flush();
        end
    })
    .await
}

/// Moves the application's input items to the provider while it takes them; ends the
/// provider's input when the application's ends, and tells the application to stop sending
/// when the provider stops reading.
fn upstream(
    local: &mut ForwardedStream,
    provider: &ClientStream,
    up: &mut Option<Bytes>,
    cx: &mut Context<'_>,
) {
    while let Some(input) = local.input.as_mut() {
        if up.is_none() {
            match input.poll_raw(cx) {
                Poll::Pending => return,
                Poll::Ready(Some(Ok(body))) => *up = Some(body),
                Poll::Ready(None) => {
                    provider.send_end();
                    local.input = None;
                    return;
                }
                // The input failed on this side (the call is ending): nothing more to move.
                Poll::Ready(Some(Err(_))) => {
                    local.input = None;
                    return;
                }
            }
        }
        match provider.poll_send_ready(cx) {
            Poll::Pending => return,
            Poll::Ready(Ok(())) => {
                let body = up.take().expect("an item waits");
                if provider.send_raw(&body).is_err() {
                    // Not sent (the connection is closing): the provider's end says why.
                    local.input = None;
                }
            }
            // The provider no longer reads the input: the application is told to stop too
            // (dropping its input sends it a `Cancel`).
            Poll::Ready(Err(_)) => {
                *up = None;
                local.input = None;
            }
        }
    }
}

/// Moves the provider's output items to the application while it has credit for them; ready
/// with the call's end.
fn downstream(
    local: &ForwardedStream,
    provider: &mut ClientStream,
    down: &mut Option<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<Result<Bytes, Error>> {
    loop {
        if down.is_none() {
            match provider.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Recv::Item { body, .. }) => *down = Some(body),
                Poll::Ready(Recv::End(end)) => return Poll::Ready(end),
            }
        }
        let body = down.as_ref().expect("an item waits");
        match local.output.poll_send_raw(cx, body) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(())) => *down = None,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
        }
    }
}
