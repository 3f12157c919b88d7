use std::time::Duration;

use stardust::{Call, Client, Error, MethodDescriptor, Server, Service, ServiceDescriptor};

static DESC: ServiceDescriptor = ServiceDescriptor {
    name: "calc.Calculator",
    version: "1.0.0",
    methods: &[
        MethodDescriptor {
            name: "add",
            idempotent: false,
        },
        MethodDescriptor {
            name: "sleep",
            idempotent: false,
        },
    ],
};

struct Calc;

impl Service for Calc {
    fn descriptor(&self) -> &'static ServiceDescriptor {
        &DESC
    }
    fn call(&self, method: usize, args: &[u8]) -> Result<Call, Error> {
        match method {
            0 => {
                let (a, b) = stardust::__private::decode_args::<(i64, i64)>(args, 2)?;
                Ok(Call::new(async move { a + b }))
            }
            1 => {
                let (ms,) = stardust::__private::decode_args::<(u64,)>(args, 1)?;
                Ok(Call::new(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    ms
                }))
            }
            _ => Err(stardust::__private::unknown_method(&DESC, method)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let server = Server::builder()
        .serve(Calc)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let client = Client::connect(server.local_addr()).await.unwrap();
    let r: i64 = client.call(&DESC, 0, &(1i64, 2i64)).await.unwrap();
    assert_eq!(r, 3);
    let r: u64 = client.call(&DESC, 1, &(20u64,)).await.unwrap();
    assert_eq!(r, 20);
    let mut tasks = Vec::new();
    for i in 0..200i64 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let r: i64 = c.call(&DESC, 0, &(i, i)).await.unwrap();
            assert_eq!(r, 2 * i);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let e = client
        .with_timeout(Duration::from_millis(50))
        .call::<_, u64>(&DESC, 1, &(5000u64,))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), stardust::ErrorKind::DeadlineExceeded, "{e}");
    server.shutdown().await;
}
