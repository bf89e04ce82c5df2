//! Ctrl-C and SIGTERM during `defrag` and `--abort`: checked between writes, and awaited by the
//! wait, so that an interrupted run stops where the cluster is consistent.

use tokio::sync::watch;

/// Ctrl-C and SIGTERM, turned into a flag checked between writes and a future the wait selects
/// on, so an interrupted run stops between two consistent states instead of dying mid-way.
#[derive(Debug)]
pub struct Interrupt {
    rx: watch::Receiver<bool>,
}

impl Interrupt {
    /// Installs the handlers. From then on Ctrl-C no longer kills the process at once.
    pub fn install() -> Self {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            let terminate = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => futures::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = terminate => {}
            }
            let _ = tx.send(true);
        });
        Interrupt { rx }
    }

    /// An interrupt that never fires.
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(false);
        // Keep the sender alive forever so `wait` pends instead of returning.
        std::mem::forget(tx);
        Interrupt { rx }
    }

    /// True once a signal arrived.
    pub fn fired(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves when a signal arrives.
    pub async fn wait(&mut self) {
        if self.rx.wait_for(|fired| *fired).await.is_err() {
            futures::future::pending::<()>().await;
        }
    }
}
