//! Malformed GGUF headers built in memory: each must end in an error naming
//! the problem, never a panic, a wrapped size or an allocation sized by the
//! header.

use std::path::Path;

use super::parse;

/// Little-endian GGUF bytes, written field by field.
#[derive(Default)]
struct Bytes(Vec<u8>);

impl Bytes {
    fn u32(mut self, x: u32) -> Self {
        self.0.extend(x.to_le_bytes());
        self
    }
    fn u64(mut self, x: u64) -> Self {
        self.0.extend(x.to_le_bytes());
        self
    }
    fn str(self, s: &str) -> Self {
        let mut b = self.u64(s.len() as u64);
        b.0.extend(s.as_bytes());
        b
    }
    /// Magic, version 3, the two counts.
    fn header(n_tensors: u64, n_kv: u64) -> Self {
        Bytes(b"GGUF".to_vec()).u32(3).u64(n_tensors).u64(n_kv)
    }
    /// A u32 metadata entry.
    fn kv_u32(self, key: &str, v: u32) -> Self {
        self.str(key).u32(4).u32(v)
    }
    /// A tensor info: name, dims (innermost first), ggml type, offset.
    fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        let mut b = self.str(name).u32(dims.len() as u32);
        for &d in dims {
            b = b.u64(d);
        }
        b.u32(ty).u64(offset)
    }
    /// Zero padding to 32 bytes, then `n` data bytes.
    fn data(mut self, n: usize) -> Self {
        while !self.0.len().is_multiple_of(32) {
            self.0.push(0);
        }
        self.0.extend(std::iter::repeat_n(0u8, n));
        self
    }
}

fn error(b: Bytes) -> String {
    match parse(&b.0, Path::new("bad.gguf")) {
        Ok(_) => panic!("malformed bytes were accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_well_formed_file_parses() {
    let b = Bytes::header(2, 1)
        .kv_u32("general.alignment", 32)
        .tensor("a", &[4], 0, 0)
        .tensor("b", &[4], 0, 32)
        .data(48);
    let (_, meta, tensors, _) = parse(&b.0, Path::new("ok.gguf")).unwrap();
    assert_eq!((meta.len(), tensors.len()), (1, 2));
}

#[test]
fn a_byte_size_that_overflows_is_refused_not_wrapped() {
    // 2^63 F32 elements fit a u64, their 2^65 bytes do not: the product
    // wrapped to 0 in release builds, passed the extent check, and the
    // dequantising allocation of 2^63 floats then panicked.
    let e = error(
        Bytes::header(1, 0)
            .tensor("t", &[1 << 32, 1 << 31], 0, 0)
            .data(64),
    );
    assert!(e.contains("bad.gguf") && e.contains("overflow"), "{e}");
}

#[test]
fn counts_larger_than_the_file_are_refused_before_allocating() {
    let e = error(Bytes::header(1 << 24, 0).data(0));
    assert!(
        e.contains("16777216 tensor infos") && e.contains("bytes needed"),
        "{e}"
    );
    let e = error(Bytes::header(0, 1 << 20).data(0));
    assert!(e.contains("1048576 metadata entries"), "{e}");
    // An array of 2^24 u64 claimed in a few hundred bytes.
    let arr = Bytes::header(0, 1)
        .str("tokenizer.ggml.scores")
        .u32(9)
        .u32(10)
        .u64(1 << 24)
        .data(256);
    let e = error(arr);
    assert!(
        e.contains("the array `tokenizer.ggml.scores` of length 16777216"),
        "{e}"
    );
    // A string length past the end of the file.
    let e = error(Bytes::header(0, 1).str("k").u32(8).u64(1 << 20).data(0));
    assert!(e.contains("file ends while reading"), "{e}");
}

#[test]
fn duplicated_metadata_keys_and_tensor_names_are_refused() {
    let e = error(
        Bytes::header(0, 2)
            .kv_u32("llama.block_count", 2)
            .kv_u32("llama.block_count", 30)
            .data(0),
    );
    assert!(
        e.contains("metadata key `llama.block_count` appears twice"),
        "{e}"
    );
    let e = error(
        Bytes::header(2, 0)
            .tensor("w", &[4], 0, 0)
            .tensor("w", &[4], 0, 32)
            .data(48),
    );
    assert!(e.contains("tensor `w` appears twice"), "{e}");
}

#[test]
fn overlapping_tensor_extents_are_refused() {
    // `b` starts inside `a` (a: 64 bytes at 0, b at 32).
    let e = error(
        Bytes::header(2, 0)
            .tensor("a", &[16], 0, 0)
            .tensor("b", &[4], 0, 32)
            .data(64),
    );
    assert!(
        e.contains("`a`") && e.contains("`b`") && e.contains("overlap"),
        "{e}"
    );
}

#[test]
fn an_unknown_array_element_type_is_refused() {
    let e = error(Bytes::header(0, 1).str("k").u32(9).u32(99).u64(0).data(0));
    assert!(e.contains("unknown array element type 99"), "{e}");
}
