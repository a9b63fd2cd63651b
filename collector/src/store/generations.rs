//! A map bounded by generations, for state kept in memory between reports (the store's running state
//! and known jobs, the committing thread's parsed evidence, ingest's current keys): entries go into the young
//! generation; when it reaches its cap it becomes the old one (the previous old one is dropped) and a new
//! young one starts. Taking an entry looks in both. So an entry used within the last generation is never
//! dropped, and the map holds at most twice its cap. A map emptied whole when full, as before, made every
//! commit after it read all its entries back from the database at once: a latency cliff that a fleet
//! with more active jobs than the cap hit every few seconds.

use std::collections::HashMap;

/// See the module docs.
pub(crate) struct Generations<V> {
    young: HashMap<String, V>,
    old: HashMap<String, V>,
    cap: usize,
}

impl<V> Generations<V> {
    /// An empty map whose young generation holds up to `cap` entries.
    pub(crate) fn new(cap: usize) -> Generations<V> {
        Generations { young: HashMap::new(), old: HashMap::new(), cap: cap.max(1) }
    }

    /// Removes and returns `key`'s entry, from either generation.
    pub(crate) fn take(&mut self, key: &str) -> Option<V> {
        self.young.remove(key).or_else(|| self.old.remove(key))
    }

    /// `key`'s entry, from either generation, left where it is (an entry only read ages out; put it
    /// back to keep it young).
    pub(crate) fn get(&self, key: &str) -> Option<&V> {
        self.young.get(key).or_else(|| self.old.get(key))
    }

    /// Whether `key` has an entry.
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.young.contains_key(key) || self.old.contains_key(key)
    }

    /// Puts `key`'s entry in the young generation (replacing any in either), first ageing the young
    /// generation if it is full.
    pub(crate) fn put(&mut self, key: String, value: V) {
        self.old.remove(&key);
        if self.young.len() >= self.cap && !self.young.contains_key(&key) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, value);
    }

    /// Drops every entry.
    pub(crate) fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
    }

    /// Entries in both generations.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::Generations;

    #[test]
    fn entries_used_in_the_last_generation_survive_and_the_size_stays_bounded() {
        let mut g = Generations::new(4);
        for i in 0..4 {
            g.put(format!("k{i}"), i);
        }
        // Full: the fifth entry ages the first four instead of dropping them.
        g.put("k4".into(), 4);
        assert_eq!(g.len(), 5);
        assert!((0..5).all(|i| g.contains(&format!("k{i}"))));
        // k0 is used (taken and put back): it joins the young generation.
        let v = g.take("k0").expect("k0 in the old generation");
        g.put("k0".into(), v);
        for i in 5..7 {
            g.put(format!("k{i}"), i);
        }
        // The young generation (k4, k0, k5, k6) is full; the next entry drops k1-k3, unused since.
        g.put("k7".into(), 7);
        assert!(g.contains("k0") && g.contains("k4") && g.contains("k7"));
        assert!(!g.contains("k1") && !g.contains("k2") && !g.contains("k3"));
        assert_eq!(g.take("k0"), Some(0));
        assert_eq!(g.take("k0"), None, "taken once");
        for i in 0..1000 {
            g.put(format!("n{i}"), i);
            assert!(g.len() <= 8, "at most twice the cap: {}", g.len());
        }
    }

    #[test]
    fn an_entry_put_again_replaces_the_one_in_the_old_generation() {
        let mut g = Generations::new(2);
        g.put("a".into(), 1);
        g.put("b".into(), 2);
        g.put("c".into(), 3); // a and b are old now
        g.put("a".into(), 10);
        assert_eq!(g.len(), 3);
        assert_eq!(g.take("a"), Some(10));
        assert_eq!(g.take("a"), None);
        g.clear();
        assert_eq!(g.len(), 0);
        assert!(!g.contains("b"));
    }
}
