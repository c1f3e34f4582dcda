//! `hyperblow dht peers`: asks the DHT who has a torrent, prints the peers and exits.
//!
//! A short-lived node of its own (read-only, BEP 43: it answers no queries and stays out of others'
//! routing tables) on one UDP socket, started from the routing table the last session saved in the
//! state directory (`dht.state`, read, never written here) and the bootstrap nodes, runs one
//! `get_peers` lookup of the core's [`Dht`] and prints each peer as it is found.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant as StdInstant};

use clap::{Args, Subcommand};
use hyperblow_core::dht::{Dht, DhtConfig, DhtEvent};
use hyperblow_core::magnet::MagnetLink;
use hyperblow_core::rng::seeded;
use hyperblow_core::{InfoHash, Instant};
use hyperblow_driver::engine::DEFAULT_BOOTSTRAP;
use serde_json::json;

use crate::error::CliError;
use crate::transfer::{self, parse_host_port};

/// Arguments of `hyperblow dht`.
#[derive(Debug, Args)]
pub struct DhtArgs {
    #[command(subcommand)]
    command: DhtCommand,
}

#[derive(Debug, Subcommand)]
enum DhtCommand {
    /// Print who the DHT says has a torrent (one HOST:PORT per line), then exit.
    Peers(PeersArgs),
}

/// Arguments of `hyperblow dht peers`.
#[derive(Debug, Args)]
struct PeersArgs {
    /// The torrent: its info-hash (40 hex or 32 base32 characters) or a magnet link.
    #[arg(value_name = "INFO-HASH | MAGNET")]
    target: String,
    /// A DHT node to start from instead of the public routers (HOST:PORT); repeat for more.
    #[arg(long = "dht-bootstrap", value_name = "HOST:PORT", value_parser = parse_host_port)]
    dht_bootstrap: Vec<(String, u16)>,
    /// The state directory whose saved routing table (`dht.state`) to start from (default
    /// `$XDG_DATA_HOME/hyperblow`, else `~/.local/share/hyperblow`).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Local IPv4 address to send from.
    #[arg(long, value_name = "ADDR", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    bind: IpAddr,
    /// How long the lookup may take.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = transfer::parse_duration)]
    timeout: Duration,
    /// Print JSON lines instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `hyperblow dht ...`.
pub fn run(args: &DhtArgs) -> Result<(), CliError> {
    match &args.command {
        DhtCommand::Peers(p) => peers(p),
    }
}

/// The info-hash of a magnet link or a bare info-hash.
fn info_hash_of(target: &str) -> Result<InfoHash, CliError> {
    let link = if target.starts_with("magnet:") {
        MagnetLink::parse(target)
    } else {
        MagnetLink::parse(&format!("magnet:?xt=urn:btih:{target}"))
    };
    link.map(|l| l.info_hash).map_err(|e| {
        CliError::Input(format!(
            "{target:?} is neither an info-hash nor a magnet link: {e}"
        ))
    })
}

fn peers(args: &PeersArgs) -> Result<(), CliError> {
    let info_hash = info_hash_of(&args.target)?;
    let bootstrap: Vec<(String, u16)> = if args.dht_bootstrap.is_empty() {
        DEFAULT_BOOTSTRAP
            .iter()
            .map(|(h, p)| ((*h).to_owned(), *p))
            .collect()
    } else {
        args.dht_bootstrap.clone()
    };
    let v4 = args.bind.is_ipv4();
    let mut addrs = Vec::new();
    for (host, port) in &bootstrap {
        // A name that does not resolve is skipped: the others (or the saved table) may do.
        if let Ok(found) = (host.as_str(), *port).to_socket_addrs() {
            addrs.extend(found.filter(|a| a.is_ipv4() == v4).take(1));
        }
    }
    let socket = UdpSocket::bind(SocketAddr::new(args.bind, 0)).map_err(|e| {
        CliError::Internal(format!("cannot bind a UDP socket on {}: {e}", args.bind))
    })?;
    let config = DhtConfig {
        read_only: true,
        ..DhtConfig::default()
    };
    let origin = StdInstant::now();
    let now = || Instant::from_origin(origin.elapsed());
    let rng = seeded(hyperblow_driver::os_seed());
    let saved = args
        .state_dir
        .clone()
        .or_else(crate::tui::state::default_dir)
        .and_then(|d| std::fs::read(d.join("dht.state")).ok());
    let mut dht = saved
        .and_then(|s| Dht::from_state(config.clone(), &s, now(), rng.clone()).ok())
        .unwrap_or_else(|| Dht::new(config, now(), rng));
    if addrs.is_empty() && dht.table().is_empty() {
        return Err(CliError::NoPeers(
            "no DHT node to start from (no bootstrap node resolved, no saved routing table)".into(),
        ));
    }
    dht.bootstrap(now(), &addrs);
    let lookup = dht
        .get_peers(now(), info_hash)
        .map_err(|e| CliError::Internal(format!("DHT lookup: {e}")))?;
    let deadline = origin + args.timeout;
    let mut found = BTreeSet::new();
    let mut buf = vec![0u8; 4096];
    let mut out = std::io::stdout().lock();
    let summary = loop {
        while let Some((to, data)) = dht.poll_transmit() {
            if to.is_ipv4() == v4 {
                // A datagram that cannot be sent is a query that times out.
                let _ = socket.send_to(&data, to);
            }
        }
        let mut done = None;
        while let Some(ev) = dht.poll_event() {
            match ev {
                DhtEvent::Peers {
                    lookup: l, peers, ..
                } if l == lookup => {
                    for p in peers {
                        if found.insert(p) {
                            let line = if args.json {
                                json!({"peer": p.to_string()}).to_string()
                            } else {
                                p.to_string()
                            };
                            let _ = writeln!(out, "{line}");
                        }
                    }
                    let _ = out.flush();
                }
                DhtEvent::LookupDone(s) if s.lookup == lookup => done = Some(s),
                _ => {}
            }
        }
        if let Some(s) = done {
            break Some(s);
        }
        let left = deadline.saturating_duration_since(StdInstant::now());
        if left.is_zero() {
            break None;
        }
        let until_timer = dht
            .poll_timeout()
            .map_or(left, |t| t.saturating_duration_since(now()));
        let wait = left.min(until_timer).max(Duration::from_millis(1));
        let _ = socket.set_read_timeout(Some(wait));
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                if let Some(d) = buf.get(..n) {
                    dht.handle_datagram(now(), from, d);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // ICMP errors of an earlier send show up here on Linux: the query just times out.
            Err(_) => {}
        }
        if dht.poll_timeout().is_some_and(|t| t <= now()) {
            dht.handle_timeout(now());
        }
    };
    let (queries, responded) = summary
        .as_ref()
        .map_or((0, 0), |s| (s.queries, s.responded));
    if args.json {
        let _ = writeln!(
            out,
            "{}",
            json!({"done": summary.is_some(), "info_hash": info_hash.to_hex(), "peers": found.len(),
                   "queries": queries, "responded": responded})
        );
    }
    if found.is_empty() {
        return Err(CliError::NoPeers(format!(
            "the DHT knows no peer of {} ({} queries, {} nodes answered{})",
            info_hash.to_hex(),
            queries,
            responded,
            if summary.is_none() { ", timed out" } else { "" }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_info_hashes_or_magnet_links() {
        let hex = "0123456789abcdef0123456789abcdef01234567";
        let ih = info_hash_of(hex).expect("hex");
        assert_eq!(ih.to_hex(), hex);
        assert_eq!(
            info_hash_of(&format!("magnet:?xt=urn:btih:{hex}&dn=x")).expect("magnet"),
            ih
        );
        assert!(matches!(info_hash_of("nope"), Err(CliError::Input(_))));
        assert_eq!(parse_host_port("[::1]:6881"), Ok(("::1".to_owned(), 6881)));
        assert!(parse_host_port("router:0").is_err());
        assert!(parse_host_port("router").is_err());
    }
}
