//! A TCP proxy that can cut every connection through it and refuse new
//! ones for a while: a network partition between the processes and one
//! service, as a pod sees it when the service's node goes away.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct TcpProxy {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    /// Bumped on every cut: connections from an earlier generation close.
    generation: watch::Sender<u64>,
    pub cuts: Arc<AtomicU64>,
}

impl TcpProxy {
    /// Listens on a free port of 127.0.0.1; forwards on the tokio runtime
    /// this is called from.
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let runtime = tokio::runtime::Handle::try_current()
            .expect("a TCP proxy runs on the tokio runtime of the test that starts it");
        let open = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let proxy = Self {
            addr,
            open: open.clone(),
            generation: generation.clone(),
            cuts: Arc::new(AtomicU64::new(0)),
        };
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("tokio listener");
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if !open.load(Ordering::SeqCst) {
                    // Refused: the connection is closed at once.
                    drop(client);
                    continue;
                }
                let mut cut = generation.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        proxy
    }

    /// Closes every connection and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cuts.fetch_add(1, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}
