//! A library whose load never finishes in time becomes an error, not a hung daemon.
//!
//! The stand-in library's initialiser sleeps past the loader's 10 s timeout, the way
//! ort's load-dynamic deadlocks (pykeio/ort#560, #579) look from outside. Its own
//! process: the stuck loader thread holds the dynamic linker's lock until it wakes.

mod ort_support;

use std::time::{Duration, Instant};

use edgeinfer_engine::{load_model, ort_status, Backend, EngineChoice, ErrorKind, LoadOptions};
use ort_support::*;

#[test]
fn a_hanging_library_load_times_out_and_auto_serves_on_tract() {
    let lib = build_c_library(
        "hang",
        "libonnxruntime.so.1.31.1",
        "#include <unistd.h>\n__attribute__((constructor)) static void hang(void) { sleep(13); }\n",
    );
    let opts = LoadOptions {
        engine: EngineChoice::Auto,
        ort_library: Some(lib.to_path_buf()),
        ..LoadOptions::default()
    };

    let started = Instant::now();
    let status = ort_status(&opts);
    let waited = started.elapsed();
    let why = status.error.expect("the load must not succeed");
    assert!(
        why.contains("did not finish within 10 s") && why.contains(&lib.display().to_string()),
        "{why}"
    );
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(13),
        "waited {waited:?}"
    );

    // Later loads do not wait out the timeout again: they fall back at once.
    let started = Instant::now();
    let model = load_model(&add_f32(), &opts).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(model.backend(), Backend::Tract);
    assert!(
        model
            .report
            .fallbacks
            .iter()
            .any(|f| f.backend == Backend::OrtCpu && f.reason.contains("did not finish")),
        "{:?}",
        model.report
    );

    let err = load_model(
        &add_f32(),
        &LoadOptions {
            engine: EngineChoice::OrtCpu,
            ..opts
        },
    )
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::LibraryUnavailable);
}
