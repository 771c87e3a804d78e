//! sd_notify with a real `NOTIFY_SOCKET` made by the test: the real binary says READY=1 only
//! once its models are warm (and /readyz agrees at that instant), pings the watchdog at the
//! rate `WATCHDOG_USEC` asks, reports a SIGHUP reload, and says STOPPING=1 on SIGTERM. The
//! watchdog's heartbeat rule is checked in-process on the same kind of socket: pings stop
//! when a core stops beating, and resume when it beats again.

mod appliance_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use appliance_support::*;
use edgeinferd::heartbeat::Heartbeats;
use edgeinferd::systemd::{spawn_watchdog, Notifier, WatchdogTiming};

#[test]
fn ready_after_warmup_then_watchdog_reload_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let mut notify = NotifySocket::bind(dir.path());
    let config = write_config(dir.path(), "log_level = \"warn\"");
    let mut cmd = daemon_command(&config);
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "300000");
    let start = Instant::now();
    let d = Reaper(Some(cmd.spawn().unwrap()));

    // Up to READY=1: a loading status first, no watchdog pings (systemd arms the watchdog
    // only once start-up completes), and READY=1 with MAINPID and a status line.
    let ready = notify.wait_for("READY=1", STARTUP);
    let to_ready = start.elapsed();
    let before = &notify.seen[..notify.seen.len() - 1];
    assert!(
        before
            .iter()
            .any(|m| m.lines().any(|l| l == "STATUS=loading models")),
        "{before:?}"
    );
    assert!(
        !before.iter().any(|m| m.contains("WATCHDOG=1")),
        "{before:?}"
    );
    assert_eq!(
        field(&ready, "MAINPID"),
        Some(d.pid().to_string().as_str()),
        "{ready}"
    );
    let status = field(&ready, "STATUS").unwrap().to_owned();
    assert!(status.contains("churn"), "{status}");

    // At the moment of READY=1 every model is warm: readiness agrees, and it serves.
    let http = http_addr(&status);
    let (code, body) = http_get(http, "/readyz");
    assert_eq!(code, 200, "{body}");
    let (_, metrics) = http_get(http, "/metrics");
    assert!(
        metrics.contains("edgeinfer_model_ready{model=\"churn\",version=\"demo\"} 1"),
        "{metrics}"
    );
    let p = predict_churn(&edgeinfer_client::Endpoint::Unix(
        dir.path().join("edgeinferd.sock"),
    ));
    assert_eq!(p.len(), 2);

    // WATCHDOG_USEC=300 ms: pings every 150 ms while the cores beat.
    let window = notify.collect(Duration::from_millis(1500));
    let pings = window
        .iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count();
    assert!(
        pings >= 4,
        "expected a ping every 150 ms, got {pings} in 1.5 s: {window:?}"
    );

    // SIGHUP: RELOADING=1 (with the monotonic time systemd wants), then READY=1 with what
    // changed live and what needs a restart.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("log_level = \"warn\"", "log_level = \"error\"")
            .replace("tcp = \"127.0.0.1:0\"", "tcp = \"127.0.0.1:1\""),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    let reloading = notify.wait_for("RELOADING=1", Duration::from_secs(30));
    assert!(
        field(&reloading, "MONOTONIC_USEC").is_some_and(|v| v.parse::<u64>().is_ok()),
        "{reloading}"
    );
    let reloaded = notify.wait_for("READY=1", Duration::from_secs(60));
    let s = field(&reloaded, "STATUS").unwrap();
    assert!(s.contains("log_level = \"error\""), "{s}");
    assert!(s.contains("needs a restart to apply: server.tcp"), "{s}");

    // A reload with a bad file keeps serving the old configuration and says so.
    std::fs::write(&config, "[server]\nno_such_key = 1\n").unwrap();
    d.signal(libc::SIGHUP);
    let reloaded = notify.wait_for("READY=1", Duration::from_secs(60));
    let s = field(&reloaded, "STATUS").unwrap();
    assert!(
        s.contains("reload failed") && s.contains("no_such_key"),
        "{s}"
    );
    assert_eq!(http_get(http, "/readyz").0, 200);

    // SIGTERM: STOPPING=1, then a clean exit.
    d.signal(libc::SIGTERM);
    notify.wait_for("STOPPING=1", Duration::from_secs(30));
    let st = d.wait(Duration::from_secs(30));
    assert!(st.success(), "exit {st:?}: {}", daemon_log(&config));
    eprintln!(
        "start to READY=1: {:.0} ms (debug build)",
        to_ready.as_secs_f64() * 1e3
    );
}

#[test]
fn watchdog_pings_stop_while_a_core_is_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let mut notify = NotifySocket::bind(dir.path());
    // The notifier (the sd-notify crate) reads NOTIFY_SOCKET on every message. This is
    // the only in-process test in this binary, and the daemon the other one starts gets
    // its own NOTIFY_SOCKET, so setting it here is seen by nothing else.
    std::env::set_var("NOTIFY_SOCKET", &notify.path);
    let notifier = Notifier::from_env().unwrap();
    assert!(notifier.is_active());
    let hb = Arc::new(Heartbeats::new(&[0, 1]));
    let stuck = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    // Two "cores" beating every 10 ms; core 1 stops while `stuck` is set.
    let beater = {
        let (hb, stuck, stop) = (hb.clone(), stuck.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                hb.beat(0);
                if !stuck.load(Ordering::Relaxed) {
                    hb.beat(1);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let timing = WatchdogTiming {
        period: Duration::from_millis(25),
        max_age: Duration::from_millis(150),
    };
    let wd = spawn_watchdog(notifier, timing).unwrap();
    wd.watch(hb.clone());
    let is_ping = |m: &String| m.lines().any(|l| l == "WATCHDOG=1");

    let healthy = notify.collect(Duration::from_millis(400));
    assert!(
        healthy.iter().filter(|m| is_ping(m)).count() >= 5,
        "{healthy:?}"
    );

    // Core 1 hangs: within a few periods the watchdog names it and stops pinging.
    stuck.store(true, Ordering::Relaxed);
    let named = notify.wait_for(
        "STATUS=cores [1] unresponsive for over 150 ms: withholding watchdog pings",
        Duration::from_secs(5),
    );
    assert!(!is_ping(&named));
    let quiet = notify.collect(Duration::from_millis(500));
    assert!(
        !quiet.iter().any(is_ping),
        "pinged while core 1 was stuck: {quiet:?}"
    );
    assert!(!quiet.is_empty(), "the status keeps saying why");

    // It beats again: pings resume, with a status saying so.
    stuck.store(false, Ordering::Relaxed);
    let back = notify.wait_for(
        "STATUS=serving (all cores responsive again)",
        Duration::from_secs(5),
    );
    assert!(is_ping(&back), "{back}");
    let resumed = notify.collect(Duration::from_millis(300));
    assert!(
        resumed.iter().filter(|m| is_ping(m)).count() >= 3,
        "{resumed:?}"
    );

    wd.stop();
    let after = notify.collect(Duration::from_millis(200));
    assert!(after.is_empty(), "pinged after stop: {after:?}");
    stop.store(true, Ordering::Relaxed);
    beater.join().unwrap();
}
