//! The GGUF container (versions 2 and 3), memory-mapped: header, metadata,
//! tensor infos and the aligned data section.
//!
//! Everything is bounds-checked while parsing, and every tensor's byte size
//! (from its ggml type and dimensions) is checked against the file length at
//! open, so a truncated or corrupt file fails at once with the file, the
//! byte offset and what was being read. Tensors are exposed as raw bytes and,
//! for the block formats `dequant.rs` handles, as f32 tensors.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::{BackboneError, Result};

/// "GGUF" read as a little-endian u32.
const MAGIC: u32 = 0x4655_4747;
/// Data alignment when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// Sanity caps: a corrupt count must not make us allocate the world.
const MAX_COUNT: u64 = 1 << 24;
const MAX_DIMS: u32 = 4;
/// The fewest bytes one tensor info can take (name length, one dimension,
/// dimension count, type, offset) and one metadata entry (key length, type,
/// a one-byte value): counts are checked against the bytes left with these
/// before anything is allocated for them.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 8 + 4 + 8;
const MIN_METADATA_BYTES: u64 = 8 + 4 + 1;

/// The fewest bytes one value of metadata type `ty` takes (a string is at
/// least its 8-byte length); `None` for an unknown type.
fn min_value_bytes(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        // An array inside an array is refused before its size matters.
        9 => 4 + 8,
        _ => return None,
    })
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// Unsigned integer (u8/u16/u32/u64 in the file).
    U64(u64),
    /// Signed integer (i8/i16/i32/i64 in the file).
    I64(i64),
    /// Float (f32/f64 in the file).
    F64(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string.
    Str(String),
    /// Array of values (tokenizer vocabularies, merges, scores, ...).
    Array(GgufArray),
}

/// A metadata array held as compactly as the file holds it: numbers at
/// their stored width, strings concatenated. A vocabulary array is most of
/// a GGUF's metadata, and one [`GgufValue`] per item (32 bytes each) made a
/// 222 MB file of u8 arrays take 4.3 GB to open.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufArray {
    /// Type 0.
    U8(Vec<u8>),
    /// Type 1.
    I8(Vec<i8>),
    /// Type 2.
    U16(Vec<u16>),
    /// Type 3.
    I16(Vec<i16>),
    /// Type 4.
    U32(Vec<u32>),
    /// Type 5.
    I32(Vec<i32>),
    /// Type 6.
    F32(Vec<f32>),
    /// Type 7.
    Bool(Vec<bool>),
    /// Type 8.
    Str(StrArray),
    /// Type 10.
    U64(Vec<u64>),
    /// Type 11.
    I64(Vec<i64>),
    /// Type 12.
    F64(Vec<f64>),
}

impl GgufArray {
    /// The number of items.
    pub fn len(&self) -> usize {
        match self {
            Self::U8(v) => v.len(),
            Self::I8(v) => v.len(),
            Self::U16(v) => v.len(),
            Self::I16(v) => v.len(),
            Self::U32(v) => v.len(),
            Self::I32(v) => v.len(),
            Self::F32(v) => v.len(),
            Self::Bool(v) => v.len(),
            Self::Str(v) => v.len(),
            Self::U64(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::F64(v) => v.len(),
        }
    }

    /// Whether the array has no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The GGUF name of the item type (`u8`, `str`, ...), for messages.
    pub fn item_type(&self) -> &'static str {
        match self {
            Self::U8(_) => "u8",
            Self::I8(_) => "i8",
            Self::U16(_) => "u16",
            Self::I16(_) => "i16",
            Self::U32(_) => "u32",
            Self::I32(_) => "i32",
            Self::F32(_) => "f32",
            Self::Bool(_) => "bool",
            Self::Str(_) => "str",
            Self::U64(_) => "u64",
            Self::I64(_) => "i64",
            Self::F64(_) => "f64",
        }
    }

    /// Item `i` as a scalar value (widened as [`GgufValue`] widens scalars).
    pub fn get(&self, i: usize) -> Option<GgufValue> {
        Some(match self {
            Self::U8(v) => GgufValue::U64(*v.get(i)? as u64),
            Self::I8(v) => GgufValue::I64(*v.get(i)? as i64),
            Self::U16(v) => GgufValue::U64(*v.get(i)? as u64),
            Self::I16(v) => GgufValue::I64(*v.get(i)? as i64),
            Self::U32(v) => GgufValue::U64(*v.get(i)? as u64),
            Self::I32(v) => GgufValue::I64(*v.get(i)? as i64),
            Self::F32(v) => GgufValue::F64(*v.get(i)? as f64),
            Self::Bool(v) => GgufValue::Bool(*v.get(i)?),
            Self::Str(v) => GgufValue::Str(v.get(i)?.to_string()),
            Self::U64(v) => GgufValue::U64(*v.get(i)?),
            Self::I64(v) => GgufValue::I64(*v.get(i)?),
            Self::F64(v) => GgufValue::F64(*v.get(i)?),
        })
    }

    /// Every item as a scalar value (strings are copied: prefer [`Self::strs`]).
    pub fn iter(&self) -> impl Iterator<Item = GgufValue> + '_ {
        (0..self.len()).map(|i| self.get(i).expect("i < len"))
    }

    /// The items of a string array, without copying; `None` for other types.
    pub fn strs(&self) -> Option<&StrArray> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The items of an integer array as i64 (u64 items above `i64::MAX`
    /// are `None`); `None` for other types.
    pub fn ints(&self) -> Option<Vec<Option<i64>>> {
        let w = |v: &[u64]| v.iter().map(|&x| i64::try_from(x).ok()).collect();
        Some(match self {
            Self::U8(v) => v.iter().map(|&x| Some(x as i64)).collect(),
            Self::I8(v) => v.iter().map(|&x| Some(x as i64)).collect(),
            Self::U16(v) => v.iter().map(|&x| Some(x as i64)).collect(),
            Self::I16(v) => v.iter().map(|&x| Some(x as i64)).collect(),
            Self::U32(v) => v.iter().map(|&x| Some(x as i64)).collect(),
            Self::I32(v) => v.iter().map(|&x| Some(x as i64)).collect(),
            Self::U64(v) => w(v),
            Self::I64(v) => v.iter().map(|&x| Some(x)).collect(),
            _ => return None,
        })
    }
}

/// Strings stored end to end in one buffer: as many bytes as the file's
/// (each item's 8-byte length becomes an 8-byte end offset).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StrArray {
    text: String,
    ends: Vec<usize>,
}

impl StrArray {
    /// The number of strings.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are no strings.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// String `i`.
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.text[start..end])
    }

    /// Every string in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.len()).map(|i| self.get(i).expect("i < len"))
    }
}

impl<'a> FromIterator<&'a str> for StrArray {
    fn from_iter<I: IntoIterator<Item = &'a str>>(items: I) -> Self {
        let mut a = Self::default();
        for s in items {
            a.text.push_str(s);
            a.ends.push(a.text.len());
        }
        a
    }
}

/// ggml tensor types this crate knows the layout of: (name, block elements, block bytes).
fn ggml_type(t: u32) -> Option<(&'static str, u64, u64)> {
    Some(match t {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        8 => ("Q8_0", 32, 34),
        12 => ("Q4_K", 256, 144),
        13 => ("Q5_K", 256, 176),
        14 => ("Q6_K", 256, 210),
        30 => ("BF16", 1, 2),
        _ => return None,
    })
}

/// One tensor's entry in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    /// Tensor name (llama.cpp naming, e.g. `blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions innermost first, as GGUF stores them (`[in, out]` for a matrix).
    pub dims: Vec<u64>,
    /// The ggml type id.
    pub ggml_type: u32,
    /// The type's name (`F32`, `Q8_0`, `Q4_K`, ...).
    pub type_name: &'static str,
    /// Byte offset from the start of the data section.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

impl GgufTensorInfo {
    /// The row-major shape `[out, in]` (dims reversed).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A GGUF file, opened and validated.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    /// GGUF version (2 or 3).
    pub version: u32,
    /// All metadata, by key.
    pub metadata: BTreeMap<String, GgufValue>,
    /// Tensor infos in file order.
    pub tensors: Vec<GgufTensorInfo>,
    data_start: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A bounds-checked little-endian reader over the mapped file.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: impl std::fmt::Display) -> BackboneError {
        BackboneError::Invalid {
            path: self.path.to_path_buf(),
            msg: format!("at byte {}: {msg}", self.pos),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.err(format!(
                "file ends while reading {what} ({n} bytes needed, {} left); truncated?",
                self.bytes.len() - self.pos
            ))),
        }
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }

    fn count(&mut self, what: &str) -> Result<u64> {
        let n = self.u64(what)?;
        if n > MAX_COUNT {
            return Err(self.err(format!("{what} {n} is implausibly large; corrupt file?")));
        }
        Ok(n)
    }

    /// A count of items each at least `min_bytes` long, refused when the
    /// rest of the file cannot hold that many (before anything is allocated).
    fn count_fitting(&mut self, what: &str, min_bytes: u64) -> Result<u64> {
        let n = self.count(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_bytes) > left {
            return Err(self.err(format!(
                "file ends while reading {what} {n} (at least {} bytes needed, {left} left); \
                 truncated or corrupt?",
                n.saturating_mul(min_bytes)
            )));
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(what)? as usize;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err(format!("{what} is not UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str) -> Result<GgufValue> {
        let b = |c: &mut Self, n| c.take(n, key).map(<[u8]>::to_vec);
        Ok(match ty {
            0 => GgufValue::U64(b(self, 1)?[0] as u64),
            1 => GgufValue::I64(b(self, 1)?[0] as i8 as i64),
            2 => GgufValue::U64(u16::from_le_bytes(b(self, 2)?.try_into().unwrap()) as u64),
            3 => GgufValue::I64(i16::from_le_bytes(b(self, 2)?.try_into().unwrap()) as i64),
            4 => GgufValue::U64(self.u32(key)? as u64),
            5 => GgufValue::I64(self.u32(key)? as i32 as i64),
            6 => GgufValue::F64(f32::from_bits(self.u32(key)?) as f64),
            7 => match b(self, 1)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                x => return Err(self.err(format!("`{key}`: bool byte {x}"))),
            },
            8 => GgufValue::Str(self.string(key)?),
            9 => {
                let inner = self.u32(key)?;
                if inner == 9 {
                    return Err(self.err(format!("`{key}`: nested arrays are not supported")));
                }
                let min = min_value_bytes(inner).ok_or_else(|| {
                    self.err(format!("`{key}`: unknown array element type {inner}"))
                })?;
                let n = self.count_fitting(&format!("the array `{key}` of length"), min)?;
                GgufValue::Array(self.array(inner, n as usize, key)?)
            }
            10 => GgufValue::U64(self.u64(key)?),
            11 => GgufValue::I64(self.u64(key)? as i64),
            12 => GgufValue::F64(f64::from_bits(self.u64(key)?)),
            other => return Err(self.err(format!("`{key}`: unknown metadata type {other}"))),
        })
    }
}

impl Cursor<'_> {
    /// `n` fixed-width items, each decoded from its `W` little-endian bytes.
    /// `n` was checked against the bytes left, so the vector is sized by the file.
    fn items<T, const W: usize>(
        &mut self,
        n: usize,
        key: &str,
        decode: impl Fn([u8; W]) -> T,
    ) -> Result<Vec<T>> {
        let bytes = self.take(n * W, key)?;
        Ok(bytes
            .chunks_exact(W)
            .map(|c| decode(c.try_into().expect("chunks of W")))
            .collect())
    }

    fn array(&mut self, ty: u32, n: usize, key: &str) -> Result<GgufArray> {
        Ok(match ty {
            0 => GgufArray::U8(self.items(n, key, |[b]| b)?),
            1 => GgufArray::I8(self.items(n, key, |[b]| b as i8)?),
            2 => GgufArray::U16(self.items(n, key, u16::from_le_bytes)?),
            3 => GgufArray::I16(self.items(n, key, i16::from_le_bytes)?),
            4 => GgufArray::U32(self.items(n, key, u32::from_le_bytes)?),
            5 => GgufArray::I32(self.items(n, key, i32::from_le_bytes)?),
            6 => GgufArray::F32(self.items(n, key, f32::from_le_bytes)?),
            7 => {
                let at = self.pos;
                let v = self.items(n, key, |[b]| b)?;
                if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| **x > 1) {
                    return Err(BackboneError::Invalid {
                        path: self.path.to_path_buf(),
                        msg: format!("at byte {}: `{key}`[{i}]: bool byte {x}", at + i),
                    });
                }
                GgufArray::Bool(v.into_iter().map(|b| b == 1).collect())
            }
            8 => GgufArray::Str(self.strings(n, key)?),
            10 => GgufArray::U64(self.items(n, key, u64::from_le_bytes)?),
            11 => GgufArray::I64(self.items(n, key, i64::from_le_bytes)?),
            12 => GgufArray::F64(self.items(n, key, f64::from_le_bytes)?),
            other => return Err(self.err(format!("`{key}`: unknown array element type {other}"))),
        })
    }

    /// `n` strings into one buffer. A first pass over the lengths sizes the
    /// buffer exactly (growing it by doubling could hold twice the text).
    fn strings(&mut self, n: usize, key: &str) -> Result<StrArray> {
        let start = self.pos;
        let mut total = 0usize;
        for _ in 0..n {
            let len = self.count(key)? as usize;
            self.take(len, key)?;
            total += len;
        }
        self.pos = start;
        let mut text = String::with_capacity(total);
        let mut ends = Vec::with_capacity(n);
        for i in 0..n {
            let len = self.count(key)? as usize;
            let b = self.take(len, key)?;
            let s = std::str::from_utf8(b)
                .map_err(|_| self.err(format!("`{key}`[{i}] is not UTF-8")))?;
            text.push_str(s);
            ends.push(text.len());
        }
        Ok(StrArray { text, ends })
    }
}

impl GgufFile {
    /// Maps and parses `path`, validating every tensor's extent.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|source| BackboneError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: read-only private map; see `SafetensorsFiles` for the contract.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| BackboneError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (version, metadata, tensors, data_start) = parse(&map, path)?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            version,
            metadata,
            tensors,
            data_start,
        })
    }

    /// The file this came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Metadata value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// The info of tensor `name`, if present.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Tensor `name` dequantised to f32, in its row-major shape.
    pub fn tensor_f32(&self, name: &str) -> Result<llm2comp_tensor::Tensor> {
        let bytes = self.tensor_bytes(name)?;
        let t = self.tensor_info(name).expect("tensor_bytes found it");
        let shape = t.shape();
        let mut out = vec![0f32; shape.iter().product()];
        crate::dequantize(t.ggml_type, bytes, &mut out).map_err(|msg| BackboneError::Invalid {
            path: self.path.clone(),
            msg: format!("tensor `{name}` ({}): {msg}", t.type_name),
        })?;
        llm2comp_tensor::Tensor::from_vec(out, &shape).map_err(|e| BackboneError::Invalid {
            path: self.path.clone(),
            msg: format!("tensor `{name}`: {e}"),
        })
    }

    /// The raw (possibly quantised) bytes of tensor `name`.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let t = self
            .tensor_info(name)
            .ok_or_else(|| BackboneError::Invalid {
                path: self.path.clone(),
                msg: format!("tensor `{name}` is missing"),
            })?;
        let start = (self.data_start + t.offset) as usize;
        Ok(&self.map[start..start + t.size as usize])
    }
}

type Parsed = (u32, BTreeMap<String, GgufValue>, Vec<GgufTensorInfo>, u64);

#[cfg(test)]
thread_local! {
    /// GGUF parses on this thread: tests check that a command parses once.
    pub(crate) static PARSES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn parse(bytes: &[u8], path: &Path) -> Result<Parsed> {
    #[cfg(test)]
    PARSES.with(|n| n.set(n.get() + 1));
    let mut c = Cursor {
        bytes,
        pos: 0,
        path,
    };
    let magic = c.u32("the magic number")?;
    if magic != MAGIC {
        return Err(BackboneError::Invalid {
            path: path.to_path_buf(),
            msg: format!("not a GGUF file (magic {magic:#010x}, expected \"GGUF\")"),
        });
    }
    let version = c.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(BackboneError::Unsupported {
            path: path.to_path_buf(),
            what: format!("GGUF version {version} (2 and 3 are supported)"),
        });
    }
    let n_tensors = c.count("the tensor count")?;
    let n_kv = c.count("the metadata count")?;
    // Both counts come before either list, so each is checked against the
    // bytes left for the two lists together.
    let min = n_tensors
        .saturating_mul(MIN_TENSOR_INFO_BYTES)
        .saturating_add(n_kv.saturating_mul(MIN_METADATA_BYTES));
    if min > (bytes.len() - c.pos) as u64 {
        return Err(c.err(format!(
            "file ends while reading {n_tensors} tensor infos and {n_kv} metadata entries (at \
             least {min} bytes needed, {} left); truncated or corrupt?",
            bytes.len() - c.pos
        )));
    }
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key_at = c.pos;
        let key = c.string("a metadata key")?;
        let ty = c.u32("a metadata type")?;
        let value = c.value(ty, &key)?;
        // A second value for a key would silently win over the first.
        if metadata.insert(key.clone(), value).is_some() {
            return Err(BackboneError::Invalid {
                path: path.to_path_buf(),
                msg: format!("at byte {key_at}: metadata key `{key}` appears twice"),
            });
        }
    }
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut names = HashSet::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let name_at = c.pos;
        let name = c.string("a tensor name")?;
        if !names.insert(name.clone()) {
            return Err(BackboneError::Invalid {
                path: path.to_path_buf(),
                msg: format!("at byte {name_at}: tensor `{name}` appears twice"),
            });
        }
        let n_dims = c.u32("a tensor's dimension count")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(c.err(format!("tensor `{name}` has {n_dims} dimensions")));
        }
        let dims = (0..n_dims)
            .map(|_| c.u64("a tensor dimension"))
            .collect::<Result<Vec<_>>>()?;
        let ty = c.u32("a tensor type")?;
        let offset = c.u64("a tensor offset")?;
        let (type_name, block, block_bytes) =
            ggml_type(ty).ok_or_else(|| BackboneError::Unsupported {
                path: path.to_path_buf(),
                what: format!("tensor `{name}` has ggml type {ty}"),
            })?;
        let elems = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| c.err(format!("tensor `{name}`: dimensions {dims:?} overflow")))?;
        if dims[0] % block != 0 {
            return Err(c.err(format!(
                "tensor `{name}`: inner dimension {} is not a multiple of {type_name}'s block of {block}",
                dims[0]
            )));
        }
        // `elems` is a multiple of `block` (checked above); the byte size
        // can still overflow for absurd dimensions, which would wrap in a
        // release build and pass the extent check below.
        let size = (elems / block).checked_mul(block_bytes).ok_or_else(|| {
            c.err(format!(
                "tensor `{name}`: {elems} {type_name} elements overflow a byte size"
            ))
        })?;
        tensors.push(GgufTensorInfo {
            name,
            dims,
            ggml_type: ty,
            type_name,
            offset,
            size,
        });
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(GgufValue::U64(a)) if *a > 0 && a.is_power_of_two() => *a,
        Some(other) => {
            return Err(BackboneError::Invalid {
                path: path.to_path_buf(),
                msg: format!("general.alignment must be a power of two, found {other:?}"),
            });
        }
    };
    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    for t in &tensors {
        let end = data_start
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.size));
        if t.offset % alignment != 0 || end.is_none_or(|e| e > bytes.len() as u64) {
            return Err(BackboneError::Invalid {
                path: path.to_path_buf(),
                msg: format!(
                    "tensor `{}` ({} {:?}, {} bytes at data offset {}) lies outside the {}-byte file \
                     or is misaligned; truncated download?",
                    t.name,
                    t.type_name,
                    t.dims,
                    t.size,
                    t.offset,
                    bytes.len()
                ),
            });
        }
    }
    check_no_overlap(&tensors, path)?;
    Ok((version, metadata, tensors, data_start))
}

/// Two tensors sharing bytes would alias each other's data: a writer bug
/// or a crafted file, never something to load.
fn check_no_overlap(tensors: &[GgufTensorInfo], path: &Path) -> Result<()> {
    let mut by_offset: Vec<&GgufTensorInfo> = tensors.iter().filter(|t| t.size > 0).collect();
    by_offset.sort_by_key(|t| t.offset);
    for w in by_offset.windows(2) {
        // Extents were checked against the file, so offset + size fits in u64.
        if w[0].offset + w[0].size > w[1].offset {
            return Err(BackboneError::Invalid {
                path: path.to_path_buf(),
                msg: format!(
                    "tensors `{}` (bytes {}..{}) and `{}` (from byte {}) overlap in the data \
                     section",
                    w[0].name,
                    w[0].offset,
                    w[0].offset + w[0].size,
                    w[1].name,
                    w[1].offset
                ),
            });
        }
    }
    Ok(())
}

/// Undoes llama.cpp's Q/K row permutation in place, so Hugging Face's
/// rotate-half RoPE applies. `w` is a row-major [n_head·head_dim, cols]
/// matrix. The converter stored each head's rows in interleaved order
/// (pairs (i, i + head_dim/2) adjacent, for GGML's interleaved RoPE): viewed
/// as [n_head, head_dim/2, 2, cols] it is the Hugging Face matrix with its two
/// middle axes swapped, so swapping them back restores it.
pub fn unpermute_qk_rows(w: &mut [f32], n_head: usize, head_dim: usize, cols: usize) {
    assert!(
        head_dim.is_multiple_of(2) && w.len() == n_head * head_dim * cols,
        "unpermute_qk_rows: {} values for {n_head} heads x {head_dim} x {cols}",
        w.len()
    );
    let half = head_dim / 2;
    let mut head = vec![0f32; head_dim * cols];
    for h in w.chunks_exact_mut(head_dim * cols) {
        head.copy_from_slice(h);
        for i in 0..half {
            for two in 0..2 {
                let src = (i * 2 + two) * cols;
                let dst = (two * half + i) * cols;
                h[dst..dst + cols].copy_from_slice(&head[src..src + cols]);
            }
        }
    }
}

#[cfg(test)]
#[path = "gguf_malformed_tests.rs"]
mod malformed_tests;
