//! GGUF dequantisation against llama.cpp's reference (`gguf-py`), through
//! golden values made by `scripts/golden_gguf_dequant.py`.

use llm2comp_backbone::dequantize;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn block_formats_match_llama_cpp_bit_for_bit() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dequant.json");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ids = [
        ("F16", 1),
        ("BF16", 30),
        ("Q8_0", 8),
        ("Q4_0", 2),
        ("Q4_1", 3),
    ];
    for (name, id) in ids {
        let case = &golden[name];
        let bytes = hex(case["bytes"].as_str().unwrap());
        let want: Vec<f32> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let mut got = vec![f32::NAN; want.len()];
        dequantize(id, &bytes, &mut got).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(g.to_bits() == w.to_bits(), "{name}[{i}]: {g} vs {w}");
        }
    }
}

#[test]
fn sizes_and_unknown_types_are_refused() {
    let mut out = vec![0f32; 32];
    assert!(
        dequantize(8, &[0u8; 33], &mut out)
            .unwrap_err()
            .contains("do not hold 32")
    );
    assert!(
        dequantize(6, &[0u8; 22], &mut [0f32; 32])
            .unwrap_err()
            .contains("type 6")
    );
}
