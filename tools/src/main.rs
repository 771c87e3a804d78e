//! `edgeinfer`: the command-line client, load generator, engine bench and doctor.
//!
//! Exit codes: 0 success, 1 an error (printed with its causes), 2 bad usage (clap).
//! A broken pipe on stdout is success.

mod bench_mux;
mod client_cmds;
mod engine_cmds;
mod features_cmds;
mod fleet_cmds;
mod fleet_sim;
mod release_cmds;
mod rollout_cmds;
mod tuf_cmds;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "edgeinfer",
    version,
    about = "edgeinfer CLI: client, load generator, engine bench, doctor"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// What this machine offers: cores, GPU (NVML), ONNX Runtime, tract.
    Doctor(engine_cmds::DoctorArgs),
    /// Time one model in-process on one engine.
    BenchEngine(engine_cmds::BenchEngineArgs),
    /// Send one PREDICT to a running server and print the outputs.
    Predict(client_cmds::PredictArgs),
    /// The server's models, versions, engines and readiness (HELLO + HEALTH).
    Status(client_cmds::StatusArgs),
    /// Load-generate against a server, the echo baseline, or an HTTP peer; HDR percentiles.
    Bench(client_cmds::BenchArgs),
    /// Echo 128-byte messages (the loopback ping-pong baseline for `bench --echo`).
    EchoServer(client_cmds::EchoServerArgs),
    /// TUF client: init, refresh, download (the conformance suite's CLI).
    Tuf(tuf_cmds::TufArgs),
    /// The LMDB feature store: import CSV/Parquet, get an entity, stats, backup.
    Features(features_cmds::FeaturesArgs),
    /// Releases: keys gen, repo init, root rotate, release create|sign|status|publish, verify.
    #[command(flatten)]
    Release(release_cmds::Commands),
    /// Fleet rollout: set the signed rollout directive, show where devices land.
    Rollout(rollout_cmds::RolloutArgs),
    /// The fleet's telemetry live (`fleet watch`), and the N-device simulation (`fleet simulate`).
    Fleet(fleet_cmds::FleetArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Doctor(a) => engine_cmds::doctor(a),
        Command::BenchEngine(a) => engine_cmds::bench_engine(a),
        Command::Predict(a) => client_cmds::predict(a),
        Command::Status(a) => client_cmds::status(a),
        Command::Bench(a) => client_cmds::bench(a),
        Command::EchoServer(a) => client_cmds::echo_server(a),
        Command::Tuf(a) => tuf_cmds::tuf(a),
        Command::Features(a) => features_cmds::features(a),
        Command::Release(c) => release_cmds::run(c),
        Command::Rollout(a) => rollout_cmds::rollout(a),
        Command::Fleet(a) => fleet_cmds::fleet(a),
    };
    if let Err(err) = result {
        if is_broken_pipe(&err) {
            std::process::exit(0);
        }
        eprintln!("edgeinfer: {err:#}");
        std::process::exit(1);
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}
