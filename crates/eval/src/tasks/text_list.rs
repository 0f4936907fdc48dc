//! A task's distinct texts, each with an index. Texts are stored once (STS
//! sentences recur across pairs) and line breaks become spaces, so that the
//! list can be written one text a line and read back unchanged by another
//! program that embeds it.

use std::collections::HashMap;

/// Distinct texts in order of first appearance.
#[derive(Debug, Default, Clone)]
pub struct TextList {
    texts: Vec<String>,
    index: HashMap<String, usize>,
}

impl TextList {
    /// The index of `text` (added if new), line breaks replaced by spaces.
    pub fn id(&mut self, text: &str) -> usize {
        let t = text.replace(['\n', '\r'], " ");
        if let Some(&i) = self.index.get(&t) {
            return i;
        }
        self.texts.push(t.clone());
        self.index.insert(t, self.texts.len() - 1);
        self.texts.len() - 1
    }

    /// The texts.
    pub fn texts(&self) -> &[String] {
        &self.texts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedups_and_flattens_line_breaks() {
        let mut l = TextList::default();
        assert_eq!(l.id("a b"), 0);
        assert_eq!(l.id("c"), 1);
        assert_eq!(l.id("a\nb"), 0);
        assert_eq!(l.id("d\r\n"), 2);
        assert_eq!(l.texts(), ["a b", "c", "d  "]);
    }
}
