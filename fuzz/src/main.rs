//! The AFL++ entry point: `stardust-fuzz TARGET` (`--list` names them), built with `cargo afl build --features afl`
//! and run under `cargo afl fuzz` (see `run-all.sh`). Without AFL++ the same target functions
//! run on the committed corpus in `cargo test`.

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    if name == "--list" {
        stardust_fuzz::TARGETS
            .iter()
            .for_each(|t| println!("{}", t.name));
        return;
    }
    let Some(target) = stardust_fuzz::target(&name) else {
        let names: Vec<_> = stardust_fuzz::TARGETS.iter().map(|t| t.name).collect();
        eprintln!(
            "usage: stardust-fuzz TARGET  (one of: {})",
            names.join(", ")
        );
        std::process::exit(2);
    };
    let run = target.run;
    afl::fuzz!(|data: &[u8]| run(data));
}
