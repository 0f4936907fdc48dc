//! Dequantisation of GGUF tensor data to f32, one ggml block format at a time.
//!
//! Layouts (per block, little-endian): Q8_0 = f16 scale d + 32 × i8,
//! x = d·q. Q4_0 = d + 16 bytes of nibbles, x = d·(q − 8). Q4_1 = d, f16
//! offset m + 16 bytes of nibbles, x = d·q + m. In the nibble formats byte j
//! holds element j in its low nibble and element j + 16 in its high nibble.
//! Arithmetic is in f32 in the order llama.cpp uses, so results match its
//! reference bit for bit (tested against `gguf-py`'s dequantize). K-quants
//! (Q4_K, Q5_K, Q6_K) are not implemented yet and are refused by name.

use half::{bf16, f16};

/// Elements and bytes of one block of ggml type `ty`, for the types handled here.
fn block(ty: u32) -> Option<(usize, usize)> {
    Some(match ty {
        0 => (1, 4),
        1 | 30 => (1, 2),
        2 => (32, 18),
        3 => (32, 20),
        8 => (32, 34),
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
            _ => unreachable!("block() lists only the types above"),
        }
    }
    Ok(())
}
