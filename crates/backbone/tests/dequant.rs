//! GGUF dequantisation against llama.cpp's reference (`gguf-py`), through
//! golden values made by `scripts/golden_gguf_dequant.py`: random block bytes
//! (scale fields replaced by finite f16s) and what `gguf.quants.dequantize`
//! returns for them. Equality is bit for bit: the arithmetic is the same f32
//! operations in the same order, so any difference is a layout bug.

use std::collections::BTreeSet;

use llm2comp_backbone::dequantize;
use serde_json::Value;

/// Every format in the fixture, with its ggml type id. The fixture must
/// hold exactly these (checked below), so a golden block cannot sit unread.
const FORMATS: [(&str, u32); 10] = [
    ("F16", 1),
    ("BF16", 30),
    ("Q8_0", 8),
    ("Q4_0", 2),
    ("Q4_1", 3),
    ("Q5_0", 6),
    ("Q5_1", 7),
    ("Q4_K", 12),
    ("Q5_K", 13),
    ("Q6_K", 14),
];

fn golden() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dequant.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Dequantises the fixture's blocks of `name` and compares every value's bits.
fn check(golden: &Value, name: &str) {
    let id = FORMATS.iter().find(|(n, _)| *n == name).unwrap().1;
    let case = &golden[name];
    let bytes = hex(case["bytes"].as_str().unwrap());
    let want: Vec<f32> = case["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert!(!want.is_empty(), "{name}: no golden values");
    let mut got = vec![f32::NAN; want.len()];
    dequantize(id, &bytes, &mut got).unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(g.to_bits() == w.to_bits(), "{name}[{i}]: {g} vs {w}");
    }
}

#[test]
fn scalar_formats_match_llama_cpp_bit_for_bit() {
    let g = golden();
    for name in ["F16", "BF16"] {
        check(&g, name);
    }
}

#[test]
fn block_formats_match_llama_cpp_bit_for_bit() {
    let g = golden();
    for name in ["Q8_0", "Q4_0", "Q4_1"] {
        check(&g, name);
    }
}

/// Q5_0 and Q5_1: what Q4_K_M files use for rows that are not a multiple
/// of 256 elements (the K-quants' super-block).
#[test]
fn five_bit_block_formats_match_llama_cpp_bit_for_bit() {
    let g = golden();
    for name in ["Q5_0", "Q5_1"] {
        check(&g, name);
    }
}

/// Four 256-element super-blocks each: random bytes reach every packed
/// 6-bit scale/min (sub-blocks 4-7 borrow the top bits of bytes 0-7), every
/// fifth bit of Q5_K and every 2-bit high part and signed scale of Q6_K.
#[test]
fn k_quant_formats_match_llama_cpp_bit_for_bit() {
    let g = golden();
    for name in ["Q4_K", "Q5_K", "Q6_K"] {
        check(&g, name);
    }
}

#[test]
fn every_golden_format_is_checked() {
    let in_fixture: BTreeSet<String> = golden().as_object().unwrap().keys().cloned().collect();
    let tested: BTreeSet<String> = FORMATS.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(in_fixture, tested);
}

#[test]
fn sizes_and_unknown_types_are_refused() {
    let mut out = vec![0f32; 32];
    assert!(
        dequantize(8, &[0u8; 33], &mut out)
            .unwrap_err()
            .contains("do not hold 32")
    );
    // One byte short of a Q5_1 block.
    assert!(
        dequantize(7, &[0u8; 23], &mut out)
            .unwrap_err()
            .contains("do not hold 32")
    );
    // Q2_K (type 10) is not handled: refused by name, not misread.
    assert!(
        dequantize(10, &[0u8; 84], &mut [0f32; 256])
            .unwrap_err()
            .contains("type 10")
    );
}
