//! The ceiling: what one connection can carry against the raw server when the client costs as
//! little as possible. No per-call futures, tasks, channels or locks: one task per connection
//! keeps a window of slots; each round it fills every free slot with a request and sends them
//! in one write, then takes every response that has arrived with one read. The server and the
//! wire format are the raw implementation's, so `raw / ceiling` is what raw's client costs and
//! `stardust / ceiling` is how far Stardust is from the bound.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::raw_impl::{HEAD, METHOD_ADD, METHOD_ECHO, STATUS_OK, encode_request};
use crate::service::{self, Payload};

const READ_BUF: usize = 256 * 1024;
/// Request ids are `seq << SLOT_BITS | slot`, so a response names its slot without a lookup.
const SLOT_BITS: u32 = 16;
const NO_CALL: u64 = u64::MAX;

/// One connection to the raw server.
pub async fn connect(addr: std::net::SocketAddr) -> Result<TcpStream, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(stream)
}

/// Runs the calls numbered `seqs` on one connection, `window` outstanding, returning each call's
/// latency (ns). Hands the connection back for the next phase.
pub async fn run_conn(
    stream: TcpStream,
    window: usize,
    seqs: Range<u64>,
    payload: Option<Arc<Payload>>,
) -> Result<(TcpStream, Vec<u64>), String> {
    assert!(window > 0 && window < 1 << SLOT_BITS);
    let total = seqs.end - seqs.start;
    let mut latencies = Vec::with_capacity(total as usize);
    let mut next = seqs.start;
    let mut done = 0;
    let mut sent_at = vec![Instant::now(); window];
    let mut sent_seq = vec![NO_CALL; window];
    let mut free: Vec<usize> = (0..window).rev().collect();
    let mut out = Vec::new();
    let mut written = 0;
    let mut inbuf = BytesMut::with_capacity(READ_BUF);

    while done < total {
        // Fill every free slot, but only once the previous batch has fully left.
        if written == out.len() && next < seqs.end && !free.is_empty() {
            out.clear();
            written = 0;
            let now = Instant::now();
            while next < seqs.end {
                let Some(slot) = free.pop() else { break };
                let id = (next << SLOT_BITS) | slot as u64;
                match &payload {
                    None => encode_request(&mut out, id, METHOD_ADD, &service::add_args(next)),
                    Some(p) => encode_echo(&mut out, id, p, next),
                }
                sent_at[slot] = now;
                sent_seq[slot] = next;
                next += 1;
            }
        }
        // Wait for the socket; while a large batch is still going out, keep reading too, or
        // client and server could both block writing to each other.
        let interest = if written < out.len() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let ready = stream.ready(interest).await.map_err(|e| e.to_string())?;
        if ready.is_writable() && written < out.len() {
            match stream.try_write(&out[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        if ready.is_readable() {
            if inbuf.capacity() - inbuf.len() < READ_BUF / 4 {
                inbuf.reserve(READ_BUF);
            }
            match stream.try_read_buf(&mut inbuf) {
                Ok(0) => return Err("the raw server closed the connection".to_owned()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.to_string()),
            }
            let now = Instant::now();
            while let Some(len) = complete_frame(&inbuf)? {
                let frame = &inbuf[4..4 + len];
                let id = u64::from_be_bytes(frame[..8].try_into().expect("8 bytes"));
                let (seq, slot) = (id >> SLOT_BITS, (id & ((1 << SLOT_BITS) - 1)) as usize);
                if slot >= window || sent_seq[slot] != seq {
                    return Err(format!("response for unknown request id {id}"));
                }
                check_response(seq, frame, payload.as_deref())?;
                latencies.push((now - sent_at[slot]).as_nanos() as u64);
                sent_seq[slot] = NO_CALL;
                free.push(slot);
                done += 1;
                inbuf.advance(4 + len);
            }
        }
    }
    Ok((stream, latencies))
}

/// An echo request, encoded in place exactly as rmp-serde encodes `(ByteBuf,)`: a one-element
/// array holding a `bin`.
fn encode_echo(out: &mut Vec<u8>, id: u64, payload: &Payload, seq: u64) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&id.to_be_bytes());
    out.push(METHOD_ECHO);
    rmp::encode::write_array_len(out, 1).expect("vec write");
    rmp::encode::write_bin_len(out, payload.len() as u32).expect("vec write");
    payload.write_into(seq, out);
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// The length (after the length field) of the first frame in `buf`, if it is complete.
fn complete_frame(buf: &[u8]) -> Result<Option<usize>, String> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if len < HEAD {
        return Err(format!("bad frame length {len}"));
    }
    Ok((buf.len() >= 4 + len).then_some(len))
}

fn check_response(seq: u64, frame: &[u8], payload: Option<&Payload>) -> Result<(), String> {
    let mut body = &frame[HEAD..];
    if frame[8] != STATUS_OK {
        let msg: String = rmp_serde::from_slice(body).unwrap_or_default();
        return Err(format!("the raw server failed call {seq}: {msg}"));
    }
    match payload {
        None => {
            let sum: i64 = rmp::decode::read_int(&mut body).map_err(|e| e.to_string())?;
            service::check_add(seq, sum)
        }
        Some(p) => {
            let len = rmp::decode::read_bin_len(&mut body).map_err(|e| e.to_string())?;
            if len as usize != body.len() {
                return Err("echo response with a bad bin length".to_owned());
            }
            p.check(seq, body)
        }
    }
}
