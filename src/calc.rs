//! The calculator service the examples share.

use serde::{Deserialize, Serialize};

/// An application error, delivered to the caller typed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DivError {
    /// The divisor was zero.
    DivideByZero,
}

/// A plain trait with `async fn`s becomes a service.
#[stardust::service(name = "calc.Calculator", version = "1.0.0")]
pub trait Calculator {
    /// Adds two numbers.
    async fn add(&self, a: i64, b: i64) -> i64;
    /// Divides, failing on a zero divisor.
    async fn div(&self, a: i64, b: i64) -> Result<i64, DivError>;
    /// Tells the caller who it is, as the provider sees it.
    async fn whoami(&self) -> String;
}

/// The implementation the example providers host.
#[derive(Debug, Default)]
pub struct MyCalc;

impl Calculator for MyCalc {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    async fn div(&self, a: i64, b: i64) -> Result<i64, DivError> {
        if b == 0 {
            Err(DivError::DivideByZero)
        } else {
            Ok(a / b)
        }
    }

    async fn whoami(&self) -> String {
        let ctx = stardust::Context::current().expect("handlers run with a context");
        format!(
            "app {}, from {}, trace {:016x}, {} ms left",
            ctx.caller().unwrap_or("(anonymous)"),
            ctx.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
            ctx.trace_id(),
            ctx.remaining().map(|d| d.as_millis()).unwrap_or(0)
        )
    }
}
