//! The blocking client: one std socket, no threads, no runtime. For a load generator, one
//! client per OS thread.

use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use edgeinfer_proto::{
    set_request_id, Header, HealthRequest, HealthResponse, Hello, HelloResponse, MetadataRequest,
    ModelMetadata, Opcode, TensorView, HEADER_LEN, SUPPORTED_VERSIONS,
};

use crate::conn::{answer, answer_predict, body_len, Conn};
use crate::{ClientError, Endpoint, PredictOptions, PredictResult};

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A connection to an edgeinfer server.
pub struct Client {
    // Buffered so that one read() usually takes a whole answer, header and body.
    reader: BufReader<Stream>,
    writer: Stream,
    conn: Conn,
    server: Option<HelloResponse>,
}

impl Client {
    /// Connects without sending HELLO (the protocol makes it optional); see [`Client::hello`].
    pub fn connect(endpoint: &Endpoint) -> Result<Client, ClientError> {
        let stream = match endpoint {
            Endpoint::Unix(p) => Stream::Unix(UnixStream::connect(p)?),
            Endpoint::Tcp(a) => {
                let s = TcpStream::connect(a.as_str())?;
                // Requests are single small writes; Nagle would only add latency.
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
        };
        Ok(Client {
            writer: stream.try_clone()?,
            reader: BufReader::with_capacity(64 << 10, stream),
            conn: Conn::new(),
            server: None,
        })
    }

    /// Read and write timeout for every later call; `None` waits forever.
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), ClientError> {
        match &self.writer {
            Stream::Unix(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)?;
            }
            Stream::Tcp(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)?;
            }
        }
        Ok(())
    }

    /// The server's HELLO answer, if [`Client::hello`] was called.
    pub fn server(&self) -> Option<&HelloResponse> {
        self.server.as_ref()
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.conn.in_flight
    }

    /// Negotiates the version and learns the server's limits.
    pub fn hello(&mut self) -> Result<HelloResponse, ClientError> {
        self.hello_with_token("")
    }

    /// HELLO carrying `token`, as a server with `server.auth_token_file` requires before
    /// anything else (a wrong one is answered UNAUTHENTICATED and the connection closes).
    pub fn hello_with_token(&mut self, token: &str) -> Result<HelloResponse, ClientError> {
        let msg = Hello {
            versions: SUPPORTED_VERSIONS.to_vec(),
            client: concat!("edgeinfer-client/", env!("CARGO_PKG_VERSION")).into(),
            token: token.into(),
            shm_ring_bytes: 0,
        };
        let id = self.conn.encode_message(Opcode::Hello, &msg)?;
        self.send_wbuf()?;
        let h = self.wait(id)?;
        let r: HelloResponse = answer(&h, &self.conn.rbuf, Opcode::Hello)?;
        self.server = Some(r.clone());
        Ok(r)
    }

    pub fn predict(
        &mut self,
        model: &str,
        inputs: &[TensorView<'_>],
        opts: &PredictOptions,
    ) -> Result<PredictResult, ClientError> {
        let id = self.send_predict(model, inputs, opts)?;
        let h = self.wait(id)?;
        answer_predict(&h, &self.conn.rbuf)
    }

    pub fn metadata(
        &mut self,
        model: &str,
        version: Option<&str>,
    ) -> Result<ModelMetadata, ClientError> {
        let msg = MetadataRequest {
            model: model.into(),
            version: version.map(Into::into),
        };
        let id = self.conn.encode_message(Opcode::Metadata, &msg)?;
        self.send_wbuf()?;
        let h = self.wait(id)?;
        answer(&h, &self.conn.rbuf, Opcode::Metadata)
    }

    pub fn health(&mut self) -> Result<HealthResponse, ClientError> {
        let id = self
            .conn
            .encode_message(Opcode::Health, &HealthRequest {})?;
        self.send_wbuf()?;
        let h = self.wait(id)?;
        answer(&h, &self.conn.rbuf, Opcode::Health)
    }

    /// Sends a PREDICT without waiting; returns its request id. Collect with [`Client::recv`].
    pub fn send_predict(
        &mut self,
        model: &str,
        inputs: &[TensorView<'_>],
        opts: &PredictOptions,
    ) -> Result<u64, ClientError> {
        let id = self.conn.encode_predict(model, inputs, opts)?;
        self.send_wbuf()?;
        Ok(id)
    }

    /// Sends an already-encoded request frame after giving it a fresh request id (written
    /// into `frame`), so a load generator encodes once and resends.
    pub fn send_frame(&mut self, frame: &mut [u8]) -> Result<u64, ClientError> {
        let id = self.conn.next_id();
        set_request_id(frame, id)?;
        self.writer.write_all(frame)?;
        self.conn.in_flight += 1;
        Ok(id)
    }

    /// The next PREDICT answer, in arrival order: `(request_id, result)`. The outer error is
    /// the connection failing; the inner one is this request failing.
    #[allow(clippy::type_complexity)]
    pub fn recv(&mut self) -> Result<(u64, Result<PredictResult, ClientError>), ClientError> {
        let h = self.next_frame(None)?;
        Ok((h.request_id, answer_predict(&h, &self.conn.rbuf)))
    }

    /// The next answer frame undecoded: its header and body (valid until the next call).
    pub fn recv_frame(&mut self) -> Result<(Header, &[u8]), ClientError> {
        let h = self.next_frame(None)?;
        Ok((h, &self.conn.rbuf))
    }

    fn send_wbuf(&mut self) -> Result<(), ClientError> {
        self.writer.write_all(&self.conn.wbuf)?;
        self.conn.in_flight += 1;
        Ok(())
    }

    /// Reads until the answer to `id` (or, with `None`, any answer) is in `conn.rbuf`,
    /// keeping answers to other requests for later.
    fn next_frame(&mut self, id: Option<u64>) -> Result<Header, ClientError> {
        if let Some((h, body)) = self.conn.unstash(id) {
            self.conn.rbuf = body;
            // Saturating: a frame the server sent unasked was stashed too.
            self.conn.in_flight = self.conn.in_flight.saturating_sub(1);
            return Ok(h);
        }
        loop {
            let h = self.read_frame()?;
            if id.is_none_or(|id| id == h.request_id) {
                self.conn.in_flight = self.conn.in_flight.saturating_sub(1);
                return Ok(h);
            }
            self.conn.stash(h);
        }
    }

    fn wait(&mut self, id: u64) -> Result<Header, ClientError> {
        self.next_frame(Some(id))
    }

    fn read_frame(&mut self) -> Result<Header, ClientError> {
        let mut hb = [0u8; HEADER_LEN];
        self.reader.read_exact(&mut hb)?;
        let h = Header::decode_with(&hb, &self.conn.limits)?;
        let n = body_len(&h)?;
        self.conn.rbuf.resize(n, 0);
        self.reader.read_exact(&mut self.conn.rbuf)?;
        Ok(h)
    }
}
