#!/usr/bin/env python3
"""Writes the hand-made part of the fuzz seed corpora (the .torrent seeds were made by mktorrent).

Run from fuzz/seeds/: python3 make_seeds.py. Every seed is a small, valid example of its format,
following BEP 3, 6, 9, 10, 11, 15 and 23, so that the fuzzer starts from well-formed inputs.
"""
import os
import struct

def put(target, name, data):
    os.makedirs(target, exist_ok=True)
    with open(os.path.join(target, name), "wb") as f:
        f.write(data)

IH = bytes(range(1, 21))
PID = b"-TR3000-abcdefghijkl"

def hs(reserved=b"\x00\x00\x00\x00\x00\x10\x00\x04"):
    return b"\x13BitTorrent protocol" + reserved + IH + PID

def msg(mid, payload=b""):
    return struct.pack(">IB", 1 + len(payload), mid) + payload

stream = (hs() + msg(20, b"\x00d1:md11:ut_metadatai1e6:ut_pexi2ee13:metadata_sizei300e1:v6:Tr 3.0e")
          + msg(5, b"\xaa\xc0") + msg(1) + msg(2) + msg(4, struct.pack(">I", 3))
          + msg(6, struct.pack(">III", 1, 0, 16384)) + msg(8, struct.pack(">III", 1, 0, 16384))
          + msg(7, struct.pack(">II", 2, 0) + b"x" * 64) + msg(0) + struct.pack(">I", 0)
          + msg(9, struct.pack(">H", 6881)))
fast = (hs() + msg(14) + msg(17, struct.pack(">I", 4)) + msg(13, struct.pack(">I", 2))
        + msg(1) + msg(16, struct.pack(">III", 0, 0, 16384)) + msg(15))
put("wire_decoder", "stream", b"\x07" + stream)
put("wire_decoder", "fast", b"\x40" + fast)
put("wire_decoder", "after_handshake", b"\x81" + stream[68:])

def script(ctl, data, ops_between=b""):
    # Feed in 64-byte chunks (op 0x3f), with the given ops after each chunk.
    out = bytes([ctl])
    for i in range(0, len(data), 64):
        c = data[i:i + 64]
        out += bytes([len(c) - 1]) + c + ops_between
    return out

# The session's info-hash is [7; 20]; its handshakes name it.
IH7 = bytes([7]) * 20
def hs7(reserved=b"\x00\x00\x00\x00\x00\x10\x00\x04"):
    return b"\x13BitTorrent protocol" + reserved + IH7 + PID
put("peer_session", "incoming_leecher", script(0x06 | 0x08, hs7() + msg(2) + msg(6, struct.pack(">III", 1, 0, 16384)), b"\xd9"))
put("peer_session", "outgoing_fast", script(0x07, hs7() + msg(14) + msg(1), b"\xd0\xc0\xc1") + bytes([0x0b]) + msg(16, struct.pack(">III", 0, 0, 16384)) + b"\xf0\xff")
put("peer_session", "outgoing_blocks", script(0x03, hs7() + msg(5, b"\xff\xc0") + msg(1), b"\xd0\xc0") + bytes([0x3f]) + msg(7, struct.pack(">II", 0, 0) + b"y" * 50))
put("peer_session", "magnet", script(0x25, hs7() + msg(20, b"\x00d1:md11:ut_metadatai3ee13:metadata_sizei1234ee") + msg(14), b"\xe0"))

# UDP tracker replies (BEP 15): connect, announce (v4), scrape, error.
tx = 0x11223344
put("tracker_udp", "connect", struct.pack(">IIQ", 0, tx, 0x0102030405060708))
put("tracker_udp", "announce", struct.pack(">IIIII", 1, tx, 1800, 2, 5) + bytes([127, 0, 0, 2, 0x1a, 0xe1, 10, 0, 0, 1, 0x1a, 0xe2]))
put("tracker_udp", "connect_then_announce", struct.pack(">IIQ", 0, tx, 7) + b"\xfe" + struct.pack(">IIIII", 1, tx, 900, 0, 1) + bytes([127, 0, 0, 3, 0, 80]))
put("tracker_udp", "scrape", struct.pack(">IIIII", 2, tx, 4, 10, 3))
put("tracker_udp", "error", struct.pack(">II", 3, tx) + b"unregistered torrent")
put("tracker_udp", "refusal", struct.pack(">II", 1, tx))

# HTTP tracker replies.
def http(body, extra=b""):
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" + extra + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
compact = b"d8:completei3e10:incompletei1e8:intervali1800e12:min intervali60e5:peers12:" + bytes([127, 0, 0, 2, 0x1a, 0xe1, 10, 0, 0, 1, 0x1a, 0xe2]) + b"6:peers618:" + bytes(15) + b"\x01\x1a\xe1" + b"e"
dictp = b"d8:intervali900e5:peersld2:ip9:127.0.0.57:peer id20:" + PID + b"4:porti6881eeee"
fail = b"d14:failure reason17:torrent not founde"
scrape = b"d5:filesd20:" + IH + b"d8:completei5e10:downloadedi50e10:incompletei10eeee"
put("tracker_http", "compact", b"\x3f" + http(compact))
put("tracker_http", "dict_peers", b"\x05" + http(dictp))
put("tracker_http", "failure", b"\x3f" + http(fail))
put("tracker_http", "scrape", b"\x3f" + http(scrape))
put("tracker_http", "chunked", b"\x07" + b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + hex(len(compact))[2:].encode() + b"\r\n" + compact + b"\r\n0\r\n\r\n")
put("tracker_http", "eof_framed", b"\x7f" + b"HTTP/1.0 200 OK\r\n\r\n" + compact)
put("tracker_http", "redirect", b"\x3f" + b"HTTP/1.1 302 Found\r\nLocation: /other?x=2\r\nContent-Length: 0\r\n\r\n")

# ut_metadata (BEP 9): the first two bytes are the fuzz target's size selector, then `!`-separated
# messages, each with a peer selector byte first. Plain messages are seeds too.
put("ut_metadata", "request", b"d8:msg_typei0e5:piecei0ee")
put("ut_metadata", "reject", b"d8:msg_typei2e5:piecei1ee")
put("ut_metadata", "data", b"d8:msg_typei1e5:piecei0e10:total_sizei8ee" + b"d1:ai1ee")
put("ut_metadata", "session", b"\x02\x00" + b"\x00d8:msg_typei1e5:piecei0e10:total_sizei15ee" + b"d4:name1:xe" + b"?" + b"\x01d8:msg_typei2e5:piecei0ee")

# ut_pex (BEP 11).
added = bytes([10, 0, 0, 1, 0x1a, 0xe1, 192, 168, 1, 9, 0x1a, 0xe2])
put("ut_pex", "added", b"d5:added12:" + added + b"7:added.f2:\x01\x10e")
put("ut_pex", "added6_dropped", b"d6:added618:" + bytes([0x20, 1, 0x0d, 0xb8]) + bytes(11) + b"\x05\x1a\xe1" + b"8:added6.f1:\x027:dropped6:" + bytes([10, 0, 0, 7, 0, 80]) + b"e")
put("ut_pex", "two", b"d5:added6:" + added[:6] + b"e!d7:dropped6:" + added[:6] + b"e")

# Magnet links (BEP 9, BEP 53).
put("magnet", "hex", b"magnet:?xt=urn:btih:0102030405060708090a0b0c0d0e0f1011121314&dn=a%20file&tr=udp%3A%2F%2F127.0.0.1%3A6969%2Fannounce&tr=http://127.0.0.1:8000/announce")
put("magnet", "base32", b"magnet:?xt=urn:btih:AEBAGBAFAYDQQCIKBMGA2DQPCAIREEYU&x.pe=127.0.0.1:6881&x.pe=[::1]:51413&so=0,2,4-6")
put("magnet", "so", b"0,2,4-6")
put("magnet", "ws", b"magnet:?xt=urn:btih:0102030405060708090a0b0c0d0e0f1011121314&ws=http%3A%2F%2F127.0.0.1%3A8080%2Fa%2520b%2F&ws=https://127.0.0.1/x.iso")

# Bencode: a tracker reply and an extension handshake (the torrents are copied in too).
put("bencode", "reply", compact)
put("bencode", "ext_handshake", b"d1:md11:ut_metadatai1e6:ut_pexi2ee13:metadata_sizei300e1:pi6881e4:reqqi250e1:v6:Tr 3.0e")
put("bencode", "nested", b"ld1:ai-12e1:bli0ei1ee0:e3:xyze")

# KRPC (BEP 5, 32, 43): a query of each kind, responses with nodes and peers, an error. The first
# byte of each datagram also picks its sender in the target (0: the node it bootstrapped from).
NID = bytes(range(101, 121))
def bstr(b):
    return str(len(b)).encode() + b":" + b
node4 = NID + bytes([127, 0, 0, 2, 0x1a, 0xe1])
node6 = NID + bytes(15) + b"\x01" + b"\x1a\xe1"
put("krpc", "ping", b"d1:ad2:id" + bstr(NID) + b"e1:q4:ping1:t2:aa1:y1:qe")
put("krpc", "find_node", b"d1:ad2:id" + bstr(NID) + b"6:target" + bstr(IH) + b"4:wantl2:n42:n6ee1:q9:find_node1:t2:ab1:y1:qe")
put("krpc", "get_peers", b"d1:ad2:id" + bstr(NID) + b"9:info_hash" + bstr(IH) + b"e1:q9:get_peers1:t2:ac1:y1:q2:roi1ee")
put("krpc", "announce_peer", b"d1:ad2:id" + bstr(NID) + b"12:implied_porti1e9:info_hash" + bstr(IH) + b"4:porti6881e5:token8:abcdefghe1:q13:announce_peer1:t2:ad1:y1:qe")
put("krpc", "response_nodes", b"d2:ip6:" + bytes([127, 0, 0, 1, 0x1a, 0xe1]) + b"1:rd2:id" + bstr(NID) + b"5:nodes" + bstr(node4) + b"6:nodes6" + bstr(node6) + b"e1:t4:\x00\x00\x00\x011:v4:LT\x02\x001:y1:re")
put("krpc", "response_values", b"d1:rd2:id" + bstr(NID) + b"5:token8:abcdefgh6:valuesl6:" + bytes([127, 0, 0, 3, 0x1a, 0xe1]) + b"18:" + bytes(15) + b"\x01\x1a\xe2ee1:t4:\x00\x00\x00\x021:y1:re")
put("krpc", "error", b"d1:eli203e14:Protocol Errore1:t2:aa1:y1:ee")
put("krpc", "sequence", b"d1:ad2:id" + bstr(NID) + b"e1:q4:ping1:t2:aa1:y1:qe" + b"\xfe" + b"d1:eli201e7:Generice1:t2:zz1:y1:ee")
# Web-seed answers to a ranged GET of bytes 0-999 (control byte 0x00: range from 0, 1-byte chunks;
# 0xf0: 106-byte chunks).
body = bytes(range(256)) * 3 + bytes(232)
put("webseed_http", "partial", b"\xf0" + b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-999/10000\r\nContent-Length: 1000\r\n\r\n" + body)
put("webseed_http", "chunked", b"\x30" + b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-999/*\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1f4;x=y\r\n" + body[:500] + b"\r\n1f4\r\n" + body[500:] + b"\r\n0\r\nT: 1\r\n\r\n")
put("webseed_http", "close", b"\x70" + b"HTTP/1.0 206 Partial Content\r\nContent-Range: bytes 0-999/10000\r\n\r\n" + body)
put("webseed_http", "busy", b"\xf0" + b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\n\r\n")
put("webseed_http", "redirect", b"\xf0" + b"HTTP/1.1 302 Found\r\nLocation: /mirror/file.bin\r\nContent-Length: 0\r\n\r\n")
put("webseed_http", "ignored_range", b"\xf1" + b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n" + body)

# MSE/PE handshakes (control byte: bits 0-5 chunk length - 1, bit 6 require, bit 7 we dial). A peer's
# 96-byte public key (a fixed pattern, not a real key), then padding and what follows; a plain
# BitTorrent handshake where a key was expected; a key with the longest padding.
key = bytes((i * 37 + 11) % 256 for i in range(96))
put("mse_handshake", "accept_key_pad", b"\x0f" + key + bytes(64) + bytes(range(40)))
put("mse_handshake", "dial_key_pad", b"\x8f" + key + bytes(32) + b"\x00" * 8 + b"\x00\x00\x00\x02\x00\x00")
put("mse_handshake", "require_accept", b"\x7f" + key + bytes(512))
put("mse_handshake", "plain_instead_of_key", b"\x80" + hs())
put("mse_handshake", "short_key", b"\x03" + key[:50])
