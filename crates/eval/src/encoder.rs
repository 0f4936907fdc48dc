//! What turns texts into vectors, and a cache in front of it.
//!
//! Tasks share texts (Banking77's test texts are both classified and
//! clustered), and an LLM forward pass is the whole cost of an evaluation,
//! so the cache is keyed by the text itself and each distinct text reaches
//! the model once per suite, in one batched call per task.

use std::collections::HashMap;

use crate::{EvalError, Result};

/// Something that embeds texts: one row per text, in order.
pub trait Encoder {
    /// Embeds `texts`.
    fn encode(&mut self, texts: &[String]) -> Result<Vec<Vec<f32>>>;
}

/// An [`Encoder`] that remembers every text's embedding.
#[derive(Debug)]
pub struct CachedEncoder<E> {
    inner: E,
    cache: HashMap<String, Vec<f32>>,
    /// Texts sent to the inner encoder so far.
    pub encoded: usize,
}

impl<E: Encoder> CachedEncoder<E> {
    /// A cache in front of `inner`.
    pub fn new(inner: E) -> Self {
        Self {
            inner,
            cache: HashMap::new(),
            encoded: 0,
        }
    }

    /// The wrapped encoder, mutably.
    pub fn inner_mut(&mut self) -> &mut E {
        &mut self.inner
    }

    /// The wrapped encoder.
    pub fn into_inner(self) -> E {
        self.inner
    }
}

impl<E: Encoder> Encoder for CachedEncoder<E> {
    fn encode(&mut self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let mut missing: Vec<String> = Vec::new();
        let mut queued = std::collections::HashSet::new();
        for t in texts {
            if !self.cache.contains_key(t) && queued.insert(t.as_str()) {
                missing.push(t.clone());
            }
        }
        if !missing.is_empty() {
            let rows = self.inner.encode(&missing)?;
            if rows.len() != missing.len() {
                return Err(EvalError::shape(
                    "encoder",
                    format!("{} rows", missing.len()),
                    rows.len(),
                ));
            }
            self.encoded += missing.len();
            self.cache.extend(missing.into_iter().zip(rows));
        }
        Ok(texts.iter().map(|t| self.cache[t].clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Embeds a text as [len, first byte] and logs each call.
    struct Logging(Vec<Vec<String>>);

    impl Encoder for Logging {
        fn encode(&mut self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
            self.0.push(texts.to_vec());
            Ok(texts
                .iter()
                .map(|t| vec![t.len() as f32, t.as_bytes()[0] as f32])
                .collect())
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn each_text_is_encoded_once() {
        let mut c = CachedEncoder::new(Logging(Vec::new()));
        let a = c.encode(&s(&["ab", "c", "ab"])).unwrap();
        assert_eq!(a, vec![vec![2.0, 97.0], vec![1.0, 99.0], vec![2.0, 97.0]]);
        let b = c.encode(&s(&["c", "xyz"])).unwrap();
        assert_eq!(b, vec![vec![1.0, 99.0], vec![3.0, 120.0]]);
        c.encode(&s(&["xyz"])).unwrap();
        assert_eq!(c.encoded, 3);
        assert_eq!(c.into_inner().0, vec![s(&["ab", "c"]), s(&["xyz"])]);
    }
}
