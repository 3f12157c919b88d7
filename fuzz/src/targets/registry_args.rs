//! The registry API's arguments (`discovery/api.rs`), decoded by the code
//! `#[stardust::service]` generates for `RegistryServer` — what `stardust-registry` runs on
//! every call, logged in or not, before its handlers see anything.
//!
//! Input: `[method selector, args...]`: the selector picks one of the registry's methods by
//! index, `args` is the MessagePack argument array.
//!
//! The handlers here are a recorder, not the registry: they keep the arguments they were given
//! (the real handlers need a live session), so the target checks that every decoded argument
//! list survives re-encoding unchanged, and that arguments that do not decode are refused with
//! `InvalidArguments`.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use serde::Serialize;
use serde::de::DeserializeOwned;
use stardust::discovery::api::{
    Instance, LoginReply, PublicKey, Registration, Registry, RegistryError, RegistryServer,
    Revision, ServiceSummary, Status, VersionDescription, WatchReply,
};
use stardust::traffic::{Rules, RulesEdit, ServiceRules};
use stardust::{ErrorKind, Service};

use super::roundtrip::{decodes_stably, encode};

/// Runs one input.
pub fn run(data: &[u8]) {
    let [selector, args @ ..] = data else {
        return;
    };
    let recorder = Recorder::default();
    let server = RegistryServer::new(recorder.clone());
    let methods = server.descriptor().methods;
    let index = usize::from(*selector) % methods.len();
    let mut call = match server.call(index, args) {
        Ok(call) => call,
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidArguments, "{e}");
            return;
        }
    };
    let mut cx = Context::from_waker(Waker::noop());
    assert_eq!(call.poll_call(&mut cx), Poll::Ready(()));
    let recorded = recorder.take();
    match methods[index].name {
        "login" => stable::<(String, String)>(&recorded),
        "resume" => stable::<(String,)>(&recorded),
        "watch" => stable::<(String, String, Option<Revision>)>(&recorded),
        "renew" | "public_keys" | "rules" | "services" => stable::<()>(&recorded),
        "describe" => stable::<(String,)>(&recorded),
        "traffic" => stable::<(String, Option<u64>)>(&recorded),
        "edit_rules" => stable::<(RulesEdit, Option<u64>)>(&recorded),
        "register" => stable::<(Registration,)>(&recorded),
        "heartbeat" => stable::<(Status,)>(&recorded),
        "deregister" | "discover" | "subscribe" | "unsubscribe" => {
            stable::<(String, String)>(&recorded)
        }
        other => panic!("no check for registry method `{other}`"),
    }
}

fn stable<T: Serialize + DeserializeOwned>(recorded: &[u8]) {
    assert!(
        decodes_stably::<T>(recorded).is_some(),
        "recorded arguments do not decode as {}",
        std::any::type_name::<T>()
    );
}

/// A `Registry` that records its arguments (encoded) and refuses every call.
#[derive(Debug, Clone, Default)]
struct Recorder(Arc<Mutex<Vec<u8>>>);

impl Recorder {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    fn record<T: Serialize>(&self, args: &T) -> RegistryError {
        *self.0.lock().unwrap() = encode(args);
        RegistryError::Invalid("recorded".to_owned())
    }
}

impl Registry for Recorder {
    async fn login(&self, app: String, secret: String) -> Result<LoginReply, RegistryError> {
        Err(self.record(&(app, secret)))
    }

    async fn renew(&self) -> Result<LoginReply, RegistryError> {
        Err(self.record(&()))
    }

    async fn public_keys(&self) -> Vec<PublicKey> {
        self.record(&());
        Vec::new()
    }

    async fn register(&self, registration: Registration) -> Result<Instance, RegistryError> {
        Err(self.record(&(registration,)))
    }

    async fn deregister(&self, service: String, endpoint: String) -> Result<bool, RegistryError> {
        Err(self.record(&(service, endpoint)))
    }

    async fn heartbeat(&self, status: Status) -> Result<(), RegistryError> {
        Err(self.record(&(status,)))
    }

    async fn discover(
        &self,
        service: String,
        version_req: String,
    ) -> Result<Vec<Instance>, RegistryError> {
        Err(self.record(&(service, version_req)))
    }

    async fn subscribe(
        &self,
        service: String,
        version_req: String,
    ) -> Result<Vec<Instance>, RegistryError> {
        Err(self.record(&(service, version_req)))
    }

    async fn watch(
        &self,
        service: String,
        version_req: String,
        known: Option<Revision>,
    ) -> Result<WatchReply, RegistryError> {
        Err(self.record(&(service, version_req, known)))
    }

    async fn resume(&self, token: String) -> Result<LoginReply, RegistryError> {
        Err(self.record(&(token,)))
    }

    async fn unsubscribe(
        &self,
        service: String,
        version_req: String,
    ) -> Result<bool, RegistryError> {
        Err(self.record(&(service, version_req)))
    }

    async fn traffic(
        &self,
        service: String,
        known: Option<u64>,
    ) -> Result<Option<ServiceRules>, RegistryError> {
        Err(self.record(&(service, known)))
    }

    async fn rules(&self) -> Result<Rules, RegistryError> {
        Err(self.record(&()))
    }

    async fn edit_rules(
        &self,
        edit: RulesEdit,
        if_revision: Option<u64>,
    ) -> Result<u64, RegistryError> {
        Err(self.record(&(edit, if_revision)))
    }

    async fn services(&self) -> Result<Vec<ServiceSummary>, RegistryError> {
        Err(self.record(&()))
    }

    async fn describe(&self, service: String) -> Result<Vec<VersionDescription>, RegistryError> {
        Err(self.record(&(service,)))
    }
}
