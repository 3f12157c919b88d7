//! Heap allocations on the provider's steady-state call path, counted with a counting global
//! allocator (this test binary's own: the allocator is process-wide).
//!
//! Only allocations made on the server runtime's threads are counted: client and server run in
//! one process, on two separate runtimes, and the server's worker threads mark themselves.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;

struct Counting;

static SERVER_ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static ON_SERVER_THREAD: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ON_SERVER_THREAD.try_with(Cell::get).unwrap_or(false) {
            SERVER_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ON_SERVER_THREAD.try_with(Cell::get).unwrap_or(false) {
            SERVER_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn server_allocates_at_most_two_blocks_per_add_call() {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .on_thread_start(|| ON_SERVER_THREAD.with(|c| c.set(true)))
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    let (server, _control) = server_rt.block_on(start_server());
    let addr = server.local_addr();
    client_rt.block_on(async move {
        let calc = CalcClient::connect(addr).await.unwrap();
        // Warm up: buffers reach their steady-state sizes, lazy statics initialise.
        run_calls(&calc, 20_000).await;
        let before = SERVER_ALLOCS.load(Ordering::Relaxed);
        const CALLS: u64 = 20_000;
        run_calls(&calc, CALLS).await;
        let allocs = SERVER_ALLOCS.load(Ordering::Relaxed) - before;
        let per_call = allocs as f64 / CALLS as f64;
        println!("server allocations: {allocs} for {CALLS} calls ({per_call:.3} per call)");
        assert!(
            per_call <= 2.0,
            "the server allocated {per_call:.3} times per call (limit 2)"
        );
    });
    drop(server);
}

/// `calls` add calls from 16 concurrent callers, so requests arrive batched and singly.
async fn run_calls(calc: &CalcClient, calls: u64) {
    let callers = 16;
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let calc = calc.clone();
            tokio::spawn(async move {
                for i in 0..calls / callers {
                    let v = (c * 1_000_000 + i) as i64;
                    assert_eq!(calc.add(v, 1).await.unwrap(), v + 1);
                }
            })
        })
        .collect();
    for t in tasks {
        within("calls", t).await.unwrap();
    }
}
