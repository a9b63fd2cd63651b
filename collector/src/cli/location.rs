//! The location commands: `landmark serve|key|add|list` and `hosts set-site`.

use std::path::Path;
use std::sync::Arc;

use super::{Place, Result, config, open, out, print_json, runtime, runtime_rt, usage};
use crate::export::ExportKey;
use crate::landmark::LandmarkConfig;
use crate::store::{LandmarkRow, Site};

/// `landmark serve`: runs a landmark on `listen` until SIGTERM or Ctrl-C.
///
/// # Errors
/// Configuration for a bad key file or listen address.
pub fn landmark_serve(listen: &str, cfg: LandmarkConfig, lat: f64, lon: f64, key: &Path) -> Result {
    if cfg.name.is_empty() || cfg.rounds == 0 {
        return Err(usage("--name must not be empty and --rounds must be at least 1"));
    }
    let key = Arc::new(ExportKey::load_or_create_at(key).map_err(config)?);
    let rt = runtime_rt()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| config(format!("--listen {listen}: {e}; give a free HOST:PORT")))?;
        let addr = listener.local_addr().map_err(runtime)?;
        tracing::info!(name = %cfg.name, %addr, lat, lon, key_id = %key.key_id(), "landmark listening");
        println!("landmark {} listening on {addr}", cfg.name);
        crate::landmark::serve(listener, cfg, key, crate::logging::shutdown_signal()).await;
        Ok(())
    })
}

/// `landmark key`: the landmark key's public half as SPKI PEM (creating the key if absent).
///
/// # Errors
/// Configuration for a bad key file.
pub fn landmark_key(key: &Path) -> Result {
    out(&ExportKey::load_or_create_at(key).map_err(config)?.spki_pem())
}

/// `landmark add`: registers a landmark with its public key (SPKI PEM) and the address agents dial.
///
/// # Errors
/// Usage for a bad key file, position or address.
pub fn landmark_add(at: &Place, name: &str, lat: f64, lon: f64, key_pem: &Path, address: &str) -> Result {
    let pem = std::fs::read_to_string(key_pem).map_err(|e| usage(format!("--key-pem {}: {e}", key_pem.display())))?;
    if pem.len() > 16 * 1024 {
        return Err(usage(format!("--key-pem {}: larger than a public key file", key_pem.display())));
    }
    let public_key = crate::export::keys::public_key_from_pem(&pem)
        .map_err(|e| usage(format!("--key-pem {}: {e}; give what `landmark key` prints", key_pem.display())))?;
    if address.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
        return Err(usage(format!("--address {address:?}: give HOST:PORT, where agents reach the landmark")));
    }
    let row = LandmarkRow::new(name, lat, lon, public_key, address.to_string());
    open(at)?.add_landmark(&row, "cli", crate::now_ms()).map_err(|e| usage(e.to_string()))?;
    out(&format!("landmark {name} registered; agents learn it when their streams next open\n"))
}

/// `landmark list`.
///
/// # Errors
/// When the store cannot be read.
pub fn landmark_list(at: &Place, json: bool) -> Result {
    let ls = open(at)?.landmarks().map_err(runtime)?;
    if json {
        return print_json(&ls);
    }
    let mut text = String::from("NAME              LAT        LON        ADDRESS\n");
    for l in &ls {
        text.push_str(&format!("{:<17} {:>9.4} {:>10.4}  {}\n", l.name, l.lat, l.lon, l.address));
    }
    out(&text)
}

/// `hosts set-site`.
///
/// # Errors
/// Usage for an unknown host or impossible position.
pub fn hosts_set_site(at: &Place, host_id: &str, lat: f64, lon: f64, name: Option<&str>) -> Result {
    let site = Site { name: name.map(str::to_string), lat, lon };
    open(at)?.set_site(host_id, &site, "cli", crate::now_ms()).map_err(|e| usage(e.to_string()))?;
    out(&format!("host {host_id} registered at {lat}, {lon}\n"))
}
