//! Everything `#[stardust::service]` accepts, in one file, using only `stardust` and `serde`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use stardust::{MethodDescriptor, Service, ServiceClient};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub x: f64,
    pub y: f64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum DivError {
    DivisionByZero,
}

/// A calculator.
#[stardust::service(name = "calc.Calculator", version = "1.2.0")]
pub trait Calculator {
    /// Adds two numbers.
    async fn add(&self, a: i64, b: i64) -> i64;

    /// Divides, reporting division by zero as an application error.
    async fn div(&self, a: i64, b: i64) -> Result<i64, DivError>;

    async fn norm(&self, point: Point) -> f64;

    #[stardust(idempotent)]
    async fn ping(&self);

    #[stardust(idempotent)]
    async fn centroid(&self, points: Vec<Point>, weights: Option<Vec<f64>>, label: String) -> Point;
}

struct MyCalculator;

impl Calculator for MyCalculator {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    async fn div(&self, a: i64, b: i64) -> Result<i64, DivError> {
        a.checked_div(b).ok_or(DivError::DivisionByZero)
    }

    async fn norm(&self, point: Point) -> f64 {
        point.x.hypot(point.y)
    }

    async fn ping(&self) {}

    async fn centroid(&self, points: Vec<Point>, _weights: Option<Vec<f64>>, _label: String) -> Point {
        let n = points.len() as f64;
        let (x, y) = points.iter().fold((0.0, 0.0), |(x, y), p| (x + p.x, y + p.y));
        Point { x: x / n, y: y / n }
    }
}

/// A second service in the same file, written to trip up careless code generation: names that
/// collide with the macro's own locals, std items, and the server's type parameter.
mod shadowing {
    #![allow(dead_code)]

    use serde::{Deserialize, Serialize};

    // Items a generated `Result`, `Arc`, `Ok` or `T` must not pick up.
    pub type Result<T> = core::result::Result<T, String>;
    pub struct Arc;
    pub struct Ok;
    #[derive(Debug, Serialize, Deserialize)]
    pub struct T(pub u8);

    #[stardust::service]
    pub(crate) trait Shadowing {
        async fn collide(&self, inner: u32, method: u32, args: u32, self_: u32) -> u32;
        async fn single(&self, inner: T) -> Result<u8>;
        /// A method named like `Arc::clone`.
        async fn clone(&self) -> String;
    }

    pub(crate) struct Impl;

    impl Shadowing for Impl {
        async fn collide(&self, inner: u32, method: u32, args: u32, self_: u32) -> u32 {
            inner * 1000 + method * 100 + args * 10 + self_
        }

        async fn single(&self, inner: T) -> Result<u8> {
            core::result::Result::Ok(inner.0)
        }

        async fn clone(&self) -> String {
            "cloned".to_owned()
        }
    }
}

/// A service with no methods at all.
#[stardust::service(version = "0.0.1")]
pub trait Empty {}

impl Empty for () {}

fn assert_send<F: Send>(future: F) -> F {
    future
}

/// The client's methods have the expected types, and their futures are `Send`.
#[allow(dead_code)]
async fn use_client(client: CalculatorClient) -> Result<(), stardust::Error> {
    let sum: i64 = assert_send(client.add(1, 2)).await?;
    let quotient: Result<i64, DivError> = assert_send(client.div(1, 0)).await?;
    let (): () = assert_send(client.ping()).await?;
    let point: Point = client.centroid(vec![], None, String::new()).await?;
    let _ = (sum, quotient, point);

    let patient: CalculatorClient = client.with_timeout(Duration::from_secs(5));
    let _: &stardust::Client = patient.client();
    let _: CalculatorClient = CalculatorClient::new(patient.client().clone());
    let _: CalculatorClient = <CalculatorClient as ServiceClient>::from_client(patient.client().clone());
    let _: CalculatorClient = assert_send(CalculatorClient::connect("127.0.0.1:7000")).await?;

    let other = shadowing::ShadowingClient::connect(("127.0.0.1", 7000)).await?;
    let _: u32 = other.collide(1, 2, 3, 4).await?;
    let _: shadowing::Result<u8> = other.single(shadowing::T(7)).await?;
    let _: String = other.clone().await?;
    Ok(())
}

fn main() {
    let server = CalculatorServer::new(MyCalculator);
    let descriptor = server.descriptor();
    assert_eq!(descriptor, CalculatorClient::DESCRIPTOR);
    assert_eq!(<CalculatorClient as ServiceClient>::DESCRIPTOR, CalculatorClient::DESCRIPTOR);
    assert_eq!(descriptor.name, "calc.Calculator");
    assert_eq!(descriptor.version, "1.2.0");
    let flags: Vec<_> = descriptor
        .methods
        .iter()
        .map(|m: &MethodDescriptor| (m.name, m.idempotent, m.input_stream, m.output_stream))
        .collect();
    assert_eq!(
        flags,
        [
            ("add", false, false, false),
            ("div", false, false, false),
            ("norm", false, false, false),
            ("ping", true, false, false),
            ("centroid", true, false, false),
        ]
    );
    // What tools show: docs, and signatures as written.
    assert_eq!(descriptor.docs, "A calculator.");
    let add = &descriptor.methods[0];
    assert_eq!(add.docs, "Adds two numbers.");
    assert_eq!(
        add.args,
        [
            stardust::ArgDescriptor { name: "a", ty: "i64" },
            stardust::ArgDescriptor { name: "b", ty: "i64" },
        ]
    );
    assert_eq!(add.returns, "i64");
    assert_eq!(descriptor.methods[1].returns, "Result<i64, DivError>");
    assert_eq!(descriptor.methods[3].returns, "()");
    let centroid = &descriptor.methods[4];
    let types: Vec<&str> = centroid.args.iter().map(|a| a.ty).collect();
    assert_eq!(types, ["Vec<Point>", "Option<Vec<f64>>", "String"]);
    assert_eq!(descriptor.method_index("ping"), Some(3));

    // The server is cheap to clone (no `Clone` bound on the implementation), can share an
    // existing `Arc`, and is usable as a `dyn Service`.
    let _copy: CalculatorServer<MyCalculator> = server.clone();
    let shared = std::sync::Arc::new(MyCalculator);
    let _from_arc = CalculatorServer::from_arc(shared);
    let hosted: std::sync::Arc<dyn Service> = std::sync::Arc::new(server);
    assert!(hosted.call(5, &[]).is_err(), "method 5 does not exist");
    assert!(format!("{:?}", CalculatorServer::new(MyCalculator)).contains("CalculatorServer"));

    let shadowing = shadowing::ShadowingServer::new(shadowing::Impl);
    let descriptor = shadowing.descriptor();
    assert_eq!(descriptor.name, "Shadowing");
    assert_eq!(descriptor.version, "1.0.0");
    let names: Vec<(&str, bool)> = descriptor.methods.iter().map(|m| (m.name, m.idempotent)).collect();
    assert_eq!(names, [("collide", false), ("single", false), ("clone", false)]);

    let empty = EmptyServer::new(());
    assert_eq!(empty.descriptor().name, "Empty");
    assert_eq!(empty.descriptor().version, "0.0.1");
    assert!(empty.descriptor().methods.is_empty());
    assert!(empty.call(0, &[0x90]).is_err());
}
