//! Peer wire decoding throughput.
//!
//! What is measured, honestly:
//! - Each iteration pushes a pre-encoded stream through one long-lived [`Decoder`], the way a connection
//!   task would: for every chunk it asks the decoder for its read buffer ([`Decoder::read_buf`]), copies
//!   as much of the chunk as fits the spare capacity offered (a read never returns more), then drains [`Decoder::decode`] until it returns `None`.
//!   That `extend_from_slice` into the read buffer stands in for the socket read (in the driver the kernel
//!   does this copy in `read(2)`); it is the only per-byte work in the `read+decode` benches. The decoder
//!   itself never copies a piece payload: blocks come out as `Bytes` slices of the read buffer. It may
//!   shorten a read to end on a frame boundary rather than move a partial frame; the number of reads and
//!   [`Decoder::bytes_moved`] (bytes it did move) are printed below so that trade is visible.
//! - Chunk sizes: 1,460 bytes (one Ethernet TCP segment: the worst realistic read) and 64 KiB (a typical
//!   read under load).
//! - The `decode_only` variants leave the copy out: the whole stream is loaded into a fresh decoder in the
//!   (untimed) setup and only draining is timed.
//! - Each decoded message is consumed the way a peer session would: matched, with its fields read (folded
//!   into a checksum that goes through `black_box`), then dropped (a piece block's drop is its refcount
//!   decrement). Passing the whole enum to `black_box` instead would time a 64-byte stack copy of every
//!   message that no real consumer makes.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hyperblow_core::wire::{BlockRequest, Decoded, Decoder, Message, BLOCK_FRAME_LEN};

/// 16 KiB blocks per stream (4 MiB of payload per iteration).
const PIECES: usize = 256;
/// Small messages per stream.
const SMALL: usize = 30_000;
const CHUNKS: [usize; 2] = [1460, 64 * 1024];

fn piece_stream() -> Bytes {
    let block = Bytes::from(vec![0xa5u8; 16 * 1024]);
    let mut out = BytesMut::new();
    for i in 0..PIECES {
        let m = Message::Piece {
            index: (i / 16) as u32,
            begin: ((i % 16) * 16 * 1024) as u32,
            block: block.clone(),
        };
        m.encode(&mut out).expect("16 KiB block fits");
    }
    out.freeze()
}

fn small_stream() -> Bytes {
    let mut out = BytesMut::new();
    for i in 0..SMALL as u32 {
        let r = BlockRequest {
            index: i / 16,
            begin: (i % 16) * 16 * 1024,
            length: 16 * 1024,
        };
        let m = match i % 3 {
            0 => Message::Have { piece: i },
            1 => Message::Request(r),
            _ => Message::Cancel(r),
        };
        m.encode(&mut out).expect("small message");
    }
    out.freeze()
}

/// Reads a message's fields the way a session's `match` would; returns a value depending on all of them.
#[inline(always)]
fn consume(item: Decoded) -> u64 {
    match item {
        Decoded::Message(Message::Piece {
            index,
            begin,
            block,
        }) => u64::from(index) ^ u64::from(begin) ^ block.len() as u64 ^ block.as_ptr() as u64,
        Decoded::Message(Message::Have { piece }) => u64::from(piece),
        Decoded::Message(Message::Request(r) | Message::Cancel(r)) => {
            u64::from(r.index) ^ u64::from(r.begin) << 8 ^ u64::from(r.length) << 16
        }
        Decoded::Message(other) => other.encoded_len() as u64,
        Decoded::Handshake(h) => u64::from(h.peer_id.0[0]),
    }
}

/// Feeds the whole stream in reads of up to `chunk` bytes and drains after each; returns the message and
/// read counts.
fn run(d: &mut Decoder, stream: &[u8], chunk: usize) -> (usize, usize) {
    let mut n = 0;
    let mut reads = 0;
    let mut pos = 0;
    while pos < stream.len() {
        // A socket read: at most what has arrived (`chunk`) and at most the spare capacity offered.
        let buf = d.read_buf();
        let got = chunk
            .min(buf.capacity() - buf.len())
            .min(stream.len() - pos);
        buf.extend_from_slice(&stream[pos..pos + got]);
        pos += got;
        reads += 1;
        let mut sum = 0u64;
        while let Some(item) = d.decode().expect("valid stream") {
            sum = sum.wrapping_add(consume(item));
            n += 1;
        }
        black_box(sum);
    }
    (n, reads)
}

/// Drains a decoder that already holds a whole stream; returns the message count.
fn drain(mut d: Decoder) -> usize {
    let mut n = 0;
    let mut sum = 0u64;
    while let Some(item) = d.decode().expect("valid stream") {
        sum = sum.wrapping_add(consume(item));
        n += 1;
    }
    black_box(sum);
    n
}

fn loaded(stream: &[u8], max: u32) -> Decoder {
    let mut d = Decoder::new_after_handshake(max);
    d.extend(stream);
    d
}

fn bench_pieces(c: &mut Criterion) {
    let stream = piece_stream();
    let mut g = c.benchmark_group("wire/pieces_16KiB");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    for chunk in CHUNKS {
        let mut d = Decoder::new_after_handshake(BLOCK_FRAME_LEN).with_read_chunk(chunk);
        g.bench_function(format!("read+decode/chunk_{chunk}"), |b| {
            b.iter(|| assert_eq!(run(&mut d, &stream, chunk).0, PIECES))
        });
        let mut probe = Decoder::new_after_handshake(BLOCK_FRAME_LEN).with_read_chunk(chunk);
        let reads = run(&mut probe, &stream, chunk).1;
        println!(
            "  chunk {chunk}: {reads} reads (unshortened: {}), decoder moved {} of {} stream bytes",
            stream.len().div_ceil(chunk),
            probe.bytes_moved(),
            stream.len(),
        );
    }
    g.bench_function("decode_only", |b| {
        b.iter_batched(
            || loaded(&stream, BLOCK_FRAME_LEN),
            |d| assert_eq!(drain(d), PIECES),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn bench_small(c: &mut Criterion) {
    let stream = small_stream();
    let mut g = c.benchmark_group("wire/small_have_request_cancel");
    g.throughput(Throughput::Elements(SMALL as u64));
    for chunk in CHUNKS {
        let mut d = Decoder::new_after_handshake(BLOCK_FRAME_LEN).with_read_chunk(chunk);
        g.bench_function(format!("read+decode/chunk_{chunk}"), |b| {
            b.iter(|| assert_eq!(run(&mut d, &stream, chunk).0, SMALL))
        });
    }
    g.bench_function("decode_only", |b| {
        b.iter_batched(
            || loaded(&stream, BLOCK_FRAME_LEN),
            |d| assert_eq!(drain(d), SMALL),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = bench_pieces, bench_small
}
criterion_main!(benches);
