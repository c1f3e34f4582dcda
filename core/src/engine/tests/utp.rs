//! Engine tests of uTP as a transport (`engine/utp.rs`) on the in-memory network: downloads over uTP
//! only, with loss, a uTP peer closing, the TCP fall-back of `both`, and a flood of bogus datagrams.

use super::*;
use crate::utp::packet::{write_header, Header, PacketType};

fn config(transport: Transport) -> EngineConfig {
    EngineConfig {
        transport,
        ..EngineConfig::default()
    }
}

/// A seeder (node 0) and a leecher (node 1) with the given transports; the leecher dials the seeder.
fn pair(seed: Transport, leech: Transport) -> (Net, Vec<u8>, TorrentId, TorrentId) {
    let (meta, content) = make_torrent("multi", FILES, PL, vec![]);
    let mut net = Net::new();
    let s = net.add_node(config(seed), 1);
    let l = net.add_node(config(leech), 2);
    let ts = net.add_seed(s, &meta, &content, PL);
    let now = net.now;
    let tl = net.nodes[l]
        .engine
        .add_torrent(now, add(&meta, None, vec![]))
        .expect("add leech");
    (net, content, ts, tl)
}

fn dial(net: &mut Net, tl: TorrentId) {
    let (now, seeder) = (net.now, net.nodes[0].addr);
    net.nodes[1].engine.add_peer(now, tl, seeder);
}

/// The download went over uTP only: no TCP dial, and each side's one connection is uTP.
fn assert_utp_only(net: &Net) {
    assert!(net.connects.is_empty(), "TCP dials: {:?}", net.connects);
    for n in &net.nodes {
        let ids: Vec<ConnId> = n.engine.conns.keys().copied().collect();
        assert!(ids.iter().all(|id| n.engine.is_utp(*id)), "{ids:?}");
        assert!(n.engine.utp_stats().datagrams_out > 0);
    }
}

#[test]
fn download_over_utp_only() {
    let (mut net, content, ts, tl) = pair(Transport::Utp, Transport::Utp);
    dial(&mut net, tl);
    // Quick: the MSE handshake (`prefer`) and everything after it go over the stream at once; a
    // byte lost on the way would show as the 30 s handshake timeout and a plain redial.
    assert!(net.run_until(Duration::from_secs(2), |n| n.completed(1, tl)));
    assert_eq!(disk_content(&net.nodes[1], tl), content);
    assert_utp_only(&net);
    let via_mse = net.nodes[1]
        .engine
        .conns
        .keys()
        .all(|id| net.nodes[1].engine.mse.via_mse(*id));
    assert!(via_mse, "the stream was set up by an MSE handshake");
    let up = net.nodes[0]
        .engine
        .torrent_stats(net.now, ts)
        .expect("stats");
    assert_eq!(up.uploaded, content.len() as u64);
    // Every data packet but a stream's last carries the full payload (1,400 bytes by default).
    let out = net.nodes[0].engine.utp_stats();
    assert!(
        out.datagrams_out < (content.len() / 1400) as u64 * 2,
        "{} datagrams for {} bytes",
        out.datagrams_out,
        content.len()
    );
}

#[test]
fn download_over_utp_survives_five_percent_loss() {
    let (mut net, content, _ts, tl) = pair(Transport::Utp, Transport::Utp);
    net.utp_loss = 50;
    dial(&mut net, tl);
    assert!(net.run_until(Duration::from_secs(25), |n| n.completed(1, tl)));
    assert_eq!(disk_content(&net.nodes[1], tl), content);
    assert!(net.utp_dropped > 5, "only {} dropped", net.utp_dropped);
    assert_utp_only(&net);
}

#[test]
fn a_utp_peer_closing_ends_the_connection_on_both_sides() {
    let (mut net, _content, ts, tl) = pair(Transport::Utp, Transport::Utp);
    dial(&mut net, tl);
    assert!(net.run_until(Duration::from_secs(60), |n| n.completed(1, tl)));
    // Both seeds now: the leecher removes the torrent, closing its uTP stream with a FIN.
    let now = net.now;
    net.nodes[1].engine.remove(now, tl);
    assert!(
        net.run_until(Duration::from_secs(30), |n| n.nodes[0].events.iter().any(
            |e| matches!(e, Event::PeerDisconnected { torrent, .. } if *torrent == ts)
        ))
    );
    assert_eq!(net.nodes[0].engine.conns.len(), 0);
    // After the linger both sockets forget the stream.
    net.run_for(Duration::from_secs(30));
    assert_eq!(net.nodes[0].engine.utp_connections(), 0);
    assert_eq!(net.nodes[1].engine.utp_connections(), 0);
}

#[test]
fn tcp_is_refused_under_utp_only_and_utp_under_tcp_only() {
    // A uTP-only leecher cannot reach a TCP-only seeder (its SYNs are dropped) and dials no TCP.
    let (mut net, _content, _ts, tl) = pair(Transport::Tcp, Transport::Utp);
    dial(&mut net, tl);
    assert!(!net.run_until(Duration::from_secs(20), |n| n.completed(1, tl)));
    assert!(net.connects.is_empty());
    assert_eq!(net.nodes[0].engine.utp_stats().syn_accepted, 0);
    assert!(net.nodes[0].engine.utp_stats().syn_dropped > 0);
    // A uTP-only node refuses incoming TCP.
    let now = net.now;
    assert!(net.nodes[1]
        .engine
        .handle_incoming(now, addr(9, 1234))
        .is_none());
}

#[test]
fn both_dials_utp_to_a_known_utp_peer_and_falls_back_to_tcp_when_unanswered() {
    // The seeder speaks uTP: a leecher that knows it dials uTP, and PEX would call it 0x04.
    let (mut net, content, _ts, tl) = pair(Transport::Both, Transport::Both);
    let seeder = net.nodes[0].addr;
    net.nodes[1].engine.utp.learn(seeder);
    dial(&mut net, tl);
    assert!(net.run_until(Duration::from_secs(60), |n| n.completed(1, tl)));
    assert_eq!(disk_content(&net.nodes[1], tl), content);
    assert_utp_only(&net);

    // A TCP-only seeder never answers the SYN: after SYN_FALLBACK the same dial goes over TCP.
    let (mut net, content, _ts, tl) = pair(Transport::Tcp, Transport::Both);
    let seeder = net.nodes[0].addr;
    net.nodes[1].engine.utp.learn(seeder);
    let start = net.now;
    dial(&mut net, tl);
    assert!(net.run_until(Duration::from_secs(60), |n| n.completed(1, tl)));
    assert_eq!(disk_content(&net.nodes[1], tl), content);
    assert_eq!(net.connects, vec![(1, seeder)]);
    assert!(net.now >= start + SYN_FALLBACK);
    assert!(net.nodes[1].engine.utp_stats().datagrams_out >= 1);
    // That address is TCP from now on.
    assert!(!net.nodes[1].engine.utp.speaks(&seeder));

    // Unknown peers are dialled over TCP at once.
    let (mut net, _content, _ts, tl) = pair(Transport::Both, Transport::Both);
    dial(&mut net, tl);
    assert!(net.run_until(Duration::from_secs(60), |n| n.completed(1, tl)));
    assert_eq!(net.connects.len(), 1);
    assert_eq!(net.nodes[1].engine.utp_stats().datagrams_out, 0);
}

#[test]
fn an_incoming_utp_peer_is_remembered_as_speaking_utp() {
    let (mut net, _content, _ts, tl) = pair(Transport::Both, Transport::Utp);
    dial(&mut net, tl);
    assert!(net.run_until(Duration::from_secs(60), |n| n.completed(1, tl)));
    let leecher = net.nodes[1].addr;
    assert!(net.nodes[0].engine.utp.speaks(&leecher));
    let id = *net.nodes[0]
        .engine
        .conns
        .keys()
        .next()
        .expect("a connection");
    assert!(net.nodes[0].engine.is_utp(id));
}

#[test]
fn a_flood_of_bogus_syns_and_unknown_packets_costs_bounded_memory_and_resets() {
    let mut net = Net::new();
    let n = net.add_node(config(Transport::Both), 1);
    let mut rng = seeded(99);
    let mut resets = 0u64;
    let mut datagrams = 0u64;
    let start = net.now;
    for i in 0..20_000u32 {
        // Ten seconds of flood, 2,000 packets a second from ever new addresses.
        let now = start + Duration::from_micros(u64::from(i) * 500);
        let from = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i % 50_000))),
            1024 + (i % 60_000) as u16,
        );
        let ty = if i % 2 == 0 {
            PacketType::Syn
        } else {
            PacketType::Data
        };
        let h = Header {
            ty,
            connection_id: rng.random(),
            timestamp_us: 0,
            timestamp_diff_us: 0,
            wnd_size: 65_535,
            seq_nr: rng.random(),
            ack_nr: rng.random(),
        };
        let mut buf = Vec::new();
        write_header(&h, None, &mut buf);
        buf.extend_from_slice(&[0x42; 100]);
        let e = &mut net.nodes[n].engine;
        e.handle_datagram(now, from, &buf);
        if e.poll_timeout().is_some_and(|t| t <= now) {
            e.handle_timeout(now);
        }
        while let Some(o) = e.poll_output() {
            if let Output::SendDatagram { data, .. } = o {
                datagrams += 1;
                if data[0] >> 4 == PacketType::Reset as u8 {
                    resets += 1;
                }
            }
        }
        let cfg = &e.config.utp;
        assert!(e.utp_connections() <= cfg.max_half_open, "{i}");
        assert_eq!(e.conns.len(), 0);
    }
    let cfg = EngineConfig::default().utp;
    let st = net.nodes[n].engine.utp_stats();
    // RESETs: the burst plus the rate over ten seconds; SYN answers: one per half-open slot
    // freed, and slots free only by the half-open timeout (10 s): at most two rounds.
    let max_resets = u64::from(cfg.reset_burst) + u64::from(cfg.reset_rate) * 10 + 1;
    assert!(resets <= max_resets, "{resets} RESETs");
    assert!(resets >= u64::from(cfg.reset_burst), "{resets} RESETs");
    assert!(st.resets_suppressed > 9_000, "{st:?}");
    assert!(st.syn_dropped > 9_000, "{st:?}");
    assert!(
        datagrams <= max_resets + 2 * 3 * cfg.max_half_open as u64,
        "{datagrams} datagrams out"
    );
}
