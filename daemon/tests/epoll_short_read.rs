//! The vendored monoio fix the epoll read loop relies on (vendor/monoio/EDGEINFER-PATCH.md):
//! after a short read from a stream socket the socket is no longer marked readable, so the
//! next read waits for epoll instead of failing with EAGAIN first; data that comes later
//! still wakes it, and an end of stream is still seen. And the second fix: an accepted
//! socket is watched for reads only until a write first finds it full, so answers the peer
//! reads do not wake a parked core; such a write then waits for room and goes on.

use std::io::Write;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::Duration;

use monoio::io::AsyncReadRent;
use monoio::net::UnixStream;
use monoio::{LegacyDriver, RuntimeBuilder};

/// Runs `f` on an epoll runtime with a socket pair: a std end for the peer, and ours.
fn on_epoll<Fut: std::future::Future<Output = ()>>(
    f: impl FnOnce(StdUnixStream, UnixStream) -> Fut,
) {
    let (peer, ours) = StdUnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    RuntimeBuilder::<LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("an epoll runtime")
        .block_on(async move { f(peer, UnixStream::from_std(ours).unwrap()).await })
}

/// Whether `s` reports readable within `wait` (monoio's readiness, no syscall: `relaxed`).
async fn readable_within(s: &UnixStream, wait: Duration) -> bool {
    monoio::select! {
        r = s.readable(true) => { r.unwrap(); true }
        _ = monoio::time::sleep(wait) => false,
    }
}

#[test]
fn a_short_read_clears_readiness_and_new_data_sets_it_again() {
    on_epoll(|mut peer, mut s| async move {
        peer.write_all(b"0123456789").unwrap();
        let (n, buf) = s.read(vec![0u8; 64]).await;
        assert_eq!(n.unwrap(), 10);
        assert_eq!(&buf[..], b"0123456789");
        // Unpatched monoio still calls it readable here (and the next read is an EAGAIN).
        assert!(
            !readable_within(&s, Duration::from_millis(50)).await,
            "a drained socket is still marked readable"
        );
        peer.write_all(b"abc").unwrap();
        assert!(readable_within(&s, Duration::from_secs(5)).await);
        let (n, buf) = s.read(vec![0u8; 64]).await;
        assert_eq!(n.unwrap(), 3);
        assert_eq!(&buf[..], b"abc");
    });
}

#[test]
fn a_full_read_keeps_readiness_and_the_rest_is_read() {
    on_epoll(|mut peer, mut s| async move {
        peer.write_all(&[7u8; 100]).unwrap();
        // A read that fills its buffer may have left bytes behind: still readable.
        let (n, _) = s.read(vec![0u8; 60]).await;
        assert_eq!(n.unwrap(), 60);
        assert!(readable_within(&s, Duration::from_millis(50)).await);
        let (n, _) = s.read(vec![0u8; 60]).await;
        assert_eq!(n.unwrap(), 40);
    });
}

#[test]
fn the_end_of_stream_after_a_short_read_is_seen() {
    on_epoll(|mut peer, mut s| async move {
        peer.write_all(b"last").unwrap();
        drop(peer);
        let (n, _) = s.read(vec![0u8; 64]).await;
        assert_eq!(n.unwrap(), 4);
        let read = s.read(vec![0u8; 64]);
        let n = monoio::select! {
            r = read => r.0.unwrap(),
            _ = monoio::time::sleep(Duration::from_secs(5)) => panic!("EOF was not seen"),
        };
        assert_eq!(n, 0);
    });
}

#[test]
fn an_accepted_socket_that_fills_waits_for_room_and_writes_on() {
    use monoio::io::AsyncWriteRentExt;
    use std::io::Read;

    const CHUNK: usize = 64 << 10;
    const CHUNKS: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    RuntimeBuilder::<LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("an epoll runtime")
        .block_on(async move {
            // As the daemon makes its listeners: std, non-blocking, adopted.
            let std_l = std::os::unix::net::UnixListener::bind(&path).unwrap();
            std_l.set_nonblocking(true).unwrap();
            let l = monoio::net::UnixListener::from_std(std_l).unwrap();
            let peer = std::thread::spawn(move || {
                let mut c = StdUnixStream::connect(&path).unwrap();
                // Not reading yet: the server's writes fill the socket and must wait.
                std::thread::sleep(Duration::from_millis(200));
                let mut all = Vec::new();
                c.read_to_end(&mut all).unwrap();
                all
            });
            let (mut s, _) = l.accept().await.unwrap();
            let writes = async {
                for i in 0..CHUNKS {
                    let (r, _) = s.write_all(vec![i as u8; CHUNK]).await;
                    r.unwrap();
                }
            };
            monoio::select! {
                _ = writes => {}
                _ = monoio::time::sleep(Duration::from_secs(20)) => {
                    panic!("a write that waited for room was never woken")
                }
            }
            // Closing it ends the peer's read.
            drop(s);
            let got = peer.join().unwrap();
            assert_eq!(got.len(), CHUNK * CHUNKS);
            assert!(got
                .chunks(CHUNK)
                .enumerate()
                .all(|(i, c)| c.iter().all(|&b| b == i as u8)));
        });
}
