//! The demo's landmarks: three in-process landmark services on loopback (Ashburn, Frankfurt,
//! Singapore), each behind a relay that holds every chunk for the one-way time light in fiber needs
//! between that landmark and Ashburn, where the demo's machine "is". Hosts registered in Ashburn are
//! verified; a host registered in Frankfurt whose GPUs answer from here is inconsistent.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::DemoError;
use crate::landmark::LandmarkConfig;
use crate::store::{LandmarkRow, Site, Store};

/// Where the demo's machine is.
pub const HERE: (f64, f64) = (39.0438, -77.4874);
/// The demo's landmarks: name, latitude, longitude.
pub const LANDMARKS: [(&str, f64, f64); 3] =
    [("ashburn", 39.0438, -77.4874), ("frankfurt", 50.1109, 8.6821), ("singapore", 1.3521, 103.8198)];

/// A site by name.
pub fn site(name: &str) -> Site {
    let (_, lat, lon) = LANDMARKS.iter().copied().find(|l| l.0 == name).unwrap_or(LANDMARKS[0]);
    Site { name: Some(format!("{name}-dc")), lat, lon }
}

/// Starts the landmarks and their relays, and registers them in the store.
///
/// # Errors
/// [`DemoError::Setup`] when a key, a listener or the store fails.
pub async fn start(store: &Store, dir: &Path, stop: watch::Receiver<bool>) -> Result<(), DemoError> {
    let setup = |e: String| DemoError::Setup(format!("demo landmarks: {e}"));
    for (name, lat, lon) in LANDMARKS {
        let key = crate::export::ExportKey::load_or_create_at(&dir.join(format!("{name}.pk8"))).map_err(setup)?;
        let public_key = key.public_key();
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| setup(e.to_string()))?;
        let target = listener.local_addr().map_err(|e| setup(e.to_string()))?;
        let cfg = LandmarkConfig {
            name: name.to_string(),
            rounds: 5,
            spacing: Duration::from_millis(20),
            every: Duration::from_secs(2),
            gpu_rounds: 3,
        };
        let mut s = stop.clone();
        tokio::spawn(crate::landmark::serve(listener, cfg, Arc::new(key), async move {
            let _ = s.wait_for(|v| *v).await;
        }));
        let km = crate::location::distance_km(lat, lon, HERE.0, HERE.1);
        let delay = Duration::from_micros((km / gpuattest_proto::landmark::FIBER_KM_PER_US) as u64);
        let relay = TcpListener::bind("127.0.0.1:0").await.map_err(|e| setup(e.to_string()))?;
        let address = relay.local_addr().map_err(|e| setup(e.to_string()))?.to_string();
        tokio::spawn(relay_loop(relay, target.to_string(), delay, stop.clone()));
        let row = LandmarkRow::new(name, lat, lon, public_key, address);
        store.add_landmark(&row, "demo", crate::now_ms()).map_err(|e| setup(e.to_string()))?;
    }
    Ok(())
}

async fn relay_loop(listener: TcpListener, target: String, delay: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|v| *v) => return,
        };
        let Ok((down, _)) = accepted else { continue };
        let Ok(up) = TcpStream::connect(&target).await else { continue };
        let _ = (down.set_nodelay(true), up.set_nodelay(true));
        let (dr, dw) = down.into_split();
        let (ur, uw) = up.into_split();
        tokio::spawn(pump(dr, uw, delay));
        tokio::spawn(pump(ur, dw, delay));
    }
}

/// Copies one direction, each chunk released `delay` after it was read.
async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin + Send + 'static,
    delay: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || tx.send((tokio::time::Instant::now() + delay, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}
