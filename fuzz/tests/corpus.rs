//! The committed corpora, replayed through every target without AFL++: the seeds (checked
//! against `docs/PROTOCOL.md` and the hand-made inputs of `src/seeds.rs`), whatever a fuzzing
//! campaign added to `fuzz/corpus/`, and every crash reproduction in `fuzz/regressions/`.

use std::path::{Path, PathBuf};

use stardust::discovery::api::{
    Instance, LoginReply, PublicKey, Registration, RegistryError, Status,
};
use stardust_fuzz::{TARGETS, seeds};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The files of `dir`, sorted; none if it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn committed_seeds_are_the_documented_frames_and_hand_made_inputs() {
    let write = std::env::var_os("STARDUST_FUZZ_WRITE_SEEDS").is_some();
    let seeds = seeds::all();
    for seed in &seeds {
        let path = root().join("corpus").join(seed.target).join(&seed.name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &seed.bytes).unwrap();
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run STARDUST_FUZZ_WRITE_SEEDS=1 cargo test --test corpus",
                path.display()
            )
        });
        assert_eq!(
            committed,
            seed.bytes,
            "{} differs from its seed; run STARDUST_FUZZ_WRITE_SEEDS=1 cargo test --test corpus",
            path.display()
        );
    }
    // Every example frame of the document seeds at least one target.
    for (name, _) in seeds::doc_frames() {
        assert!(
            seeds.iter().any(|s| s.name.contains(&name)),
            "PROTOCOL.md's frame `{name}` seeds no target"
        );
    }
    // Every target has seeds.
    for target in TARGETS {
        assert!(
            seeds.iter().any(|s| s.target == target.name),
            "{}",
            target.name
        );
    }
}

#[test]
fn every_corpus_file_and_crash_reproduction_replays_without_a_panic() {
    let mut replayed = 0;
    for target in TARGETS {
        let corpus = files(&root().join("corpus").join(target.name));
        assert!(!corpus.is_empty(), "no corpus for `{}`", target.name);
        let regressions = files(&root().join("regressions").join(target.name));
        for path in corpus.iter().chain(&regressions) {
            let input = std::fs::read(path).unwrap();
            let outcome = std::panic::catch_unwind(|| (target.run)(&input));
            assert!(
                outcome.is_ok(),
                "`{}` panicked on {}",
                target.name,
                path.display()
            );
            replayed += 1;
        }
    }
    println!("replayed {replayed} inputs");
}

/// The hand-made seeds get past the decoders' first refusal, so fuzzing starts deep.
#[test]
fn seeds_reach_past_the_first_check() {
    use stardust::__wire::message;
    use stardust::Service;
    use stardust::discovery::api::RegistryServer;

    for seed in seeds::all() {
        let what = format!("{}/{}", seed.target, seed.name);
        match seed.target {
            "request" => {
                let request = message::parse_request(&seed.bytes).expect(&what);
                if let Some(index) =
                    stardust_fuzz::echo::EchoClient::DESCRIPTOR.method_index(request.method)
                {
                    let server = stardust_fuzz::echo::EchoServer::new(stardust_fuzz::echo::Mirror);
                    server.call(index, request.args).expect(&what);
                }
            }
            "registry_args" => {
                let server = RegistryServer::new(NeverCalled);
                let index = usize::from(seed.bytes[0]);
                server.call(index, &seed.bytes[1..]).expect(&what);
            }
            "token" if seed.name == "valid-text" => {
                let text = std::str::from_utf8(&seed.bytes[1..]).unwrap();
                assert_eq!(stardust::auth::token::peek(text).expect(&what).kid, "k1");
            }
            "server" if seed.name == "echo-session" => {
                let answer = stardust_fuzz::targets::server::exchange(&seed.bytes).expect(&what);
                let kinds = frame_kinds(&answer);
                // HelloAck, then a Response per call but the one-way ones (every third).
                assert_eq!(kinds[0], 2, "{what}: {kinds:?}");
                let responses = kinds.iter().filter(|&&k| k == 4).count();
                assert_eq!(responses, 6, "{what}: {kinds:?}");
            }
            "monitor_http" if seed.name == "console" => {
                let harness = stardust_registry::__fuzz::MonitorHarness::new();
                let answer = harness.exchange(&seed.bytes);
                assert!(
                    answer.starts_with(b"HTTP/1.1 200 OK\r\n"),
                    "{what}: {}",
                    String::from_utf8_lossy(&answer[..answer.len().min(300)])
                );
            }
            _ => {}
        }
    }
}

/// The kind bytes of the frames in `bytes`.
fn frame_kinds(mut bytes: &[u8]) -> Vec<u8> {
    let mut kinds = Vec::new();
    while let Ok(Some(h)) = stardust::__wire::frame::parse_header(bytes, u32::MAX) {
        kinds.push(h.kind);
        bytes = &bytes[h.frame_len().min(bytes.len())..];
    }
    kinds
}

/// Argument decoding happens in `Service::call`, before any handler runs.
struct NeverCalled;

impl stardust::discovery::api::Registry for NeverCalled {
    async fn login(&self, _: String, _: String) -> Result<LoginReply, RegistryError> {
        unreachable!("calls are decoded, never run")
    }
    async fn renew(&self) -> Result<LoginReply, RegistryError> {
        unreachable!("calls are decoded, never run")
    }
    async fn public_keys(&self) -> Vec<PublicKey> {
        unreachable!("calls are decoded, never run")
    }
    async fn register(&self, _: Registration) -> Result<Instance, RegistryError> {
        unreachable!("calls are decoded, never run")
    }
    async fn deregister(&self, _: String, _: String) -> Result<bool, RegistryError> {
        unreachable!("calls are decoded, never run")
    }
    async fn heartbeat(&self, _: Status) -> Result<(), RegistryError> {
        unreachable!("calls are decoded, never run")
    }
    async fn discover(&self, _: String, _: String) -> Result<Vec<Instance>, RegistryError> {
        unreachable!("calls are decoded, never run")
    }
    async fn subscribe(&self, _: String, _: String) -> Result<Vec<Instance>, RegistryError> {
        unreachable!("calls are decoded, never run")
    }
    async fn unsubscribe(&self, _: String, _: String) -> Result<bool, RegistryError> {
        unreachable!("calls are decoded, never run")
    }
    async fn watch(
        &self,
        _: String,
        _: String,
        _: Option<stardust::discovery::api::Revision>,
    ) -> Result<stardust::discovery::api::WatchReply, RegistryError> {
        unreachable!("calls are decoded, never run")
    }
    async fn resume(&self, _: String) -> Result<LoginReply, RegistryError> {
        unreachable!("calls are decoded, never run")
    }
    async fn traffic(
        &self,
        _: String,
        _: Option<u64>,
    ) -> Result<Option<stardust::traffic::ServiceRules>, RegistryError> {
        unreachable!("calls are decoded, never run")
    }
    async fn rules(&self) -> Result<stardust::traffic::Rules, RegistryError> {
        unreachable!("calls are decoded, never run")
    }
    async fn edit_rules(
        &self,
        _: stardust::traffic::RulesEdit,
        _: Option<u64>,
    ) -> Result<u64, RegistryError> {
        unreachable!("calls are decoded, never run")
    }
    async fn services(
        &self,
    ) -> Result<Vec<stardust::discovery::api::ServiceSummary>, RegistryError> {
        unreachable!("calls are decoded, never run")
    }
    async fn describe(
        &self,
        _: String,
    ) -> Result<Vec<stardust::discovery::api::VersionDescription>, RegistryError> {
        unreachable!("calls are decoded, never run")
    }
}
