use std::io::Read;

use axum::http::HeaderValue;

use super::*;

fn accept(values: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        h.append(ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn pick(offered: Compression, values: &[&str]) -> Option<Encoding> {
    offered.negotiate(&accept(values))
}

#[test]
fn negotiation_follows_q_values_then_the_server_order() {
    let all = Compression::ALL;
    // Browsers: everything at q=1, the server's order decides.
    assert_eq!(
        pick(all, &["gzip, deflate, br, zstd"]),
        Some(Encoding::Gzip)
    );
    assert_eq!(pick(all, &["zstd, br"]), Some(Encoding::Br));
    assert_eq!(pick(all, &["zstd"]), Some(Encoding::Zstd));
    assert_eq!(pick(all, &["x-gzip"]), Some(Encoding::Gzip));
    assert_eq!(pick(all, &["GZip;Q=0.5"]), Some(Encoding::Gzip));
    // The client's preference first.
    assert_eq!(pick(all, &["gzip;q=0.5, br;q=0.9"]), Some(Encoding::Br));
    assert_eq!(
        pick(all, &["gzip;q=0.5", "zstd;q=0.6"]),
        Some(Encoding::Zstd)
    );
    // `*` stands for what is not named; q=0 refuses.
    assert_eq!(pick(all, &["*"]), Some(Encoding::Gzip));
    assert_eq!(pick(all, &["gzip;q=0, *"]), Some(Encoding::Br));
    assert_eq!(pick(all, &["*;q=0.2, br;q=0"]), Some(Encoding::Gzip));
    assert_eq!(pick(all, &["gzip;q=0, br;q=0.000, zstd;q=0"]), None);
    // identity wins only when named and preferred.
    assert_eq!(pick(all, &["identity, gzip;q=0.5"]), None);
    assert_eq!(pick(all, &["identity;q=0.5, gzip"]), Some(Encoding::Gzip));
    assert_eq!(pick(all, &["identity"]), None);
    assert_eq!(pick(all, &["identity;q=0"]), None);
    // No header, an empty one, unknown codings: plain.
    assert_eq!(pick(all, &[]), None);
    assert_eq!(pick(all, &[""]), None);
    assert_eq!(pick(all, &["deflate, compress"]), None);
    // A malformed q-value drops its entry only.
    for bad in [
        "gzip;q=2",
        "gzip;q=0.1234",
        "gzip;q=x",
        "gzip;q=1.5",
        "gzip;q=-1",
    ] {
        assert_eq!(pick(all, &[bad]), None, "{bad}");
        assert_eq!(
            pick(all, &[&format!("{bad}, br")]),
            Some(Encoding::Br),
            "{bad}"
        );
    }
    // Only what the server offers.
    let gzip = Compression::parse("gzip").unwrap();
    assert_eq!(pick(gzip, &["br, zstd"]), None);
    assert_eq!(pick(gzip, &["br, gzip;q=0.1"]), Some(Encoding::Gzip));
    assert_eq!(pick(Compression::OFF, &["gzip"]), None);
}

#[test]
fn q_values() {
    assert_eq!(parse_q("1"), Some(1000));
    assert_eq!(parse_q("1.000"), Some(1000));
    assert_eq!(parse_q("0"), Some(0));
    assert_eq!(parse_q("0.5"), Some(500));
    assert_eq!(parse_q("0.05"), Some(50));
    assert_eq!(parse_q("0.001"), Some(1));
    assert_eq!(parse_q("0."), Some(0));
    assert_eq!(parse_q("1.001"), None);
    assert_eq!(parse_q(".5"), None);
    assert_eq!(parse_q(""), None);
}

#[test]
fn the_setting_parses() {
    assert_eq!(Compression::parse("on").unwrap(), Compression::ALL);
    assert_eq!(Compression::parse(" OFF ").unwrap(), Compression::OFF);
    let two = Compression::parse("zstd, gzip").unwrap();
    assert!(two.offers(Encoding::Gzip) && two.offers(Encoding::Zstd));
    assert!(!two.offers(Encoding::Br));
    assert_eq!(two.to_string(), "gzip,zstd");
    assert_eq!(Compression::ALL.to_string(), "gzip,br,zstd");
    assert_eq!(Compression::OFF.to_string(), "off");
    let err = Compression::parse("gzip,lz4").unwrap_err();
    assert!(err.contains("lz4"), "{err}");
    assert!(Compression::parse("").is_err());
}

/// A connection's sink, as the body chunk is.
#[derive(Default)]
struct Out {
    bytes: BytesMut,
    shared: usize,
}

impl Sink for Out {
    fn shared(&mut self, bytes: Bytes) {
        self.shared += 1;
        self.bytes.extend_from_slice(&bytes);
    }
    fn buf(&mut self) -> &mut BytesMut {
        &mut self.bytes
    }
}

fn decode(encoding: Encoding, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    match encoding {
        Encoding::Gzip => {
            // Decoded with a zlib-style decoder of its own, not the gzip
            // reader (whose CRC check at the end is tested separately).
            flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out)?;
        }
        Encoding::Br => {
            ::brotli::Decompressor::new(data, 4096).read_to_end(&mut out)?;
        }
        Encoding::Zstd => {
            let mut rest = data;
            while !rest.is_empty() {
                let mut dec = ruzstd::decoding::StreamingDecoder::new(&mut rest)
                    .map_err(std::io::Error::other)?;
                dec.read_to_end(&mut out)?;
            }
        }
    }
    Ok(out)
}

/// What a streaming decoder yields from an unfinished stream.
fn decode_prefix(encoding: Encoding, data: &[u8]) -> Vec<u8> {
    let mut reader: Box<dyn Read + '_> = match encoding {
        Encoding::Gzip => Box::new(flate2::read::GzDecoder::new(data)),
        Encoding::Br => Box::new(::brotli::Decompressor::new(data, 4096)),
        Encoding::Zstd => return decode(encoding, data).unwrap(),
    };
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

fn frame(seq: u64) -> Bytes {
    Bytes::from(format!(
        "id: {seq}\nevent: JobProgress\ndata: {{\"type\":\"JobProgress\",\"job_id\":\"0197c0de-5e1a-7a00-8000-{seq:012x}\",\"progress\":{p},\"progress_percent\":{p},\"message\":\"step {seq}\"}}\n\n",
        p = seq % 101
    ))
}

/// Two connections of each encoding: one that receives every event (and
/// so writes gzip's deltas), one that skips some and gets its own text in
/// between. Both decode to exactly their plain streams, and the shared
/// pieces are the ones every connection writes.
#[test]
fn streams_of_shared_pieces_decode_to_the_plain_stream() {
    for encoding in Encoding::ALL {
        note_use(encoding);
    }
    let frames: Vec<Bytes> = (1..=120).map(frame).collect();
    let packs: Vec<Bytes> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            pack(f, || {
                i.checked_sub(1).map(|p| (p as u64 + 1, frames[p].clone()))
            })
        })
        .collect();
    for encoding in Encoding::ALL {
        let mut every = (WireEncoder::new(encoding), Out::default(), Vec::new());
        let mut some = (WireEncoder::new(encoding), Out::default(), Vec::new());
        for (enc, out, plain) in [&mut every, &mut some] {
            enc.header(&mut out.bytes);
            enc.text(b"retry: 3000\n\n", &mut out.bytes);
            plain.extend_from_slice(b"retry: 3000\n\n");
        }
        let mut partial_checked = 0;
        for (i, (f, p)) in frames.iter().zip(&packs).enumerate() {
            let seq = i as u64 + 1;
            every.0.event(seq, f, Some(p), &mut every.1);
            every.2.extend_from_slice(f);
            if i % 5 == 3 {
                let text = format!("event: events.lagged\ndata: {{\"dropped_count\":{i}}}\n\n");
                some.0.text(text.as_bytes(), &mut some.1.bytes);
                some.2.extend_from_slice(text.as_bytes());
            } else if i % 7 != 0 {
                some.0.event(seq, f, Some(p), &mut some.1);
                some.2.extend_from_slice(f);
            }
            // Whatever was written so far decodes to its plain stream:
            // nothing is held back for later.
            if i % 10 == 0 {
                assert_eq!(decode_prefix(encoding, &every.1.bytes), every.2);
                partial_checked += 1;
            }
        }
        assert!(partial_checked > 5);
        // Events are written as shared pieces, never compressed again.
        assert_eq!(every.1.shared, frames.len(), "{encoding}");
        for (enc, out, plain) in [&mut every, &mut some] {
            enc.trailer(&mut out.bytes);
            assert_eq!(&decode(encoding, &out.bytes).unwrap(), plain, "{encoding}");
        }
        // A connection that gets every event gets gzip's deltas: far
        // smaller than the others.
        if encoding == Encoding::Gzip {
            let plain_len = every.2.len();
            assert!(
                every.1.bytes.len() * 2 < plain_len,
                "{} of {plain_len}",
                every.1.bytes.len()
            );
        }
    }
}

/// gzip's trailer is exactly the CRC-32 and length of the plain stream,
/// kept from the cached CRCs: the strict reader (which checks both) reads
/// it, and a wrong CRC would fail it.
#[test]
fn the_gzip_trailer_is_checked() {
    note_use(Encoding::Gzip);
    let (a, b) = (frame(1), frame(2));
    let pa = pack(&a, || None);
    let pb = pack(&b, || Some((1, a.clone())));
    let mut enc = WireEncoder::new(Encoding::Gzip);
    let mut out = Out::default();
    enc.header(&mut out.bytes);
    enc.text(&[b'x'; 600], &mut out.bytes);
    enc.event(1, &a, Some(&pa), &mut out);
    enc.event(2, &b, Some(&pb), &mut out);
    enc.text(b": keepalive\n\n", &mut out.bytes);
    enc.trailer(&mut out.bytes);
    let want = [&[b'x'; 600][..], &a, &b, b": keepalive\n\n"].concat();
    let mut got = Vec::new();
    flate2::read::GzDecoder::new(&out.bytes[..])
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(got, want);
    // Flip a bit of the CRC: the reader refuses the stream.
    let mut broken = out.bytes.to_vec();
    let at = broken.len() - 8;
    broken[at] ^= 1;
    let mut sink = Vec::new();
    assert!(
        flate2::read::GzDecoder::new(&broken[..])
            .read_to_end(&mut sink)
            .is_err()
    );
}

/// A pack rendered before an encoding came into use lacks it; the
/// connection then compresses that event itself, correctly.
#[test]
fn an_event_without_a_shared_piece_is_compressed_for_the_connection() {
    let f = frame(9);
    let empty = Bytes::from_static(&[0]);
    for encoding in Encoding::ALL {
        let mut enc = WireEncoder::new(encoding);
        let mut out = Out::default();
        enc.header(&mut out.bytes);
        enc.event(9, &f, Some(&empty), &mut out);
        enc.event(10, &f, None, &mut out);
        enc.trailer(&mut out.bytes);
        assert_eq!(out.shared, 0);
        assert_eq!(
            decode(encoding, &out.bytes).unwrap(),
            [&f[..], &f[..]].concat(),
            "{encoding}"
        );
    }
}

#[test]
fn a_delta_is_used_only_right_after_its_event() {
    note_use(Encoding::Gzip);
    let (a, b) = (frame(1), frame(2));
    let pb = pack(&b, || Some((1, a.clone())));
    let view = PackView::parse(&pb).unwrap();
    let (_, _, _, alone) = view.gzip.clone().unwrap();
    let (before, before_crc, delta) = view.delta.clone().unwrap();
    assert_eq!((before, before_crc), (1, crc32fast::hash(&a)));
    let write = |last: Option<(u64, &Bytes)>, text: bool| {
        let mut enc = WireEncoder::new(Encoding::Gzip);
        let mut out = Out::default();
        if let Some((seq, f)) = last {
            enc.event(seq, f, None, &mut out);
        }
        if text {
            enc.text(b"\n", &mut out.bytes);
        }
        let start = out.bytes.len();
        enc.event(2, &b, Some(&pb), &mut out);
        out.bytes[start..].to_vec()
    };
    assert_eq!(write(Some((1, &a)), false), &pb[delta]);
    assert_eq!(write(None, false), &pb[alone.clone()]);
    assert_eq!(write(Some((1, &a)), true), &pb[alone.clone()]);
    assert_eq!(write(Some((5, &a)), false), &pb[alone.clone()]);
    // The same event, other bytes (another instance of it that framed
    // differently): not the bytes the delta refers to.
    let other = frame(3);
    assert_eq!(write(Some((1, &other)), false), &pb[alone]);
}

/// The replay ring reserves `PACK_WEIGHT` times the frame for a pack: an
/// incompressible frame with a delta against another must fit in it.
#[test]
fn a_pack_of_incompressible_text_stays_within_its_ring_weight() {
    // A xorshift stream: bytes no compressor can shrink, with no crate.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    };
    let before = Bytes::from(noise(64 * 1024));
    let frame = noise(64 * 1024);
    let packed = pack(&frame, || Some((1, before)));
    assert!(
        packed.len() <= crate::event::PACK_WEIGHT * frame.len(),
        "a pack of {} bytes for a {}-byte frame",
        packed.len(),
        frame.len()
    );
}
