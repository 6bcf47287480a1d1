//! A bare tokio-modbus 0.17 TCP server answering FC04 from an in-memory table: the speed reference castpoint's own server is compared with.

use std::future::{ready, Ready};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::{ExceptionCode, Request, Response};

struct Bare {
    input: Arc<Vec<u16>>,
}

impl tokio_modbus::server::Service for Bare {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Request<'static>) -> Self::Future {
        ready(match req {
            Request::ReadInputRegisters(addr, qty) => {
                let (a, n) = (usize::from(addr), usize::from(qty));
                match self.input.get(a..a + n) {
                    Some(v) => Ok(Response::ReadInputRegisters(v.to_vec())),
                    None => Err(ExceptionCode::IllegalDataAddress),
                }
            }
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let bind: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    let listener = TcpListener::bind(bind).await?;
    println!("listening modbus {}", listener.local_addr()?);
    let input = Arc::new((0..100u16).collect::<Vec<_>>());
    let server = Server::new(listener);
    let on_connected = |stream, peer| {
        let input = input.clone();
        async move {
            accept_tcp_connection(stream, peer, move |_| {
                Ok(Some(Bare {
                    input: input.clone(),
                }))
            })
        }
    };
    server.serve(&on_connected, |_err| {}).await
}
