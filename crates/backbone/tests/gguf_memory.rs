//! Opening a GGUF costs about what its metadata holds, not a multiple of
//! it: arrays are kept at their stored width and strings end to end (one
//! value per item took 32 bytes per u8 and made a 222 MB file take 4.3 GB).
//! Its own test binary, as it installs a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use llm2comp_backbone::{GgufArray, GgufFile, GgufValue};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller's layout contract is passed on unchanged.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

#[test]
fn metadata_arrays_cost_what_the_file_holds() {
    const BYTES: usize = 4 << 20;
    const STRINGS: usize = 300_000;
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes()); // tensors
    b.extend(2u64.to_le_bytes()); // metadata entries
    put_str(&mut b, "big.u8");
    b.extend(9u32.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend((BYTES as u64).to_le_bytes());
    b.extend((0..BYTES).map(|i| (i % 251) as u8));
    put_str(&mut b, "big.str");
    b.extend(9u32.to_le_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend((STRINGS as u64).to_le_bytes());
    for i in 0..STRINGS {
        put_str(&mut b, &format!("t{i}"));
    }
    let path = std::env::temp_dir().join(format!("llm2comp-gguf-mem-{}.gguf", std::process::id()));
    std::fs::write(&path, &b).unwrap();
    let metadata_bytes = b.len();
    drop(b);

    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let g = GgufFile::open(&path).unwrap();
    let peak = PEAK.load(Ordering::Relaxed) - before;
    // The parsed arrays may use a little more than the file (the key
    // strings, the map's nodes), never a multiple of it.
    let bound = metadata_bytes + metadata_bytes / 8 + (1 << 20);
    assert!(
        peak <= bound,
        "opening {metadata_bytes} bytes of metadata peaked at {peak} bytes (bound {bound})"
    );

    let Some(GgufValue::Array(GgufArray::U8(v))) = g.get("big.u8") else {
        panic!(
            "big.u8 is not a u8 array: {:?}",
            g.get("big.u8").map(|_| ())
        )
    };
    assert_eq!(
        (v.len(), v[0], v[BYTES - 1]),
        (BYTES, 0, ((BYTES - 1) % 251) as u8)
    );
    let Some(GgufValue::Array(a)) = g.get("big.str") else {
        panic!("big.str is not an array")
    };
    let s = a.strs().expect("strings");
    assert_eq!(
        (s.len(), s.get(0), s.get(STRINGS - 1)),
        (STRINGS, Some("t0"), Some("t299999"))
    );
    assert_eq!(a.get(7), Some(GgufValue::Str("t7".into())));
    drop(g);
    std::fs::remove_file(&path).unwrap();
}
