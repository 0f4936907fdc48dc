//! Dequantisation of GGUF tensor data to f32, one ggml block format at a time.
//!
//! Layouts (per block, little-endian): Q8_0 = f16 scale d + 32 × i8,
//! x = d·q. Q4_0 = d + 16 bytes of nibbles, x = d·(q − 8). Q4_1 = d, f16
//! offset m + 16 bytes of nibbles, x = d·q + m. In the nibble formats byte j
//! holds element j in its low nibble and element j + 16 in its high nibble.
//! Q5_0 = d, a u32 of fifth bits qh, 16 bytes of nibbles, x = d·(q − 16);
//! Q5_1 = d, m, qh, nibbles, x = d·q + m; bit j of qh tops element j (the
//! low nibble of byte j) and bit j + 16 tops element j + 16 (its high nibble).
//!
//! K-quants work on 256-element super-blocks of 8 (Q4_K, Q5_K) or 16 (Q6_K)
//! sub-blocks, each with its own scale: Q4_K = d, dmin (f16), 12 bytes of
//! packed 6-bit sub-block scales and mins, 128 bytes of nibbles,
//! x = d·sc·q − dmin·m. Q5_K adds 32 bytes holding each element's fifth bit.
//! Q6_K = 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16 i8
//! scales, then d; x = d·sc·(q − 32).
//! Arithmetic is in f32 in the order llama.cpp uses, so results match its
//! reference bit for bit (tested against `gguf-py`'s dequantize).

use half::{bf16, f16};

/// Elements and bytes of one block of ggml type `ty`, for the types handled here.
fn block(ty: u32) -> Option<(usize, usize)> {
    Some(match ty {
        0 => (1, 4),
        1 | 30 => (1, 2),
        2 => (32, 18),
        3 => (32, 20),
        6 => (32, 22),
        7 => (32, 24),
        8 => (32, 34),
        12 => (256, 144),
        13 => (256, 176),
        14 => (256, 210),
        _ => return None,
    })
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Writes the f32 values of `bytes` (ggml type `ty`) into `out`; errors with
/// a reason if the type is not handled or the sizes disagree.
pub fn dequantize(ty: u32, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    let (be, bb) =
        block(ty).ok_or_else(|| format!("dequantising ggml type {ty} is not implemented"))?;
    if !out.len().is_multiple_of(be) || bytes.len() != out.len() / be * bb {
        return Err(format!(
            "{} bytes of ggml type {ty} do not hold {} values",
            bytes.len(),
            out.len()
        ));
    }
    for (b, y) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(be)) {
        match ty {
            0 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            1 => y[0] = f16_at(b, 0),
            30 => y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            8 => {
                let d = f16_at(b, 0);
                for (y, &q) in y.iter_mut().zip(&b[2..34]) {
                    *y = d * (q as i8) as f32;
                }
            }
            2 => {
                let d = f16_at(b, 0);
                for (j, &q) in b[2..18].iter().enumerate() {
                    y[j] = d * ((q & 0x0f) as i32 - 8) as f32;
                    y[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
                }
            }
            3 => {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                for (j, &q) in b[4..20].iter().enumerate() {
                    y[j] = d * (q & 0x0f) as f32 + m;
                    y[j + 16] = d * (q >> 4) as f32 + m;
                }
            }
            6 => {
                let d = f16_at(b, 0);
                for (j, q) in q5_values(&b[2..6], &b[6..22]).into_iter().enumerate() {
                    y[j] = d * (q as i32 - 16) as f32;
                }
            }
            7 => {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                for (j, q) in q5_values(&b[4..8], &b[8..24]).into_iter().enumerate() {
                    y[j] = d * q as f32 + m;
                }
            }
            12 => q4_k(b, y),
            13 => q5_k(b, y),
            14 => q6_k(b, y),
            _ => unreachable!("block() lists only the types above"),
        }
    }
    Ok(())
}

/// The 32 unsigned 5-bit values of a Q5_0 / Q5_1 block: the nibbles of
/// `qs` (low nibbles are elements 0-15, high nibbles 16-31) topped by bit j
/// of the little-endian u32 `qh` for element j.
fn q5_values(qh: &[u8], qs: &[u8]) -> [u8; 32] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut q = [0u8; 32];
    for (j, &b) in qs.iter().enumerate() {
        q[j] = (b & 0x0f) | (((qh >> j) & 1) << 4) as u8;
        q[j + 16] = (b >> 4) | (((qh >> (j + 16)) & 1) << 4) as u8;
    }
    q
}

/// Scale and min of sub-block `j` from the 12 packed bytes of Q4_K / Q5_K:
/// sub-blocks 0-3 keep 6 bits in bytes j and j + 4; 4-7 put their low 4 bits
/// in byte j + 4 and their top 2 bits in the spare bits of bytes j − 4 and j.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        let sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (sc as f32, m as f32)
    }
}

fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for (c, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc, m) = scale_min_k4(2 * c, scales);
        let (d1, m1) = (d * sc, dmin * m);
        let (sc, m) = scale_min_k4(2 * c + 1, scales);
        let (d2, m2) = (d * sc, dmin * m);
        for l in 0..32 {
            y[l] = d1 * (q[l] & 0x0f) as f32 - m1;
            y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for (c, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc, m) = scale_min_k4(2 * c, scales);
        let (d1, m1) = (d * sc, dmin * m);
        let (sc, m) = scale_min_k4(2 * c + 1, scales);
        let (d2, m2) = (d * sc, dmin * m);
        let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
        for l in 0..32 {
            let hi1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let hi2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[l] = d1 * ((q[l] & 0x0f) + hi1) as f32 - m1;
            y[l + 32] = d2 * ((q[l] >> 4) + hi2) as f32 - m2;
        }
    }
}

fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    for h in 0..2 {
        let (ql, qh, sc, y) = (
            &ql[64 * h..],
            &qh[32 * h..],
            &sc[8 * h..],
            &mut y[128 * h..128 * (h + 1)],
        );
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| d * (sc[is + k] as i8) as f32;
            y[l] = s(0) * q1 as f32;
            y[l + 32] = s(2) * q2 as f32;
            y[l + 64] = s(4) * q3 as f32;
            y[l + 96] = s(6) * q4 as f32;
        }
    }
}
