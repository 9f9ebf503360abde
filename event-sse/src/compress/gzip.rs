//! gzip (RFC 1952) as concatenated raw-deflate segments.
//!
//! A gzip member is a 10-byte header, one deflate stream (RFC 1951) and a
//! trailer of the CRC-32 and length of what it holds. A deflate stream is a
//! sequence of blocks, and a block that ends on a byte boundary (a sync
//! flush, or a stored block) can be followed by any other block. So an
//! event's frame is compressed once into a *segment*: deflate blocks ending
//! with a sync flush, not final, referring to nothing before the segment
//! (a fresh compressor). Every connection writes the same segment bytes,
//! whatever came before in its stream. A second, *delta* segment is
//! compressed after the frame of the event before it on the bus: it may refer
//! back into that frame, so it is valid only right after it, which is where
//! a connection that receives every event writes it; it is usually a third
//! of the size.
//!
//! What a connection adds itself costs no compression: the header, its own
//! frames (the confirmation, `events.lagged`, keep-alives) as stored blocks,
//! and at the end an empty final block and the trailer. The trailer's CRC is
//! kept by combining each segment's cached CRC with the running one
//! ([`combine`]: one carry-less multiplication by the segment's cached
//! `x^(8·len) mod P`, whatever the segment's size).

use std::cell::RefCell;

use bytes::{BufMut, BytesMut};
use flate2::{Compress, Compression, FlushCompress};

/// The gzip header: no name, no time, no extra fields, OS unknown.
pub(crate) const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// An empty final block (fixed Huffman codes, BFINAL set), starting on a
/// byte boundary: it ends the deflate stream.
pub(crate) const FINAL_BLOCK: [u8; 2] = [0x03, 0x00];

/// The deflate level of shared segments (compressed once per event).
const LEVEL: u32 = 6;

/// How far back deflate may refer: the part of the preceding frame a delta
/// segment is compressed after.
const WINDOW: usize = 32 * 1024;

/// Largest stored block.
const STORED_MAX: usize = 65_535;

thread_local! {
    /// One compressor per thread, reset for each segment: a new one
    /// allocates and clears some 300 KiB of tables.
    static DEFLATE: RefCell<Option<Compress>> = const { RefCell::new(None) };
}

/// Appends `data` as stored blocks (not final).
pub(crate) fn stored(data: &[u8], out: &mut BytesMut) {
    out.reserve(data.len() + 5 * data.len().div_ceil(STORED_MAX));
    for block in data.chunks(STORED_MAX) {
        let len = block.len() as u16;
        out.put_u8(0);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
}

/// The size of `data` as stored blocks.
pub(crate) fn stored_len(data: &[u8]) -> usize {
    data.len() + 5 * data.len().div_ceil(STORED_MAX)
}

/// A segment of `data` that refers to nothing before it, or, with
/// `before`, one that may refer back into the `before` bytes it is written
/// right after. `None` if deflate failed or gained nothing over stored
/// blocks.
pub(crate) fn deflate(before: Option<&[u8]>, data: &[u8]) -> Option<Vec<u8>> {
    DEFLATE.with(|cell| {
        let mut cell = cell.borrow_mut();
        let c = cell.get_or_insert_with(|| Compress::new(Compression::new(LEVEL), false));
        c.reset();
        if let Some(before) = before {
            let tail = &before[before.len().saturating_sub(WINDOW)..];
            let mut discard = Vec::with_capacity(tail.len() + 64);
            run(c, tail, &mut discard)?;
        }
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        run(c, data, &mut out)?;
        (out.len() < stored_len(data)).then_some(out)
    })
}

/// Compresses all of `input` with a sync flush: the output ends on a byte
/// boundary and the stream stays open.
fn run(c: &mut Compress, input: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let start = c.total_in();
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(256));
        }
        let (before_in, before_out) = (c.total_in(), c.total_out());
        let done = usize::try_from(before_in - start).ok()?;
        c.compress_vec(&input[done..], out, FlushCompress::Sync)
            .ok()?;
        let done = usize::try_from(c.total_in() - start).ok()?;
        if done == input.len() && out.len() < out.capacity() {
            return Some(());
        }
        if c.total_in() == before_in && c.total_out() == before_out {
            // No progress with room to spare: give up rather than spin.
            return None;
        }
    }
}

/// The CRC-32 polynomial, reflected.
const POLY: u32 = 0xedb8_8320;

/// `a * b mod P` over GF(2), reflected bit order (zlib's `multmodp`).
const fn multmodp(a: u32, mut b: u32) -> u32 {
    let mut p = 0;
    let mut bit = 0;
    while bit < 32 {
        if a & (1 << (31 - bit)) != 0 {
            p ^= b;
        }
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
        bit += 1;
    }
    p
}

/// `x^(2^k) mod P` for k = 0..32.
const X2N: [u32; 32] = {
    let mut table = [0u32; 32];
    let mut p: u32 = 1 << 30; // x^1
    table[0] = p;
    let mut n = 1;
    while n < 32 {
        p = multmodp(p, p);
        table[n] = p;
        n += 1;
    }
    table
};

/// `x^(8·len) mod P`: what a CRC is multiplied by to move it past `len`
/// bytes (zlib's `x2nmodp(len, 3)`).
pub(crate) fn shift(len: u64) -> u32 {
    let mut p: u32 = 1 << 31; // x^0
    let (mut n, mut k) = (len, 3usize);
    while n != 0 {
        if n & 1 != 0 {
            p = multmodp(X2N[k & 31], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// The CRC-32 of `a ‖ b` from the CRC of `a`, the CRC of `b` and `b`'s
/// [`shift`].
pub(crate) fn combine(crc_a: u32, crc_b: u32, shift_b: u32) -> u32 {
    multmodp(shift_b, crc_a) ^ crc_b
}

/// The trailer: an empty final block, then CRC-32 and length (mod 2^32).
pub(crate) fn trailer(crc: u32, size: u32, out: &mut BytesMut) {
    out.extend_from_slice(&FINAL_BLOCK);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn crc(data: &[u8]) -> u32 {
        crc32fast::hash(data)
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn frame(n: usize) -> Vec<u8> {
        format!(
            "id: {n}\nevent: JobProgress\ndata: {{\"type\":\"JobProgress\",\"job_id\":\"0197c0de-5e1a-7a00-8000-{n:012x}\",\"progress\":{p},\"progress_percent\":{p}}}\n\n",
            p = n % 101
        )
        .into_bytes()
    }

    #[test]
    fn combine_matches_the_crc_of_the_concatenation() {
        let parts: [&[u8]; 5] = [b"", b"a", b"hello world", &[0u8; 1000], &[0xffu8; 70_000]];
        for a in parts {
            for b in parts {
                let whole = [a, b].concat();
                assert_eq!(
                    combine(crc(a), crc(b), shift(b.len() as u64)),
                    crc(&whole),
                    "{} + {}",
                    a.len(),
                    b.len()
                );
            }
        }
        // A running CRC from nothing (0) takes the first part's.
        assert_eq!(combine(0, crc(b"abc"), shift(3)), crc(b"abc"));
    }

    #[test]
    fn stored_blocks_split_at_64_kib() {
        let data: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = BytesMut::new();
        stored(&data, &mut out);
        assert_eq!(out.len(), stored_len(&data));
        assert_eq!(out.len(), data.len() + 15);
        let mut gz = BytesMut::from(&HEADER[..]);
        gz.extend_from_slice(&out[..]);
        trailer(crc(&data), data.len() as u32, &mut gz);
        assert_eq!(gunzip(&gz), data);
    }

    /// Segments, deltas and stored blocks written in any order decode to
    /// the plain bytes, with the trailer kept by combining cached CRCs.
    #[test]
    fn segments_concatenate_into_one_gzip_stream() {
        let frames: Vec<Vec<u8>> = (1..200).map(frame).collect();
        let mut gz = BytesMut::from(&HEADER[..]);
        let mut plain = Vec::new();
        let (mut running, mut size) = (0u32, 0u32);
        let mut deltas = 0;
        for (i, f) in frames.iter().enumerate() {
            // Every third frame follows a connection's own text.
            let after_text = i % 3 == 0;
            if after_text {
                let text = b": keepalive\n\n";
                stored(text, &mut gz);
                let mut h = crc32fast::Hasher::new_with_initial_len(running, size.into());
                h.update(text);
                running = h.finalize();
                size = size.wrapping_add(text.len() as u32);
                plain.extend_from_slice(text);
            }
            let piece = match (after_text, i.checked_sub(1)) {
                (false, Some(prev)) => {
                    deltas += 1;
                    deflate(Some(&frames[prev]), f).unwrap()
                }
                _ => deflate(None, f).unwrap(),
            };
            gz.extend_from_slice(&piece);
            running = combine(running, crc(f), shift(f.len() as u64));
            size = size.wrapping_add(f.len() as u32);
            plain.extend_from_slice(f);
            // Decodable up to here already: nothing held back.
            let mut partial = Vec::new();
            let mut dec = flate2::read::GzDecoder::new(&gz[..]);
            let _ = dec.read_to_end(&mut partial);
            assert_eq!(partial, plain, "frame {i}");
        }
        assert!(deltas > 100);
        trailer(running, size, &mut gz);
        assert_eq!(gunzip(&gz), plain);
    }

    #[test]
    fn a_delta_refers_back_and_is_smaller() {
        let (a, b) = (frame(1000), frame(1001));
        let alone = deflate(None, &b).unwrap();
        let delta = deflate(Some(&a), &b).unwrap();
        assert!(
            delta.len() * 2 < alone.len(),
            "{} vs {}",
            delta.len(),
            alone.len()
        );
        // Only valid right after `a`: decoded there it is `b`.
        let mut gz = BytesMut::from(&HEADER[..]);
        gz.extend_from_slice(&deflate(None, &a).unwrap());
        gz.extend_from_slice(&delta);
        let both = [a.as_slice(), b.as_slice()].concat();
        trailer(crc(&both), both.len() as u32, &mut gz);
        assert_eq!(gunzip(&gz), both);
    }

    #[test]
    fn incompressible_data_is_not_deflated() {
        let noise: Vec<u8> = (0..64u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert!(deflate(None, &noise).is_none());
    }
}
