//! A TCP load balancer for the multi-replica drills: one loopback address in front of several
//! replicas, as a Kubernetes Service or HAProxy in TCP mode would be. Each connection goes to
//! one backend, picked round-robin or in order of preference; a backend that refuses the
//! connection (a replica that stopped listening) is skipped for the next one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How a connection's backend is picked.
#[derive(Clone, Copy, Debug)]
pub enum Policy {
    /// The next backend in turn.
    RoundRobin,
    /// The first backend that accepts, in the order given (a primary and its fallbacks).
    FirstAvailable,
}

pub struct Balancer {
    pub addr: SocketAddr,
    backends: Arc<RwLock<Vec<SocketAddr>>>,
    /// Connections handed to each backend, in the order the backends were given.
    counts: Arc<Vec<AtomicUsize>>,
    task: JoinHandle<()>,
}

impl Balancer {
    pub async fn start(backends: Vec<SocketAddr>, policy: Policy) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts: Arc<Vec<AtomicUsize>> =
            Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let backends = Arc::new(RwLock::new(backends));
        let next = Arc::new(AtomicUsize::new(0));
        let task = {
            let (counts, backends) = (counts.clone(), backends.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let _ = client.set_nodelay(true);
                    let first = match policy {
                        Policy::RoundRobin => next.fetch_add(1, Ordering::Relaxed),
                        Policy::FirstAvailable => 0,
                    };
                    let (backends, counts) = (backends.read().unwrap().clone(), counts.clone());
                    tokio::spawn(async move {
                        let Some((i, server)) = connect(&backends, first).await else {
                            return; // every backend refused: the client sees a closed connection
                        };
                        counts[i].fetch_add(1, Ordering::Relaxed);
                        let (mut client, mut server) = (client, server);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    });
                }
            })
        };
        Balancer {
            addr,
            backends,
            counts,
            task,
        }
    }

    /// Points backend `i` at `addr` (a replica started again on new ports).
    pub fn set_backend(&self, i: usize, addr: SocketAddr) {
        self.backends.write().unwrap()[i] = addr;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Connections handed to backend `i` so far.
    pub fn connections_to(&self, i: usize) -> usize {
        self.counts[i].load(Ordering::Relaxed)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Tries every backend once, from `first` on.
async fn connect(backends: &[SocketAddr], first: usize) -> Option<(usize, TcpStream)> {
    for k in 0..backends.len() {
        let i = (first + k) % backends.len();
        let attempt =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(backends[i])).await;
        if let Ok(Ok(server)) = attempt {
            let _ = server.set_nodelay(true);
            return Some((i, server));
        }
    }
    None
}
