//! `edgeinfer fleet watch --broker HOST:PORT [--prefix P] [--json]`: a live view of every
//! device publishing telemetry under a prefix (docs/telemetry.md): online or offline, the
//! model versions each serves, p99 latency, drift alerts and online accuracy. A terminal
//! table redrawn in place; with `--json`, one line per update (the device that changed).
//!
//! The view itself ([`Fleet`]) has no IO: it ingests (topic, payload) pairs and renders.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use edgeinfer_telemetry::config::BrokerAddr;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Client, Event, MqttOptions};
use serde::Serialize;
use serde_json::Value;

#[derive(Args)]
pub struct FleetArgs {
    #[command(subcommand)]
    command: FleetCommand,
}

#[derive(Subcommand)]
enum FleetCommand {
    /// Live table of the devices on a broker: state, versions, p99, drift, accuracy.
    Watch(WatchArgs),
    /// N simulated devices (real agent, TUF, install store, rollout judge) through a staged
    /// rollout against one HTTP repository and one broker (docs/fleet.md).
    Simulate(Box<crate::fleet_sim::SimulateArgs>),
}

#[derive(Args)]
struct WatchArgs {
    /// The broker: HOST:PORT (or mqtt://HOST:PORT).
    #[arg(long)]
    broker: String,
    /// The devices' `telemetry.topic_prefix`.
    #[arg(long, default_value = "edgeinfer")]
    prefix: String,
    /// One JSON line per update instead of the table.
    #[arg(long)]
    json: bool,
    /// Stop after this many seconds (default: until interrupted).
    #[arg(long, value_name = "SECS", hide = true)]
    for_s: Option<u64>,
}

pub fn fleet(a: FleetArgs) -> Result<()> {
    match a.command {
        FleetCommand::Watch(w) => watch(w),
        FleetCommand::Simulate(s) => crate::fleet_sim::simulate(*s),
    }
}

// === the view ===

/// What is known of one device.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Device {
    pub device: String,
    /// `online` / `offline` from the retained status (the Last Will says offline).
    pub state: String,
    /// `model@version` it serves, from its status.
    pub versions: Vec<String>,
    /// Latest p99 per `model@version`, µs.
    pub p99_us: BTreeMap<String, u64>,
    /// Drift windows that alerted, and the features of the latest one.
    pub drift_alerts: u64,
    pub drift_features: Vec<String>,
    /// Latest accuracy window per `model@version/arm`: value and whether it alerted.
    pub accuracy: BTreeMap<String, (f64, bool)>,
}

/// Every device heard under one prefix.
#[derive(Debug, Default)]
pub struct Fleet {
    prefix: String,
    pub devices: BTreeMap<String, Device>,
}

impl Fleet {
    pub fn new(prefix: &str) -> Fleet {
        Fleet {
            prefix: prefix.trim_end_matches('/').to_owned(),
            devices: BTreeMap::new(),
        }
    }

    /// Takes one message; the device it changed, if it is one of ours and readable.
    pub fn ingest(&mut self, topic: &str, payload: &[u8]) -> Option<&Device> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let (device, level) = rest.split_once('/')?;
        if device.is_empty() || level.contains('/') {
            return None;
        }
        let v: Value = serde_json::from_slice(payload).ok()?;
        let at = |m: &Value| {
            format!(
                "{}@{}",
                m["model"].as_str().unwrap_or("?"),
                m["version"].as_str().unwrap_or("?")
            )
        };
        let d = self
            .devices
            .entry(device.to_owned())
            .or_insert_with(|| Device {
                device: device.to_owned(),
                state: "unknown".into(),
                ..Device::default()
            });
        match level {
            "status" => {
                d.state = v["state"].as_str().unwrap_or("unknown").to_owned();
                if let Some(models) = v["models"].as_array() {
                    d.versions = models
                        .iter()
                        .map(|m| {
                            format!(
                                "{}@{}",
                                m["name"].as_str().unwrap_or("?"),
                                m["version"].as_str().unwrap_or("?")
                            )
                        })
                        .collect();
                }
            }
            "latency" => {
                d.p99_us.insert(at(&v), v["p99_us"].as_u64()?);
            }
            "drift" => {
                let alerted: Vec<String> = v["features"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .chain(v["outputs"].as_array().into_iter().flatten())
                    .filter(|f| f["level"] == "alert")
                    .filter_map(|f| f["name"].as_str().map(str::to_owned))
                    .collect();
                if !alerted.is_empty() {
                    d.drift_alerts += 1;
                    d.drift_features = alerted;
                }
            }
            "accuracy" => {
                let key = format!("{}/{}", at(&v), v["arm"].as_str().unwrap_or("?"));
                d.accuracy
                    .insert(key, (v["value"].as_f64()?, v["alert"] == true));
            }
            "events" | "gpu" => {}
            _ => return None,
        }
        Some(d)
    }

    /// The table, one row per device.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<20} {:<8} {:<28} {:>9} {:<18} {}\n",
            "DEVICE", "STATE", "VERSIONS", "P99 µs", "DRIFT", "ACCURACY"
        );
        for d in self.devices.values() {
            let p99 = d.p99_us.values().max().map_or("-".into(), u64::to_string);
            let drift = if d.drift_alerts == 0 {
                "ok".to_owned()
            } else {
                format!("{} ({})", d.drift_alerts, d.drift_features.join(","))
            };
            let acc = if d.accuracy.is_empty() {
                "-".to_owned()
            } else {
                d.accuracy
                    .iter()
                    .map(|(k, (v, alert))| {
                        format!("{k} {v:.3}{}", if *alert { " ALERT" } else { "" })
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            s.push_str(&format!(
                "{:<20} {:<8} {:<28} {:>9} {:<18} {}\n",
                d.device,
                d.state,
                d.versions.join(","),
                p99,
                drift,
                acc
            ));
        }
        s
    }
}

// === watching ===

fn watch(a: WatchArgs) -> Result<()> {
    let url = if a.broker.contains("://") {
        a.broker.clone()
    } else {
        format!("mqtt://{}", a.broker)
    };
    let addr = BrokerAddr::parse(&url).map_err(anyhow::Error::msg)?;
    if addr.tls {
        bail!("{}: mqtts:// is not supported by fleet watch yet", a.broker);
    }
    let mut opts = MqttOptions::new(
        format!("edgeinfer-fleet-watch-{}", std::process::id()),
        addr.host,
        addr.port,
    );
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_clean_start(true);
    let (client, mut conn) = Client::new(opts, 256);
    client
        .subscribe(format!("{}/+/+", a.prefix), QoS::AtLeastOnce)
        .context("queueing the subscription")?;
    let mut fleet = Fleet::new(&a.prefix);
    let tty = std::io::stdout().is_terminal() && !a.json;
    let end = a.for_s.map(|s| Instant::now() + Duration::from_secs(s));
    let mut out = std::io::stdout().lock();
    loop {
        let left = match end {
            Some(e) => match e.checked_duration_since(Instant::now()) {
                Some(l) => l,
                None => break,
            },
            None => Duration::from_secs(3600),
        };
        match conn.recv_timeout(left) {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                let Some(d) = fleet.ingest(&topic, &p.payload) else {
                    continue;
                };
                if a.json {
                    serde_json::to_writer(&mut out, d)?;
                    writeln!(out)?;
                } else if tty {
                    // Home and clear, then the whole table: redrawn in place.
                    write!(out, "\x1b[H\x1b[2J{}", fleet.table())?;
                } else {
                    writeln!(out, "{}", fleet.table())?;
                }
                out.flush()?;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("broker {}: {e}", a.broker),
            Err(_) => {
                if end.is_some() {
                    break;
                }
            }
        }
    }
    let _ = client.disconnect();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_of_every_topic_land_on_their_device() {
        let mut f = Fleet::new("edgeinfer");
        let status = br#"{"state":"online","models":[{"name":"churn","version":"2","backend":"tract","default":true}]}"#;
        assert!(f.ingest("edgeinfer/box1/status", status).is_some());
        f.ingest(
            "edgeinfer/box1/latency",
            br#"{"model":"churn","version":"2","p99_us":812}"#,
        );
        f.ingest(
            "edgeinfer/box1/drift",
            br#"{"model":"churn","version":"2","features":[{"name":"f1","level":"ok"},{"name":"f2","level":"alert"}],"outputs":[]}"#,
        );
        f.ingest(
            "edgeinfer/box1/accuracy",
            br#"{"model":"churn","version":"2","arm":"default","value":0.9,"alert":true}"#,
        );
        f.ingest("edgeinfer/box2/status", br#"{"state":"offline"}"#);
        // Other prefixes, deeper topics and garbage are ignored.
        assert!(f.ingest("other/box3/status", status).is_none());
        assert!(f.ingest("edgeinfer/box1/status/x", status).is_none());
        assert!(f.ingest("edgeinfer/box1/status", b"not json").is_none());
        let d = &f.devices["box1"];
        assert_eq!(d.state, "online");
        assert_eq!(d.versions, ["churn@2"]);
        assert_eq!(d.p99_us["churn@2"], 812);
        assert_eq!(
            (d.drift_alerts, d.drift_features.clone()),
            (1, vec!["f2".into()])
        );
        assert_eq!(d.accuracy["churn@2/default"], (0.9, true));
        assert_eq!(f.devices["box2"].state, "offline");
        let t = f.table();
        assert!(
            t.contains("box1") && t.contains("812") && t.contains("0.900 ALERT"),
            "{t}"
        );
        assert!(t.lines().nth(2).unwrap().starts_with("box2"), "{t}");
    }
}
