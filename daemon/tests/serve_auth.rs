//! Binary-protocol authentication over real sockets: the HELLO token (constant-time compared,
//! UNAUTHENTICATED then close on a wrong or missing one) and the SO_PEERCRED allow-lists on
//! the Unix socket; in each case an authorised client keeps being served.

mod serve_support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use edgeinfer_client::blocking::Client;
use edgeinfer_client::Endpoint;
use edgeinfer_engine::EngineChoice;
use edgeinfer_proto::{encode_message, ErrorCode, Hello, Opcode};
use edgeinferd::server::Driver;
use serve_support::*;

const TOKEN: &str = "serve-auth-token-0123456789";

fn token_file(dir: &std::path::Path, text: &str) -> PathBuf {
    let p = dir.join("token");
    std::fs::write(&p, format!("{text}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn hello_frame(id: u64, token: &str) -> Vec<u8> {
    let mut f = Vec::new();
    encode_message(
        Opcode::Hello,
        id,
        &Hello {
            versions: vec![1],
            client: "serve_auth".into(),
            token: token.into(),
            shm_ring_bytes: 0,
        },
        &mut f,
    )
    .unwrap();
    f
}

/// The answers a refused raw connection gets: exactly one UNAUTHENTICATED, then EOF.
fn assert_refused(raw: &mut Raw, id: u64) {
    let answers = raw.read_to_eof();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].id(), id, "{answers:?}");
    assert_eq!(
        answers[0].error_code(),
        Some(ErrorCode::Unauthenticated.as_u32()),
        "{answers:?}"
    );
}

#[test]
fn hello_token_is_required_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(Driver::Epoll);
    opts.auth_token_file = Some(token_file(dir.path(), TOKEN));
    let srv = start(
        opts,
        &[spec("churn", "churn_rf", EngineChoice::Tract, None)],
    );

    // An authorised client, kept open across every refusal below.
    let mut good = srv.client();
    good.hello_with_token(TOKEN).unwrap();
    served(&mut good);

    // A request before HELLO.
    let mut raw = srv.raw();
    raw.send(&predict_frame(5, "churn", &churn_row(0.5), 0));
    assert_refused(&mut raw, 5);
    served(&mut good);

    // HELLO without a token, with a wrong one, with the token plus as many bytes as a HELLO
    // can carry (65,536 would exceed the metadata limit: FRAME_TOO_LARGE), and a prefix.
    let long = format!("{TOKEN}{}", "x".repeat(65_000));
    for (id, t) in [
        (6, ""),
        (7, "serve-auth-token-0123456780"),
        (8, long.as_str()),
        (9, &TOKEN[..TOKEN.len() - 1]),
    ] {
        let mut raw = srv.raw();
        raw.send(&hello_frame(id, t));
        // Whatever follows the refused HELLO is not answered (nor, maybe, even accepted).
        let _ = raw
            .s
            .write_all(&predict_frame(id + 100, "churn", &churn_row(0.5), 0));
        assert_refused(&mut raw, id);
        served(&mut good);
    }

    // The library's view of the same refusal.
    let mut c = srv.client();
    let e = c.hello_with_token("not-the-token-at-all").unwrap_err();
    assert_eq!(e.server_code(), Some(ErrorCode::Unauthenticated), "{e}");

    // The right token over TCP too; a second HELLO with a wrong token closes even an
    // authenticated connection.
    let mut tcp = Client::connect(&srv.tcp()).unwrap();
    tcp.set_timeout(Some(IO_TIMEOUT)).unwrap();
    let hello = tcp.hello_with_token(TOKEN).unwrap();
    assert_eq!(hello.version, 1);
    served(&mut tcp);
    let mut raw = srv.raw();
    raw.send(&hello_frame(1, TOKEN));
    raw.send(&hello_frame(2, "wrong-token-wrong-token"));
    let answers = raw.read_to_eof();
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(
        matches!(
            answers[0],
            Answer::Other {
                id: 1,
                opcode: 0x81,
                ..
            }
        ),
        "{answers:?}"
    );
    assert_eq!(
        answers[1].error_code(),
        Some(ErrorCode::Unauthenticated.as_u32())
    );
    served(&mut good);
    assert!(
        srv.app().stats().errors(ErrorCode::Unauthenticated) >= 7,
        "every refusal is counted"
    );
}

#[test]
fn unix_peers_are_checked_against_the_allow_lists() {
    // SAFETY: plain getters.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };

    // Neither our uid nor our gid listed: refused at accept, before any frame is read.
    let mut opts = options(Driver::Epoll);
    opts.allowed_uids = vec![uid.wrapping_add(1)];
    opts.allowed_gids = vec![gid.wrapping_add(1)];
    let srv = start(
        opts,
        &[spec("churn", "churn_rf", EngineChoice::Tract, None)],
    );
    let mut raw = srv.raw();
    // The refusal may come (and the socket close) before this write: either is fine.
    let _ = raw
        .s
        .write_all(&predict_frame(3, "churn", &churn_row(0.5), 0));
    assert_refused(&mut raw, 0);
    let mut c = Client::connect(&srv.unix()).unwrap();
    c.set_timeout(Some(IO_TIMEOUT)).unwrap();
    let e = c.health().unwrap_err();
    assert!(
        e.server_code() == Some(ErrorCode::Unauthenticated)
            || e.kind() == edgeinfer_client::ErrorKind::Io,
        "{e}"
    );
    // The allow-lists are for the Unix socket: TCP on loopback is still served.
    let mut tcp = Client::connect(&srv.tcp()).unwrap();
    tcp.set_timeout(Some(IO_TIMEOUT)).unwrap();
    served(&mut tcp);
    drop(srv);

    // Our uid listed: served; our gid listed: served.
    for (uids, gids) in [(vec![uid], vec![]), (vec![uid.wrapping_add(1)], vec![gid])] {
        let mut opts = options(Driver::Epoll);
        opts.allowed_uids = uids;
        opts.allowed_gids = gids;
        let srv = start(
            opts,
            &[spec("churn", "churn_rf", EngineChoice::Tract, None)],
        );
        let mut c = srv.client();
        served(&mut c);
        let mut again = Client::connect(&Endpoint::Unix(srv.sock.clone())).unwrap();
        again.set_timeout(Some(IO_TIMEOUT)).unwrap();
        served(&mut again);
    }
}
