//! `edgeinfer predict`, `status`, `bench` and `echo-server`: the protocol client commands, the
//! load generator, and the loopback baseline the generator is compared against.
//!
//! The load generator runs one OS thread per connection, each with the blocking client and
//! one request outstanding. That is the lowest-latency client there is (no runtime, no
//! demultiplexing, one write and usually one read per request), it matches how a program on
//! the box calls the daemon, and it keeps the generator's own cost the same for every target
//! (daemon, echo server, HTTP peers). Open-loop runs (`--rate`) keep one request outstanding
//! per connection too, but measure each latency from the request's *intended* send time, so a
//! stalled server shows up as queueing in the percentiles instead of silently lowering the
//! offered load (coordinated omission), as wrk2 does.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use edgeinfer_client::blocking::Client;
use edgeinfer_client::shm::ShmClient;
use edgeinfer_client::{Endpoint, PredictOptions};
use edgeinfer_proto::{self as proto, DType, ErrorResponse, Opcode, Tensor};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Size of one echo ping-pong message: the loopback baseline of the issue.
const ECHO_LEN: usize = 128;
/// Features per row when `bench --http` is given no `--input`: the churn model's width.
const DEFAULT_HTTP_FEATURES: usize = 20;
/// Value of every feature when the input is not given.
const DEFAULT_FEATURE: f64 = 0.5;

#[derive(clap::Args, Clone, Debug)]
pub struct Target {
    /// Unix socket of the server.
    #[arg(long, value_name = "PATH", conflicts_with = "addr")]
    pub socket: Option<PathBuf>,
    /// TCP address of the server.
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: Option<String>,
    /// File holding the server's token (its `server.auth_token_file`): sent in a HELLO
    /// before anything else.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

impl Target {
    fn endpoint(&self) -> anyhow::Result<Endpoint> {
        match (&self.socket, &self.addr) {
            (Some(p), None) => Ok(Endpoint::Unix(p.clone())),
            (None, Some(a)) => Ok(Endpoint::Tcp(a.clone())),
            _ => bail!("give the server as --socket PATH or --addr HOST:PORT"),
        }
    }

    /// The token from `--token-file`, whitespace trimmed.
    fn token(&self) -> anyhow::Result<Option<String>> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the token from {}", path.display()))?;
        Ok(Some(text.trim().to_owned()))
    }
}

/// Connects; a socket that is missing or refuses says the daemon may not be running.
fn connect(endpoint: &Endpoint) -> anyhow::Result<Client> {
    Client::connect(endpoint).map_err(|e| {
        let down = match &e {
            edgeinfer_client::ClientError::Io(io) => matches!(
                io.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ),
            _ => false,
        };
        let e = anyhow::Error::new(e);
        if down {
            e.context(format!(
                "connecting to {endpoint}: nothing is listening there; edgeinferd may not be \
                 running (start it with tools/run-demo.sh, or check `systemctl status edgeinferd`)"
            ))
        } else {
            e.context(format!("connecting to {endpoint}"))
        }
    })
}

/// For an UNKNOWN_MODEL refusal, the models the daemon does have (by HEALTH), so the
/// message says what to ask for instead.
fn with_loaded_models(client: &mut Client, e: edgeinfer_client::ClientError) -> anyhow::Error {
    if e.server_code() != Some(proto::ErrorCode::UnknownModel) {
        return e.into();
    }
    let loaded = match client.health() {
        Ok(h) => {
            let mut names: Vec<String> = h.models.iter().map(|m| m.name.clone()).collect();
            names.dedup();
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        }
        Err(_) => return e.into(),
    };
    anyhow::Error::new(e).context(format!("the daemon serves: {loaded}"))
}

/// Connects and, with a token, authenticates with a HELLO first.
fn connect_as(endpoint: &Endpoint, token: Option<&str>) -> anyhow::Result<Client> {
    let mut client = connect(endpoint)?;
    if let Some(t) = token {
        client
            .hello_with_token(t)
            .context("HELLO with the token from --token-file")?;
    }
    Ok(client)
}

#[derive(clap::Args, Clone, Debug)]
pub struct InputArgs {
    /// One row of input values, comma-separated; repeat the flag for more rows.
    #[arg(long, value_name = "V1,V2,...", allow_hyphen_values = true)]
    pub input: Vec<String>,
    /// Send the given rows this many times over (batch = rows given × this).
    #[arg(long, default_value_t = 1, value_name = "R")]
    pub rows: u64,
    /// Input tensor name (default: the model's only input, from METADATA).
    #[arg(long)]
    pub input_name: Option<String>,
    /// Input dtype: f32, f64, i64, i32, u8 or bool (default: from METADATA).
    #[arg(long)]
    pub dtype: Option<DType>,
    /// Pin a model version.
    #[arg(long)]
    pub version: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub input: InputArgs,
    /// Outputs wanted, by name (default: all).
    #[arg(long = "output", value_name = "NAME")]
    pub outputs: Vec<String>,
    /// Deadline in microseconds from the server's receipt.
    #[arg(long)]
    pub deadline_us: Option<u64>,
    /// A/B routing key.
    #[arg(long)]
    pub routing_key: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub target: Target,
    /// Ping-pong 128-byte messages with `edgeinfer echo-server`: the loopback baseline.
    #[arg(long, conflicts_with_all = ["http", "model"])]
    pub echo: bool,
    /// POST `{"features": [[...]]}` to this http:// URL over keep-alive HTTP/1.1.
    #[arg(long, value_name = "URL", conflicts_with_all = ["socket", "addr", "model"])]
    pub http: Option<String>,
    /// Model to PREDICT on (the default target).
    #[arg(long)]
    pub model: Option<String>,
    /// PREDICT over the shared-memory transport (docs/protocol.md §11): each connection
    /// asks for rings in its HELLO over the Unix socket, then writes its requests into the
    /// request ring and reads the answers where the server put them.
    #[arg(long, conflicts_with_all = ["echo", "http", "addr"])]
    pub shm: bool,
    /// With --shm: bytes asked for each ring.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES", requires = "shm")]
    pub shm_ring_bytes: u64,
    /// With --shm: microseconds the client polls for its answer before it sleeps on the
    /// doorbell (0 = sleep at once). It never polls while the server's session runs on
    /// the client's own CPU.
    #[arg(long, value_name = "US", requires = "shm")]
    pub shm_spin_us: Option<u64>,
    /// Connections, one thread each.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// PREDICT only: run the connections on this many threads, each waiting on all of its
    /// sockets with poll(2), instead of one blocking thread per connection (a cheaper
    /// generator for throughput runs; see bench_mux.rs). Closed loop, no token.
    #[arg(long, value_name = "N", conflicts_with_all = ["rate", "echo", "http", "token_file"])]
    pub threads: Option<usize>,
    /// With --threads: requests outstanding per connection (each its own 1-request PREDICT,
    /// answered on its own; the replacements for one read's answers go out in one write).
    /// Report a pipelined figure beside the unpipelined one (1, the default), not instead.
    #[arg(long, default_value_t = 1, value_name = "D", requires = "threads")]
    pub pipeline: usize,
    /// Measured seconds, after the warm-up.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub duration: f64,
    /// Offered load in requests/s over all connections (open loop); default: closed loop.
    #[arg(long, value_name = "RPS")]
    pub rate: Option<f64>,
    /// Unmeasured seconds before the measurement.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub warmup: f64,
    #[command(flatten)]
    pub input: InputArgs,
    /// Print JSON: requests (succeeded), errors, p50_us, p90_us, p99_us, max_us,
    /// throughput_rps (succeeded per second) and the run's settings.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct EchoServerArgs {
    #[command(flatten)]
    pub target: Target,
}

// === predict ===

/// The input tensor from `--input` rows, named and typed from the flags or the model's
/// METADATA. With `fill_when_missing` and no `--input`, one row of [`DEFAULT_FEATURE`]s as
/// wide as the model input.
fn build_input(
    client: &mut Client,
    model: &str,
    a: &InputArgs,
    fill_when_missing: bool,
) -> anyhow::Result<Tensor> {
    let (name, dtype, rank, width) = match (&a.input_name, a.dtype) {
        (Some(n), Some(d)) => (n.clone(), d, 2, None),
        _ => {
            let md = match client.metadata(model, a.version.as_deref()) {
                Ok(md) => md,
                Err(e) => {
                    return Err(with_loaded_models(client, e).context(format!(
                        "asking for {model:?}'s metadata (--input-name and --dtype skip it)"
                    )))
                }
            };
            let spec = match &a.input_name {
                Some(n) => md
                    .inputs
                    .iter()
                    .find(|s| &s.name == n)
                    .ok_or_else(|| anyhow!("model {model:?} has no input {n:?}"))?,
                None => match md.inputs.as_slice() {
                    [one] => one,
                    many => bail!(
                        "model {model:?} has {} inputs; pick one with --input-name",
                        many.len()
                    ),
                },
            };
            let dtype = match a.dtype {
                Some(d) => d,
                None => DType::from_code(spec.dtype).ok_or_else(|| {
                    anyhow!(
                        "input {:?} has dtype code {}, unknown to this client",
                        spec.name,
                        spec.dtype
                    )
                })?,
            };
            let width = spec
                .shape
                .last()
                .and_then(|&d| usize::try_from(d).ok())
                .filter(|&d| d > 0);
            (spec.name.clone(), dtype, spec.shape.len(), width)
        }
    };
    let rows: Vec<Vec<f64>> = if a.input.is_empty() {
        let width = width
            .filter(|_| fill_when_missing)
            .ok_or_else(|| anyhow!("give the input values with --input 'v1,v2,...'"))?;
        vec![vec![DEFAULT_FEATURE; width]]
    } else {
        a.input
            .iter()
            .map(|r| parse_row(r))
            .collect::<anyhow::Result<_>>()?
    };
    let n = rows[0].len();
    if let Some(bad) = rows.iter().find(|r| r.len() != n) {
        bail!("rows differ in length: {n} and {}", bad.len());
    }
    if let Some(w) = width.filter(|&w| rank == 2 && w != n) {
        bail!("model {model:?} input {name:?}: expected {w} values per row, got {n}");
    }
    let total_rows = (rows.len() as u64)
        .checked_mul(a.rows)
        .filter(|&r| r > 0)
        .ok_or_else(|| anyhow!("--rows must be at least 1"))?;
    let mut values = Vec::with_capacity(n * total_rows as usize);
    for _ in 0..a.rows {
        for r in &rows {
            values.extend_from_slice(r);
        }
    }
    let shape = if rank == 1 {
        vec![total_rows * n as u64]
    } else {
        vec![total_rows, n as u64]
    };
    Tensor::from_f64_as(name, dtype, shape, &values).context("input")
}

fn parse_row(row: &str) -> anyhow::Result<Vec<f64>> {
    row.split(',')
        .map(|v| {
            let v = v.trim();
            v.parse::<f64>()
                .with_context(|| format!("input value {v:?} is not a number"))
        })
        .collect()
}

fn values_json(t: &Tensor) -> Value {
    match t.dtype {
        DType::I64 => json!(t.to_i64()),
        DType::I32 => json!(t.to_i32()),
        DType::U8 => json!(t.to_u8()),
        DType::Bool => json!(t.to_bool()),
        DType::F32 | DType::F64 => json!(t.values_f64()),
    }
}

pub fn predict(a: PredictArgs) -> anyhow::Result<()> {
    let endpoint = a.target.endpoint()?;
    let mut client = connect_as(&endpoint, a.target.token()?.as_deref())?;
    let input = build_input(&mut client, &a.model, &a.input, false)?;
    let opts = PredictOptions {
        version: a.input.version.clone(),
        outputs: a.outputs.clone(),
        deadline: a.deadline_us.map(Duration::from_micros),
        routing_key: a.routing_key.clone().unwrap_or_default().into_bytes(),
    };
    let start = Instant::now();
    let r = match client.predict(&a.model, &[input.view()], &opts) {
        Ok(r) => r,
        Err(e) => {
            return Err(with_loaded_models(&mut client, e).context(format!("PREDICT {:?}", a.model)))
        }
    };
    let latency_us = start.elapsed().as_secs_f64() * 1e6;
    let mut out = std::io::stdout().lock();
    if a.json {
        let outputs: Vec<Value> = r
            .outputs
            .iter()
            .map(|t| json!({"name": t.name, "dtype": t.dtype.name(), "shape": t.shape, "values": values_json(t)}))
            .collect();
        let v = json!({
            "model": r.model, "version": r.version, "backend": r.backend,
            "latency_us": round2(latency_us), "queue_us": r.queue_us, "compute_us": r.compute_us,
            "outputs": outputs,
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "{} version {} on {}: {:.1} µs round trip (queued {} µs, computed {} µs)",
            r.model, r.version, r.backend, latency_us, r.queue_us, r.compute_us
        )?;
        for t in &r.outputs {
            writeln!(
                out,
                "{} {} {:?}: {}",
                t.name,
                t.dtype,
                t.shape,
                values_json(t)
            )?;
        }
    }
    Ok(())
}

// === status ===

pub fn status(a: StatusArgs) -> anyhow::Result<()> {
    let endpoint = a.target.endpoint()?;
    let mut client = connect(&endpoint)?;
    let token = a.target.token()?;
    let hello = client
        .hello_with_token(token.as_deref().unwrap_or(""))
        .context("HELLO")?;
    let health = client.health().context("HEALTH")?;
    // How each engine was chosen, and what fell back and why (the README promises it):
    // the load report METADATA carries, one request per version.
    let mut reports = Vec::with_capacity(health.models.len());
    for m in &health.models {
        let md = client
            .metadata(&m.name, Some(&m.version))
            .with_context(|| format!("METADATA {:?} version {:?}", m.name, m.version))?;
        reports.push(serde_json::from_str::<Value>(&md.load_report).unwrap_or(Value::Null));
    }
    let mut out = std::io::stdout().lock();
    if a.json {
        let models: Vec<Value> = health
            .models
            .iter()
            .zip(&reports)
            .map(|(m, report)| {
                json!({"name": m.name, "version": m.version, "backend": m.backend, "ready": m.ready,
                       "default": m.default, "requests": m.requests, "errors": m.errors,
                       "engine_reason": report["reason"], "fallbacks": report["fallbacks"]})
            })
            .collect();
        let v = json!({
            "endpoint": endpoint.to_string(), "server": hello.server, "protocol": hello.version,
            "max_frame_bytes": hello.max_frame_bytes, "max_in_flight": hello.max_in_flight,
            "ready": health.ready, "models": models,
        });
        writeln!(out, "{v}")?;
        return Ok(());
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    writeln!(
        out,
        "{} at {endpoint} (protocol {}): {}",
        hello.server,
        hello.version,
        if health.ready { "ready" } else { "NOT READY" }
    )?;
    let mut rows = vec![[
        "MODEL", "VERSION", "BACKEND", "READY", "DEFAULT", "REQUESTS", "ERRORS",
    ]
    .map(String::from)];
    for m in &health.models {
        rows.push([
            m.name.clone(),
            m.version.clone(),
            m.backend.clone(),
            yes(m.ready).into(),
            yes(m.default).into(),
            m.requests.to_string(),
            m.errors.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    for (m, report) in health.models.iter().zip(&reports) {
        if let Some(reason) = report["reason"].as_str() {
            writeln!(out, "{} {}: engine {reason}", m.name, m.version)?;
        }
        for f in report["fallbacks"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "  fallback {}: {}",
                f["backend"].as_str().unwrap_or("?"),
                f["reason"].as_str().unwrap_or("?")
            )?;
        }
    }
    Ok(())
}

// === bench ===

/// What one request/answer exchange came to, when the connection itself held up.
enum Outcome {
    Ok,
    /// The server answered with an error; the message is kept for the report.
    Refused(String),
}

/// One connection's way of doing a request and waiting for its answer.
trait Exchange: Send {
    fn exchange(&mut self) -> anyhow::Result<Outcome>;
}

type Connector = Arc<dyn Fn() -> anyhow::Result<Box<dyn Exchange>> + Send + Sync>;

struct PredictExchange {
    client: Client,
    /// Encoded once; only the request id changes between sends.
    frame: Vec<u8>,
}

impl Exchange for PredictExchange {
    fn exchange(&mut self) -> anyhow::Result<Outcome> {
        let id = self.client.send_frame(&mut self.frame)?;
        let (h, body) = self.client.recv_frame()?;
        if h.request_id != id {
            bail!("answer to request {} while waiting for {id}", h.request_id);
        }
        Ok(outcome_of(&h, body))
    }
}

/// A PREDICT answer as the bench counts it.
fn outcome_of(h: &proto::Header, body: &[u8]) -> Outcome {
    if h.opcode == Opcode::PredictResponse.as_u8() {
        return Outcome::Ok;
    }
    let why = match proto::decode_message::<ErrorResponse>(h, body) {
        Ok(e) => format!(
            "{}: {}",
            e.error_code().map_or("UNKNOWN_CODE", |c| c.name()),
            e.message
        ),
        Err(_) => format!("answer with opcode {:#04x}", h.opcode),
    };
    Outcome::Refused(why)
}

/// One PREDICT over shared memory: the input is written into the request ring in place
/// of an encoded frame, and the answer is looked at where the server wrote it.
struct ShmExchange {
    client: ShmClient,
    model: String,
    input: Tensor,
    opts: PredictOptions,
}

impl Exchange for ShmExchange {
    fn exchange(&mut self) -> anyhow::Result<Outcome> {
        let t = &self.input;
        let mut req = self.client.begin_predict(
            &self.model,
            &[(t.name.as_str(), t.dtype, &t.shape)],
            &self.opts,
        )?;
        req.input(0).copy_from_slice(&t.data);
        let id = req.send();
        let (h, body) = self.client.recv_frame()?;
        if h.request_id != id {
            bail!("answer to request {} while waiting for {id}", h.request_id);
        }
        Ok(outcome_of(&h, body))
    }
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn connect(endpoint: &Endpoint) -> anyhow::Result<Stream> {
        Ok(match endpoint {
            Endpoint::Unix(p) => Stream::Unix(UnixStream::connect(p)?),
            Endpoint::Tcp(a) => {
                let s = TcpStream::connect(a.as_str())?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
        })
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct EchoExchange {
    stream: Stream,
    msg: [u8; ECHO_LEN],
    buf: [u8; ECHO_LEN],
}

impl Exchange for EchoExchange {
    fn exchange(&mut self) -> anyhow::Result<Outcome> {
        self.stream.write_all(&self.msg)?;
        self.stream.read_exact(&mut self.buf)?;
        if self.buf != self.msg {
            bail!("the echo server sent back different bytes");
        }
        Ok(Outcome::Ok)
    }
}

/// A hand-written HTTP/1.1 client: one fixed request, responses with Content-Length or
/// chunked bodies. A full client (hyper, reqwest) would bring a runtime and a pool whose
/// overhead would differ from the binary-protocol path and blur the comparison; the peers only
/// ever answer this one request shape.
struct HttpExchange {
    addr: String,
    request: Arc<Vec<u8>>,
    conn: Option<(TcpStream, BufReader<TcpStream>)>,
    line: String,
    body: Vec<u8>,
}

impl HttpExchange {
    fn new(addr: String, request: Arc<Vec<u8>>) -> HttpExchange {
        HttpExchange {
            addr,
            request,
            conn: None,
            line: String::new(),
            body: Vec::new(),
        }
    }

    fn read_line<'a>(
        r: &mut BufReader<TcpStream>,
        line: &'a mut String,
    ) -> anyhow::Result<&'a str> {
        line.clear();
        if r.read_line(line)? == 0 {
            bail!("the HTTP server closed the connection");
        }
        Ok(line.trim_end())
    }

    /// Sends the request and reads the answer into `self.body`; returns the status code.
    fn round_trip(&mut self) -> anyhow::Result<u16> {
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr.as_str())
                .with_context(|| format!("connecting to {}", self.addr))?;
            s.set_nodelay(true)?;
            self.conn = Some((s.try_clone()?, BufReader::with_capacity(16 << 10, s)));
        }
        let Some((w, r)) = self.conn.as_mut() else {
            unreachable!("connected above")
        };
        w.write_all(&self.request)?;
        let status_line = Self::read_line(r, &mut self.line)?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad HTTP status line {status_line:?}"))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            let h = Self::read_line(r, &mut self.line)?;
            if h.is_empty() {
                break;
            }
            let Some((name, value)) = h.split_once(':') else {
                bail!("bad HTTP header {h:?}");
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(
                    value
                        .parse::<usize>()
                        .with_context(|| format!("Content-Length {value:?}"))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        self.body.clear();
        if chunked {
            loop {
                let size_line = Self::read_line(r, &mut self.line)?;
                let hex = size_line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(hex, 16)
                    .with_context(|| format!("chunk size {hex:?}"))?;
                if size == 0 {
                    // Trailers, then the blank line.
                    while !Self::read_line(r, &mut self.line)?.is_empty() {}
                    break;
                }
                let at = self.body.len();
                self.body.resize(at + size, 0);
                r.read_exact(&mut self.body[at..])?;
                let mut crlf = [0u8; 2];
                r.read_exact(&mut crlf)?;
            }
        } else {
            let n = length.ok_or_else(|| anyhow!("HTTP answer without Content-Length"))?;
            self.body.resize(n, 0);
            r.read_exact(&mut self.body)?;
        }
        if close {
            // Reconnecting is then part of the next request's latency, as for any client.
            self.conn = None;
        }
        Ok(status)
    }
}

impl Exchange for HttpExchange {
    fn exchange(&mut self) -> anyhow::Result<Outcome> {
        let r = self.round_trip();
        if r.is_err() {
            self.conn = None;
        }
        let status = r?;
        if (200..300).contains(&status) {
            Ok(Outcome::Ok)
        } else {
            let body = String::from_utf8_lossy(&self.body);
            Ok(Outcome::Refused(format!(
                "HTTP {status}: {}",
                body.chars().take(200).collect::<String>()
            )))
        }
    }
}

/// `(host:port, request bytes)` for `POST url` with the features body.
fn http_request(url: &str, rows: &[Vec<f64>]) -> anyhow::Result<(String, Vec<u8>)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("--http takes an http:// URL, not {url:?}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        bail!("no host in {url:?}");
    }
    let addr = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let body = json!({ "features": rows }).to_string();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Accept: application/json\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n",
        body.len()
    );
    Ok((addr, [head.into_bytes(), body.into_bytes()].concat()))
}

pub(crate) struct Plan {
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    /// Per-connection interval between intended sends (open loop).
    interval: Option<Duration>,
}

pub(crate) struct WorkerStats {
    pub(crate) hist: Histogram<u64>,
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    pub(crate) last_error: Option<String>,
}

/// Sleeps most of the way and yields the rest: plain sleep overshoots by tens of µs, which
/// an open-loop run would count as latency.
fn wait_until(t: Instant) {
    const SPIN: Duration = Duration::from_micros(200);
    loop {
        let now = Instant::now();
        if now >= t {
            return;
        }
        let left = t - now;
        if left > SPIN {
            std::thread::sleep(left - SPIN);
        } else {
            std::thread::yield_now();
        }
    }
}

fn worker(
    connect: Connector,
    plan: Arc<Plan>,
    index: usize,
    concurrency: usize,
    start: Arc<Barrier>,
) -> WorkerStats {
    let mut stats = WorkerStats {
        // 1 ns to 1 hour at 3 significant digits.
        hist: Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("static bounds are valid"),
        ok: 0,
        errors: 0,
        last_error: None,
    };
    let mut ex = match connect() {
        Ok(ex) => Some(ex),
        Err(e) => {
            stats.last_error = Some(format!("{e:#}"));
            None
        }
    };
    start.wait();
    let t0 = Instant::now();
    let measure_from = t0 + plan.warmup;
    let end = measure_from + plan.duration;
    // Connections start their schedules staggered so the offered load is smooth, not bursts.
    let offset = plan
        .interval
        .map(|iv| iv.mul_f64(index as f64 / concurrency as f64));
    let mut k: u64 = 0;
    loop {
        let intended = match (plan.interval, offset) {
            (Some(iv), Some(off)) => t0 + off + iv.mul_f64(k as f64),
            _ => Instant::now(),
        };
        if intended >= end {
            break;
        }
        k += 1;
        if plan.interval.is_some() {
            wait_until(intended);
        }
        let measured = intended >= measure_from;
        let Some(conn) = ex.as_mut() else {
            match connect() {
                Ok(c) => ex = Some(c),
                Err(e) => {
                    stats.errors += u64::from(measured);
                    stats.last_error = Some(format!("{e:#}"));
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            continue;
        };
        let result = conn.exchange();
        let done = Instant::now();
        match result {
            Ok(Outcome::Ok) => {
                if measured {
                    stats.ok += 1;
                    let ns = u64::try_from((done - intended).as_nanos()).unwrap_or(u64::MAX);
                    stats.hist.saturating_record(ns.max(1));
                }
            }
            Ok(Outcome::Refused(why)) => {
                stats.errors += u64::from(measured);
                stats.last_error = Some(why);
            }
            Err(e) => {
                stats.errors += u64::from(measured);
                stats.last_error = Some(format!("{e:#}"));
                ex = None;
            }
        }
    }
    stats
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

pub fn bench(a: BenchArgs) -> anyhow::Result<()> {
    if a.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if !(a.duration > 0.0 && a.duration.is_finite()) {
        bail!("--duration must be a positive number of seconds");
    }
    if !(a.warmup >= 0.0 && a.warmup.is_finite()) {
        bail!("--warmup must be zero or more seconds");
    }
    if let Some(r) = a.rate {
        if !(r > 0.0 && r.is_finite()) {
            bail!("--rate must be a positive number of requests per second");
        }
    }
    // `--threads`: the endpoint, the request frame and the thread count (predict only).
    let mut mux = None;
    let (mode, target, connect): (&str, String, Connector) = if let Some(url) = &a.http {
        let rows: Vec<Vec<f64>> = if a.input.input.is_empty() {
            vec![vec![DEFAULT_FEATURE; DEFAULT_HTTP_FEATURES]]
        } else {
            a.input
                .input
                .iter()
                .map(|r| parse_row(r))
                .collect::<anyhow::Result<_>>()?
        };
        let rows: Vec<Vec<f64>> = (0..a.input.rows)
            .flat_map(|_| rows.iter().cloned())
            .collect();
        let (addr, request) = http_request(url, &rows)?;
        let request = Arc::new(request);
        // One request first, so a wrong URL is a clear error and not a run of failures.
        let mut probe = HttpExchange::new(addr.clone(), request.clone());
        let status = probe.round_trip().with_context(|| format!("POST {url}"))?;
        let answer: Value = serde_json::from_slice(&probe.body).unwrap_or(Value::Null);
        if !(200..300).contains(&status) || answer.get("predictions").is_none() {
            bail!(
                "POST {url} answered {status} {:?}, not {{\"predictions\": ...}}",
                String::from_utf8_lossy(&probe.body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            );
        }
        let connect: Connector = Arc::new(move || {
            Ok(Box::new(HttpExchange::new(addr.clone(), request.clone())) as Box<dyn Exchange>)
        });
        ("http", url.clone(), connect)
    } else if a.echo {
        let endpoint = a.target.endpoint()?;
        let target = endpoint.to_string();
        let connect: Connector = Arc::new(move || {
            let mut msg = [0u8; ECHO_LEN];
            for (i, b) in msg.iter_mut().enumerate() {
                *b = i as u8;
            }
            let stream =
                Stream::connect(&endpoint).with_context(|| format!("connecting to {endpoint}"))?;
            Ok(Box::new(EchoExchange {
                stream,
                msg,
                buf: [0; ECHO_LEN],
            }) as Box<dyn Exchange>)
        });
        ("echo", target, connect)
    } else if a.shm {
        let model = a
            .model
            .clone()
            .ok_or_else(|| anyhow!("give --model NAME with --shm"))?;
        let endpoint = a.target.endpoint()?;
        let Endpoint::Unix(path) = endpoint.clone() else {
            bail!("--shm needs the Unix socket (--socket PATH)");
        };
        let token = a.target.token()?;
        let mut client = connect_as(&endpoint, token.as_deref())?;
        let input = build_input(&mut client, &model, &a.input, true)?;
        let opts = PredictOptions {
            version: a.input.version.clone(),
            ..Default::default()
        };
        let ring = a.shm_ring_bytes;
        let spin = a.shm_spin_us.map(Duration::from_micros);
        let open = move || -> anyhow::Result<ShmExchange> {
            let mut client = ShmClient::connect(&path, ring, token.as_deref().unwrap_or(""))
                .with_context(|| format!("asking {} for shared memory", path.display()))?;
            if let Some(spin) = spin {
                client.set_spin(spin);
            }
            Ok(ShmExchange {
                client,
                model: model.clone(),
                input: input.clone(),
                opts: opts.clone(),
            })
        };
        // One request first, so a wrong model is a clear error and not a run of failures.
        let mut probe = open()?;
        let first = probe.exchange()?;
        if let Outcome::Refused(why) = first {
            bail!("PREDICT over shared memory: {why}");
        }
        drop(probe);
        let target = format!("shm:{endpoint}");
        let connect: Connector = Arc::new(move || Ok(Box::new(open()?) as Box<dyn Exchange>));
        ("predict-shm", target, connect)
    } else {
        let model = a
            .model
            .clone()
            .ok_or_else(|| anyhow!("give --model NAME (or --echo, or --http URL)"))?;
        let endpoint = a.target.endpoint()?;
        let token = a.target.token()?;
        let mut client = connect_as(&endpoint, token.as_deref())?;
        let input = build_input(&mut client, &model, &a.input, true)?;
        let opts = PredictOptions {
            version: a.input.version.clone(),
            ..Default::default()
        };
        // One request first, so a wrong model is a clear error and not a run of failures.
        client
            .predict(&model, &[input.view()], &opts)
            .with_context(|| format!("PREDICT {model:?}"))?;
        let mut req = proto::PredictRequest {
            model: model.clone(),
            version: opts.version.clone(),
            ..Default::default()
        };
        let mut frame = Vec::new();
        proto::encode_predict(0, &mut req, &[input.view()], &mut frame)?;
        mux = a.threads.map(|t| (endpoint.clone(), frame.clone(), t));
        let target = endpoint.to_string();
        let connect: Connector = Arc::new(move || {
            let client = connect_as(&endpoint, token.as_deref())?;
            Ok(Box::new(PredictExchange {
                client,
                frame: frame.clone(),
            }) as Box<dyn Exchange>)
        });
        ("predict", target, connect)
    };

    let plan = Arc::new(Plan {
        warmup: Duration::from_secs_f64(a.warmup),
        duration: Duration::from_secs_f64(a.duration),
        interval: a
            .rate
            .map(|r| Duration::from_secs_f64(a.concurrency as f64 / r)),
    });
    let per_worker: Vec<WorkerStats> = if let Some((endpoint, frame, n)) = mux {
        crate::bench_mux::run(
            &endpoint,
            &frame,
            a.concurrency,
            n,
            a.pipeline,
            plan.clone(),
        )?
    } else {
        let start = Arc::new(Barrier::new(a.concurrency));
        let threads: Vec<_> = (0..a.concurrency)
            .map(|i| {
                let (connect, plan, start, n) =
                    (connect.clone(), plan.clone(), start.clone(), a.concurrency);
                std::thread::Builder::new()
                    .name(format!("bench-{i}"))
                    .spawn(move || worker(connect, plan, i, n, start))
            })
            .collect::<Result<_, _>>()
            .context("starting load threads")?;
        threads
            .into_iter()
            .map(|t| t.join().map_err(|_| anyhow!("a load thread panicked")))
            .collect::<anyhow::Result<_>>()?
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)?;
    let (mut ok, mut errors, mut last_error) = (0u64, 0u64, None);
    for s in per_worker {
        hist.add(&s.hist)?;
        ok += s.ok;
        errors += s.errors;
        last_error = last_error.or(s.last_error);
    }
    let us = |ns: u64| round2(ns as f64 / 1000.0);
    let q = |quantile: f64| {
        if hist.is_empty() {
            0.0
        } else {
            us(hist.value_at_quantile(quantile))
        }
    };
    let report = json!({
        "mode": mode,
        "target": target,
        "loop": if a.rate.is_some() { "open" } else { "closed" },
        "concurrency": a.concurrency,
        "threads": a.threads,
        "pipeline": a.pipeline,
        "duration_s": a.duration,
        "warmup_s": a.warmup,
        "rate_rps": a.rate,
        "rows": if mode == "echo" { Value::Null } else { json!(a.input.rows * a.input.input.len().max(1) as u64) },
        "requests": ok,
        "errors": errors,
        "p50_us": q(0.50),
        "p90_us": q(0.90),
        "p99_us": q(0.99),
        "p999_us": q(0.999),
        "max_us": if hist.is_empty() { 0.0 } else { us(hist.max()) },
        "min_us": if hist.is_empty() { 0.0 } else { us(hist.min()) },
        "mean_us": if hist.is_empty() { 0.0 } else { round2(hist.mean() / 1000.0) },
        "throughput_rps": round2(ok as f64 / a.duration),
        "last_error": last_error,
    });
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{report}")?;
    } else {
        writeln!(
            out,
            "{mode} {target}, {} loop, {} connection(s), {} s: {ok} ok, {errors} errors, {:.0} req/s",
            report["loop"].as_str().unwrap_or(""),
            a.concurrency,
            a.duration,
            ok as f64 / a.duration
        )?;
        writeln!(
            out,
            "latency µs: p50 {} p90 {} p99 {} p99.9 {} max {}",
            report["p50_us"],
            report["p90_us"],
            report["p99_us"],
            report["p999_us"],
            report["max_us"]
        )?;
        if let Some(e) = &last_error {
            writeln!(out, "last error: {e}")?;
        }
    }
    if ok == 0 {
        bail!(
            "no request succeeded{}",
            last_error.map(|e| format!(": {e}")).unwrap_or_default()
        );
    }
    Ok(())
}

// === echo-server ===

/// Removes a socket file left by a dead server; refuses to touch a live one or a non-socket.
fn clear_stale_socket(path: &Path) -> anyhow::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        bail!("{} exists and is not a socket", path.display());
    }
    if UnixStream::connect(path).is_ok() {
        bail!("something is already serving on {}", path.display());
    }
    std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))
}

fn echo_loop(mut s: impl Read + Write) {
    let mut buf = [0u8; ECHO_LEN];
    while s.read_exact(&mut buf).is_ok() {
        if s.write_all(&buf).is_err() {
            return;
        }
    }
}

/// Echoes 128-byte messages, std blocking with a thread per connection: the same shape of
/// server the measured ping-pong baseline used. Prints `listening on ENDPOINT` once bound.
pub fn echo_server(a: EchoServerArgs) -> anyhow::Result<()> {
    match a.target.endpoint()? {
        Endpoint::Unix(path) => {
            clear_stale_socket(&path)?;
            let l =
                UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
            println!("listening on unix:{}", path.display());
            std::io::stdout().flush()?;
            for s in l.incoming() {
                match s {
                    Ok(s) => {
                        std::thread::spawn(move || echo_loop(s));
                    }
                    Err(e) => eprintln!("edgeinfer echo-server: accept: {e}"),
                }
            }
        }
        Endpoint::Tcp(addr) => {
            let l = TcpListener::bind(addr.as_str()).with_context(|| format!("binding {addr}"))?;
            println!("listening on tcp:{}", l.local_addr()?);
            std::io::stdout().flush()?;
            for s in l.incoming() {
                match s {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        std::thread::spawn(move || echo_loop(s));
                    }
                    Err(e) => eprintln!("edgeinfer echo-server: accept: {e}"),
                }
            }
        }
    }
    Ok(())
}
