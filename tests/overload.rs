//! Overload protection: a greedy connection gets `Overloaded` for calls over its cap while others
//! keep being served, and connections over the server's cap are turned away with a reason.

mod common;

use common::*;
use stardust::{ErrorKind, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_the_in_flight_cap_are_refused_and_others_keep_working() {
    const CAP: usize = 20;
    let builder = Server::builder()
        .allow_anonymous()
        .max_in_flight_per_connection(CAP);
    let (server, mut control) = start_server_with(builder).await;
    let greedy = CalcClient::connect(server.local_addr()).await.unwrap();
    let polite = CalcClient::connect(server.local_addr()).await.unwrap();

    // Fill the greedy connection up to its cap with calls that wait for the test.
    let held: Vec<_> = (0..CAP as u64)
        .map(|key| {
            let c = greedy.clone();
            tokio::spawn(async move { c.gate(key).await })
        })
        .collect();
    for _ in 0..CAP {
        assert!(matches!(control.next().await, Event::Entered(_)));
    }
    // A handler reports it entered during its first poll, just before its call is counted as
    // running (it becomes a task of its own right after): wait for the count, not the event.
    within("every held call to count as running", async {
        while server.in_flight() != CAP {
            tokio::task::yield_now().await;
        }
    })
    .await;

    // Everything beyond the cap is refused at once, without reaching a handler.
    let excess: Vec<_> = (0..500u64)
        .map(|i| {
            let c = greedy.clone();
            tokio::spawn(async move { c.gate(1000 + i).await })
        })
        .collect();
    for call in excess {
        let err = within("an over-cap call", call).await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Overloaded, "{err}");
        assert!(err.is_not_delivered());
    }
    // While at its cap the greedy connection gets nothing else in, even a quick call...
    assert_eq!(
        greedy.add(1, 1).await.unwrap_err().kind(),
        ErrorKind::Overloaded
    );
    // ...and the other connection is served as usual.
    for i in 0..100 {
        assert_eq!(polite.add(i, 1).await.unwrap(), i + 1);
    }

    for key in 0..CAP as u64 {
        control.release(key);
    }
    for (key, call) in held.into_iter().enumerate() {
        assert_eq!(
            within("a held call", call).await.unwrap().unwrap(),
            key as u64
        );
    }
    // Calls that finish never stay counted: the connection takes calls again.
    within("running calls to drain", async {
        while server.in_flight() != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(greedy.add(2, 2).await.unwrap(), 4);
    // No handler of a refused call ever ran.
    while let Ok(event) = control.events.try_recv() {
        assert!(
            !matches!(event, Event::Entered(k) if k >= 1000),
            "a refused call reached its handler: {event:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_turned_away_with_a_reason() {
    let builder = Server::builder().allow_anonymous().max_connections(2);
    let (server, _control) = start_server_with(builder).await;
    let first = CalcClient::connect(server.local_addr()).await.unwrap();
    let second = CalcClient::connect(server.local_addr()).await.unwrap();
    assert_eq!(first.add(1, 1).await.unwrap(), 2);
    assert_eq!(second.add(1, 1).await.unwrap(), 2);
    within("two connections registered", async {
        while server.connection_count() != 2 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    let err = CalcClient::connect(server.local_addr()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Overloaded, "{err}");
    assert!(err.to_string().contains("limit of 2 connections"), "{err}");

    // Room again once a client leaves.
    drop(first);
    within("the connection to close", async {
        while server.connection_count() != 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let third = CalcClient::connect(server.local_addr()).await.unwrap();
    assert_eq!(third.add(2, 2).await.unwrap(), 4);
}
