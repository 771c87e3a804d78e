//! The async client on tokio: the same surface as [`crate::blocking::Client`], awaited.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

use edgeinfer_proto::{
    set_request_id, Header, HealthRequest, HealthResponse, Hello, HelloResponse, MetadataRequest,
    ModelMetadata, Opcode, TensorView, HEADER_LEN, SUPPORTED_VERSIONS,
};

use crate::conn::{answer, answer_predict, body_len, Conn};
use crate::{ClientError, Endpoint, PredictOptions, PredictResult};

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection to an edgeinfer server.
pub struct Client {
    // Buffered so that one read usually takes a whole answer; writes pass straight through.
    io: BufReader<Box<dyn Io>>,
    conn: Conn,
    server: Option<HelloResponse>,
}

impl Client {
    /// Connects without sending HELLO (the protocol makes it optional); see [`Client::hello`].
    pub async fn connect(endpoint: &Endpoint) -> Result<Client, ClientError> {
        let stream: Box<dyn Io> = match endpoint {
            Endpoint::Unix(p) => Box::new(UnixStream::connect(p).await?),
            Endpoint::Tcp(a) => {
                let s = TcpStream::connect(a.as_str()).await?;
                // Requests are single small writes; Nagle would only add latency.
                s.set_nodelay(true)?;
                Box::new(s)
            }
        };
        Ok(Client {
            io: BufReader::with_capacity(64 << 10, stream),
            conn: Conn::new(),
            server: None,
        })
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
    pub async fn hello(&mut self) -> Result<HelloResponse, ClientError> {
        self.hello_with_token("").await
    }

    /// HELLO carrying `token`, as a server with `server.auth_token_file` requires before
    /// anything else (a wrong one is answered UNAUTHENTICATED and the connection closes).
    pub async fn hello_with_token(&mut self, token: &str) -> Result<HelloResponse, ClientError> {
        let msg = Hello {
            versions: SUPPORTED_VERSIONS.to_vec(),
            client: concat!("edgeinfer-client/", env!("CARGO_PKG_VERSION")).into(),
            token: token.into(),
            shm_ring_bytes: 0,
        };
        let id = self.conn.encode_message(Opcode::Hello, &msg)?;
        self.send_wbuf().await?;
        let h = self.wait(id).await?;
        let r: HelloResponse = answer(&h, &self.conn.rbuf, Opcode::Hello)?;
        self.server = Some(r.clone());
        Ok(r)
    }

    pub async fn predict(
        &mut self,
        model: &str,
        inputs: &[TensorView<'_>],
        opts: &PredictOptions,
    ) -> Result<PredictResult, ClientError> {
        let id = self.send_predict(model, inputs, opts).await?;
        let h = self.wait(id).await?;
        answer_predict(&h, &self.conn.rbuf)
    }

    pub async fn metadata(
        &mut self,
        model: &str,
        version: Option<&str>,
    ) -> Result<ModelMetadata, ClientError> {
        let msg = MetadataRequest {
            model: model.into(),
            version: version.map(Into::into),
        };
        let id = self.conn.encode_message(Opcode::Metadata, &msg)?;
        self.send_wbuf().await?;
        let h = self.wait(id).await?;
        answer(&h, &self.conn.rbuf, Opcode::Metadata)
    }

    pub async fn health(&mut self) -> Result<HealthResponse, ClientError> {
        let id = self
            .conn
            .encode_message(Opcode::Health, &HealthRequest {})?;
        self.send_wbuf().await?;
        let h = self.wait(id).await?;
        answer(&h, &self.conn.rbuf, Opcode::Health)
    }

    /// Sends a PREDICT without waiting; returns its request id. Collect with [`Client::recv`].
    pub async fn send_predict(
        &mut self,
        model: &str,
        inputs: &[TensorView<'_>],
        opts: &PredictOptions,
    ) -> Result<u64, ClientError> {
        let id = self.conn.encode_predict(model, inputs, opts)?;
        self.send_wbuf().await?;
        Ok(id)
    }

    /// Sends an already-encoded request frame after giving it a fresh request id (written
    /// into `frame`), so a load generator encodes once and resends.
    pub async fn send_frame(&mut self, frame: &mut [u8]) -> Result<u64, ClientError> {
        let id = self.conn.next_id();
        set_request_id(frame, id)?;
        self.io.get_mut().write_all(frame).await?;
        self.conn.in_flight += 1;
        Ok(id)
    }

    /// The next PREDICT answer, in arrival order: `(request_id, result)`. The outer error is
    /// the connection failing; the inner one is this request failing.
    #[allow(clippy::type_complexity)]
    pub async fn recv(&mut self) -> Result<(u64, Result<PredictResult, ClientError>), ClientError> {
        let h = self.next_frame(None).await?;
        Ok((h.request_id, answer_predict(&h, &self.conn.rbuf)))
    }

    /// The next answer frame undecoded: its header and body (valid until the next call).
    pub async fn recv_frame(&mut self) -> Result<(Header, &[u8]), ClientError> {
        let h = self.next_frame(None).await?;
        Ok((h, &self.conn.rbuf))
    }

    async fn send_wbuf(&mut self) -> Result<(), ClientError> {
        self.io.get_mut().write_all(&self.conn.wbuf).await?;
        self.conn.in_flight += 1;
        Ok(())
    }

    /// Reads until the answer to `id` (or, with `None`, any answer) is in `conn.rbuf`,
    /// keeping answers to other requests for later.
    async fn next_frame(&mut self, id: Option<u64>) -> Result<Header, ClientError> {
        if let Some((h, body)) = self.conn.unstash(id) {
            self.conn.rbuf = body;
            // Saturating: a frame the server sent unasked was stashed too.
            self.conn.in_flight = self.conn.in_flight.saturating_sub(1);
            return Ok(h);
        }
        loop {
            let h = self.read_frame().await?;
            if id.is_none_or(|id| id == h.request_id) {
                self.conn.in_flight = self.conn.in_flight.saturating_sub(1);
                return Ok(h);
            }
            self.conn.stash(h);
        }
    }

    async fn wait(&mut self, id: u64) -> Result<Header, ClientError> {
        self.next_frame(Some(id)).await
    }

    async fn read_frame(&mut self) -> Result<Header, ClientError> {
        let mut hb = [0u8; HEADER_LEN];
        self.io.read_exact(&mut hb).await?;
        let h = Header::decode_with(&hb, &self.conn.limits)?;
        let n = body_len(&h)?;
        self.conn.rbuf.resize(n, 0);
        self.io.read_exact(&mut self.conn.rbuf).await?;
        Ok(h)
    }
}
