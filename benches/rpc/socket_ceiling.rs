//! The socket ceiling: what one TCP connection carries here with nothing but the kernel's own
//! copies. Plain blocking sockets, no runtime, no framing beyond a 4-byte length, buffers
//! allocated once: the server is one thread per connection reading a frame into its buffer and
//! writing the same bytes back; the client is a writer thread keeping `window` requests in
//! flight (taking a credit from the reader for each one after the first `window`) and a reader
//! thread reading each echo into its own buffer. For large payloads this is the bound a
//! framework can approach only by not copying payloads itself (`socket-ceiling` in the tables;
//! it runs in the scenarios with payloads of 64 KiB and more).
//!
//! Per call the client does the scenario's own work, as every other row's caller does: it
//! writes the call's payload afresh (a copy of the pattern, stamped with the call's number) and
//! checks every byte of the echo. What it leaves out is the framework.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use crate::service::Payload;

/// Starts the echo server on an OS-chosen port of 127.0.0.1; returns the port.
pub fn serve() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || echo_conn(stream));
        }
    });
    Ok(port)
}

/// Echoes frames until the client closes the connection.
fn echo_conn(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 4];
    loop {
        if stream.read_exact(&mut buf[..4]).is_err() {
            return;
        }
        let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        if buf.len() < 4 + len {
            buf.resize(4 + len, 0);
        }
        if stream.read_exact(&mut buf[4..4 + len]).is_err()
            || stream.write_all(&buf[..4 + len]).is_err()
        {
            return;
        }
    }
}

/// One blocking connection to the socket-ceiling server.
pub fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(stream)
}

/// Runs the calls numbered `seqs` on `stream`, `window` in flight; returns each call's latency
/// (ns) and the connection. Blocking: run it on a thread of its own.
pub fn run_conn(
    stream: TcpStream,
    window: usize,
    seqs: Range<u64>,
    payload: Arc<Payload>,
) -> Result<(TcpStream, Vec<u64>), String> {
    let total = (seqs.end - seqs.start) as usize;
    let mut reader = stream.try_clone().map_err(|e| e.to_string())?;
    let mut writer = stream;
    // Send times travel with the credits' opposite: the writer tells the reader when each
    // request left, in order.
    let (sent_tx, sent_rx) = mpsc::channel::<Instant>();
    let (credit_tx, credit_rx) = mpsc::channel::<()>();
    let len = payload.len();
    let first = seqs.start;
    let check = payload.clone();
    let read = std::thread::spawn(move || -> Result<(TcpStream, Vec<u64>), String> {
        let mut latencies = Vec::with_capacity(total);
        let mut buf = vec![0u8; 4 + len];
        for i in 0..total {
            reader.read_exact(&mut buf).map_err(|e| e.to_string())?;
            let now = Instant::now();
            let sent = sent_rx
                .recv()
                .map_err(|_| "the writer stopped".to_owned())?;
            let got = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
            if got != len {
                return Err(format!("echo {i}: {got} bytes"));
            }
            latencies.push((now - sent).as_nanos() as u64);
            check.check(first + i as u64, &buf[4..])?;
            // The writer may be done already.
            let _ = credit_tx.send(());
        }
        Ok((reader, latencies))
    });
    let mut request = Vec::with_capacity(4 + len);
    let mut outcome = Ok(());
    for (i, seq) in seqs.enumerate() {
        if i >= window && credit_rx.recv().is_err() {
            // The reader failed: its error is the one to report.
            break;
        }
        request.clear();
        request.extend_from_slice(&(len as u32).to_be_bytes());
        payload.write_into(seq, &mut request);
        let sent = Instant::now();
        if let Err(e) = writer.write_all(&request) {
            outcome = Err(e.to_string());
            break;
        }
        if sent_tx.send(sent).is_err() {
            break;
        }
    }
    drop(sent_tx);
    let (_, latencies) = read
        .join()
        .map_err(|_| "the reader thread panicked".to_owned())??;
    outcome?;
    Ok((writer, latencies))
}
