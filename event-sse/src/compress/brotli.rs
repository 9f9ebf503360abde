//! brotli (RFC 7932) as concatenated meta-blocks.
//!
//! A brotli stream is a window-size header, then meta-blocks, the last one
//! marked. A meta-block that starts on a byte boundary and refers to nothing
//! before it can follow any other that ends on one. The `brotli` crate makes
//! exactly such pieces ("catable" bare streams): no header, no last
//! meta-block, byte-aligned at both ends, no references to its static
//! dictionary (whose meaning depends on the position in the stream) or to
//! earlier distances, and its first two bytes stored uncompressed so that the
//! literal context of what follows is its own. An event's frame is
//! compressed so once and every connection writes the same bytes.
//!
//! A connection writes the header (with an empty metadata meta-block to
//! reach a byte boundary) once, its own frames as uncompressed meta-blocks,
//! and at the end the last, empty meta-block: no encoder state per
//! connection.

use brotli::enc::StandardAlloc;
use brotli::enc::encode::{
    BrotliEncoderOperation, BrotliEncoderParameter, BrotliEncoderStateStruct,
};
use bytes::BytesMut;

/// The window of every piece (and of the header): 2^18 = 256 KiB. A
/// piece refers at most this far back within itself; a decoder holds at
/// most this much.
const LGWIN: u32 = 18;

/// The quality of shared pieces (compressed once per event). Above 4 the
/// encoder's time grows quickly for little gain on event-sized input.
const QUALITY: u32 = 4;

/// The stream header: WBITS for a 2^18 window (`0011`), then an empty
/// metadata meta-block (ISLAST 0, MNIBBLES 11, reserved 0, MSKIPBYTES 00)
/// padded to the byte boundary.
pub(crate) const HEADER: [u8; 2] = [0x63, 0x00];

/// The last meta-block, empty (ISLAST 1, ISLASTEMPTY 1), on a byte boundary.
pub(crate) const END: [u8; 1] = [0x03];

/// Largest uncompressed meta-block written here (MLEN in four nibbles).
const UNCOMPRESSED_MAX: usize = 1 << 16;

/// Appends `data` as uncompressed meta-blocks, from a byte boundary.
pub(crate) fn uncompressed(data: &[u8], out: &mut BytesMut) {
    out.reserve(uncompressed_len(data));
    for block in data.chunks(UNCOMPRESSED_MAX) {
        // ISLAST 0, MNIBBLES 00 (four), MLEN-1 in 16 bits, ISUNCOMPRESSED 1,
        // then zero bits to the byte boundary: 24 bits.
        let bits = (((block.len() - 1) as u32) << 3) | (1 << 19);
        out.extend_from_slice(&bits.to_le_bytes()[..3]);
        out.extend_from_slice(block);
    }
}

/// The size of `data` as uncompressed meta-blocks.
pub(crate) fn uncompressed_len(data: &[u8]) -> usize {
    data.len() + 3 * data.len().div_ceil(UNCOMPRESSED_MAX)
}

fn no_callback(
    _: &mut brotli::interface::PredictionModeContextMap<brotli::InputReferenceMut<'_>>,
    _: &mut [brotli::interface::StaticCommand],
    _: brotli::InputPair<'_>,
    _: &mut StandardAlloc,
) {
}

/// A catable piece of `data`; `None` if the encoder failed or gained
/// nothing over uncompressed meta-blocks.
pub(crate) fn compress(data: &[u8]) -> Option<Vec<u8>> {
    use BrotliEncoderParameter as P;
    let mut s = BrotliEncoderStateStruct::new(StandardAlloc::default());
    let params = [
        (P::BROTLI_PARAM_QUALITY, QUALITY),
        (P::BROTLI_PARAM_LGWIN, LGWIN),
        (P::BROTLI_PARAM_CATABLE, 1),
        (P::BROTLI_PARAM_BARE_STREAM, 1),
        (P::BROTLI_PARAM_SIZE_HINT, u32::try_from(data.len()).ok()?),
    ];
    for (p, v) in params {
        if !s.set_parameter(p, v) {
            return None;
        }
    }
    let mut out = vec![0u8; data.len() + data.len() / 8 + 64];
    let (mut avail_in, mut in_at) = (data.len(), 0usize);
    let mut out_at = 0usize;
    let mut total = None;
    // Bounded: each round either finishes or doubles the room.
    for _ in 0..32 {
        let mut avail_out = out.len() - out_at;
        if !s.compress_stream(
            BrotliEncoderOperation::BROTLI_OPERATION_FINISH,
            &mut avail_in,
            data,
            &mut in_at,
            &mut avail_out,
            &mut out,
            &mut out_at,
            &mut total,
            &mut no_callback,
        ) {
            return None;
        }
        if s.is_finished() {
            out.truncate(out_at);
            return (out.len() < uncompressed_len(data)).then_some(out);
        }
        if avail_out == 0 {
            let grown = out.len() * 2;
            out.resize(grown, 0);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn unbrotli(data: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        brotli::Decompressor::new(data, 4096).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn pieces_concatenate_into_one_stream() {
        let mut stream = BytesMut::from(&HEADER[..]);
        let mut plain = Vec::new();
        uncompressed(b"retry: 3000\n\n", &mut stream);
        plain.extend_from_slice(b"retry: 3000\n\n");
        let mut compressed = 0;
        for n in 0..100u32 {
            let frame = format!(
                "id: {n}\nevent: NoteUpdated\ndata: {{\"type\":\"NoteUpdated\",\"note_id\":\"0197c0de-5e1a-7a00-8000-{n:012x}\",\"title\":\"Title title title {n}\",\"tags\":[\"a\",\"b\"],\"has_ai_content\":true,\"has_links\":false}}\n\n"
            );
            match compress(frame.as_bytes()) {
                Some(piece) => {
                    compressed += 1;
                    stream.extend_from_slice(&piece);
                }
                None => uncompressed(frame.as_bytes(), &mut stream),
            }
            plain.extend_from_slice(frame.as_bytes());
            if n % 7 == 0 {
                uncompressed(b": keepalive\n\n", &mut stream);
                plain.extend_from_slice(b": keepalive\n\n");
            }
        }
        assert!(compressed > 90, "{compressed}");
        stream.extend_from_slice(&END);
        assert_eq!(unbrotli(&stream).unwrap(), plain);
    }

    #[test]
    fn large_uncompressed_data_is_split() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let mut stream = BytesMut::from(&HEADER[..]);
        uncompressed(&data, &mut stream);
        assert_eq!(stream.len(), 2 + uncompressed_len(&data));
        stream.extend_from_slice(&END);
        assert_eq!(unbrotli(&stream).unwrap(), data);
        // A large piece round-trips too.
        let mut stream = BytesMut::from(&HEADER[..]);
        stream.extend_from_slice(&compress(&data).unwrap());
        stream.extend_from_slice(&END);
        assert_eq!(unbrotli(&stream).unwrap(), data);
    }

    #[test]
    fn an_empty_stream_is_the_header_and_the_end() {
        let stream = [&HEADER[..], &END[..]].concat();
        assert_eq!(unbrotli(&stream).unwrap(), b"");
    }
}
