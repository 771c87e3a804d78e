//! Binding the data-path listeners: a Unix socket bound once (permissions, group, stale
//! socket files) and TCP as one `SO_REUSEPORT` socket per core.
//!
//! Nothing here accepts: the core runtimes do, each on its own listener (TCP bound here) or
//! on a dup of a shared one (the Unix socket, listeners handed in by tests or systemd).

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// TCP listeners for one address.
#[derive(Debug)]
pub enum TcpGroup {
    /// One socket shared by every core (each accepts on a dup): handed in by a test or by
    /// systemd socket activation.
    Shared(TcpListener),
    /// One `SO_REUSEPORT` socket per core, in core order: the kernel spreads connections.
    PerCore(Vec<TcpListener>),
}

impl TcpGroup {
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            TcpGroup::Shared(l) => l.local_addr(),
            TcpGroup::PerCore(ls) => ls
                .first()
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "empty TCP listener group")
                })?
                .local_addr(),
        }
    }

    /// The listener core `index` accepts on.
    pub(crate) fn for_core(&self, index: usize) -> io::Result<TcpListener> {
        match self {
            TcpGroup::Shared(l) => l.try_clone(),
            TcpGroup::PerCore(ls) => ls
                .get(index)
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "TCP listener group has {} sockets, not one for core #{index}",
                            ls.len()
                        ),
                    )
                })?
                .try_clone(),
        }
    }
}

/// Binds `addr` once per core with `SO_REUSEPORT`, so each core accepts on its own socket.
pub fn bind_tcp(addr: &str, cores: usize) -> io::Result<TcpGroup> {
    let sa = addr.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr:?} resolves to no address"),
        )
    })?;
    let mut out = Vec::with_capacity(cores.max(1));
    let mut bound = sa;
    for _ in 0..cores.max(1) {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(sa),
            socket2::Type::STREAM,
            None,
        )?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_tcp_nodelay(true)?;
        // Port 0: the first socket picks the port, the others join it.
        s.bind(&bound.into())?;
        s.listen(1024)?;
        let l: TcpListener = s.into();
        bound = l.local_addr()?;
        out.push(l);
    }
    Ok(TcpGroup::PerCore(out))
}

/// Binds a Unix socket at `path` with `mode` (e.g. 0o660) and, if given, group `gid`.
///
/// A socket file left behind by a crashed server is removed; a socket some process still
/// listens on, or a path that is not a socket, is refused.
pub fn bind_unix(path: &Path, mode: u32, gid: Option<u32>) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use: another server listens there", path.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)?,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("probing {}: {e}", path.display()),
                ))
            }
        },
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    Ok(l)
}

/// The gid of group `name` (or a numeric gid as text).
pub fn group_id(name: &str) -> io::Result<u32> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    let cname = std::ffi::CString::new(name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "group name contains a NUL byte",
        )
    })?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 16 << 10];
    // SAFETY: all pointers are live for the call; buf's length is passed with it.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if result.is_null() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no group named {name:?}"),
        ));
    }
    Ok(grp.gr_gid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("edgeinfer-listen-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn unix_socket_gets_its_mode_and_replaces_only_stale_files() {
        let d = tmp("unix");
        let p = d.join("s.sock");
        let l = bind_unix(&p, 0o660, None).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o660);
        // Something listens: refused.
        let err = bind_unix(&p, 0o660, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        // Listener gone, file left behind: replaced.
        drop(l);
        let _l = bind_unix(&p, 0o600, None).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        // Not a socket: refused and left alone.
        let f = d.join("file");
        std::fs::write(&f, b"keep me").unwrap();
        assert!(bind_unix(&f, 0o660, None).is_err());
        assert_eq!(std::fs::read(&f).unwrap(), b"keep me");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn reuseport_group_shares_one_port() {
        let g = bind_tcp("127.0.0.1:0", 3).unwrap();
        let TcpGroup::PerCore(ls) = &g else {
            panic!("expected a per-core group")
        };
        assert_eq!(ls.len(), 3);
        let port = ls[0].local_addr().unwrap().port();
        assert!(ls.iter().all(|l| l.local_addr().unwrap().port() == port));
    }

    #[test]
    fn numeric_and_named_groups() {
        assert_eq!(group_id("4242").unwrap(), 4242);
        assert_eq!(group_id("root").unwrap(), 0);
        assert!(group_id("no-such-group-edgeinfer").is_err());
    }
}
