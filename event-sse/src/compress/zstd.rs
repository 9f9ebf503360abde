//! zstd (RFC 8878) as concatenated frames.
//!
//! A zstd stream may hold several frames one after the other, and a
//! decoder returns their contents concatenated. An event's frame is
//! compressed once into a zstd frame of its own (by the pure-Rust `ruzstd`
//! encoder) and every connection writes it; a connection's own frames go
//! as frames of raw blocks, built here. A frame cannot refer into another,
//! so there is no delta form (as gzip has), and nothing to end the stream
//! with.

use bytes::{BufMut, BytesMut};

/// A zstd frame's magic number.
const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Largest block.
const BLOCK_MAX: usize = 128 * 1024;

/// Appends `data` as one frame of raw blocks (nothing for empty data).
pub(crate) fn raw(data: &[u8], out: &mut BytesMut) {
    if data.is_empty() {
        return;
    }
    out.reserve(raw_len(data));
    out.extend_from_slice(&MAGIC);
    // Single segment (the window is the content size), no checksum, no
    // dictionary; the content size in 1, 2 or 4 bytes.
    let len = data.len();
    match len {
        0..=255 => {
            out.put_u8(0b0010_0000);
            out.put_u8(len as u8);
        }
        256..=65_791 => {
            out.put_u8(0b0110_0000);
            out.extend_from_slice(&((len - 256) as u16).to_le_bytes());
        }
        _ => {
            out.put_u8(0b1010_0000);
            out.extend_from_slice(&(len as u32).to_le_bytes());
        }
    }
    let blocks = data.len().div_ceil(BLOCK_MAX);
    for (i, block) in data.chunks(BLOCK_MAX).enumerate() {
        let last = u32::from(i + 1 == blocks);
        // Last_Block, Block_Type 0 (raw), Block_Size.
        let header = last | ((block.len() as u32) << 3);
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(block);
    }
}

/// The size of `data` as a frame of raw blocks.
pub(crate) fn raw_len(data: &[u8]) -> usize {
    let fcs = match data.len() {
        0..=255 => 1,
        256..=65_791 => 2,
        _ => 4,
    };
    data.len() + 5 + fcs + 3 * data.len().div_ceil(BLOCK_MAX)
}

/// `data` as a compressed frame; `None` if that gains nothing over raw
/// blocks (usual for small events: the encoder's fastest level has little
/// to work with in a few hundred bytes).
pub(crate) fn compress(data: &[u8]) -> Option<Vec<u8>> {
    let out = ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest);
    (out.len() < raw_len(data)).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Decodes every frame of `data`, one after the other.
    fn unzstd(mut data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let mut dec = ruzstd::decoding::StreamingDecoder::new(&mut data).unwrap();
            dec.read_to_end(&mut out).unwrap();
        }
        out
    }

    #[test]
    fn raw_frames_of_every_size_class() {
        for len in [1usize, 255, 256, 65_791, 65_792, 300_000] {
            let data: Vec<u8> = (0..len).map(|i| (i % 249) as u8).collect();
            let mut out = BytesMut::new();
            raw(&data, &mut out);
            assert_eq!(out.len(), raw_len(&data), "{len}");
            assert_eq!(unzstd(&out), data, "{len}");
        }
        let mut out = BytesMut::new();
        raw(b"", &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn frames_concatenate() {
        let big: Vec<u8> = b"data: {\"type\":\"NoteUpdated\",\"tags\":[]}\n"
            .iter()
            .copied()
            .cycle()
            .take(10_000)
            .collect();
        let mut stream = BytesMut::new();
        raw(b"retry: 3000\n\n", &mut stream);
        let piece = compress(&big).unwrap();
        assert!(piece.len() < big.len() / 10);
        stream.extend_from_slice(&piece);
        raw(b": keepalive\n\n", &mut stream);
        stream.extend_from_slice(&piece);
        let want = [&b"retry: 3000\n\n"[..], &big, b": keepalive\n\n", &big].concat();
        assert_eq!(unzstd(&stream), want);
    }
}
