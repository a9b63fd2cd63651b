//! The transparency log's Merkle tree, RFC 6962 (section 2.1) hashing: leaves `SHA-256(0x00 || data)`,
//! nodes `SHA-256(0x01 || left || right)`, with audit (inclusion) and consistency proofs, and their
//! verification as RFC 9162 section 2.1.3 and 2.1.4 describe it.

/// A 32-byte hash.
pub type Hash = [u8; 32];

fn sha(parts: &[&[u8]]) -> Hash {
    let mut c = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        c.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(c.finish().as_ref());
    out
}

/// The leaf hash of `data`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    sha(&[&[0], data])
}

/// The hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha(&[&[1], left, right])
}

/// Largest power of two strictly less than `n` (n >= 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// The root of the tree over `leaves` (leaf hashes). The empty tree's root is SHA-256 of nothing.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => sha(&[]),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The audit path for leaf `index` in the tree over `leaves`.
pub fn inclusion_proof(index: usize, leaves: &[Hash]) -> Vec<Hash> {
    let n = leaves.len();
    if n <= 1 || index >= n {
        return Vec::new();
    }
    let k = split(n);
    if index < k {
        let mut p = inclusion_proof(index, &leaves[..k]);
        p.push(root(&leaves[k..]));
        p
    } else {
        let mut p = inclusion_proof(index - k, &leaves[k..]);
        p.push(root(&leaves[..k]));
        p
    }
}

/// A tree built once, level by level (an odd node at the end of a level moves up unchanged, which is
/// the RFC 6962 shape), so that every inclusion proof costs O(log n): an export proves many reports
/// against one tree instead of rebuilding it for each (which cost reports x leaves).
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// Builds the tree over `leaves` (leaf hashes): n - 1 node hashes.
    pub fn new(leaves: Vec<Hash>) -> Tree {
        let mut levels = vec![leaves];
        while let Some(last) = levels.last().filter(|l| l.len() > 1) {
            let next: Vec<Hash> =
                last.chunks(2).map(|c| if c.len() == 2 { node_hash(&c[0], &c[1]) } else { c[0] }).collect();
            levels.push(next);
        }
        Tree { levels }
    }

    /// Leaves.
    pub fn size(&self) -> usize {
        self.levels[0].len()
    }

    /// The root (SHA-256 of nothing for the empty tree).
    pub fn root(&self) -> Hash {
        match self.levels.last() {
            Some(top) if top.len() == 1 => top[0],
            _ => sha(&[]),
        }
    }

    /// The audit path of leaf `index`, as [`inclusion_proof`] gives it.
    pub fn inclusion_proof(&self, index: usize) -> Vec<Hash> {
        let mut path = Vec::new();
        if index >= self.size() {
            return path;
        }
        let mut i = index;
        for level in &self.levels[..self.levels.len() - 1] {
            if let Some(sibling) = level.get(i ^ 1) {
                path.push(*sibling);
            }
            i >>= 1;
        }
        path
    }
}

/// The right edge of a growing tree: the roots of its perfect subtrees, largest first. Appending a
/// leaf and computing the root each cost O(log n), so a tree head never reads the whole log.
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    /// (height, root) of each perfect subtree, left to right.
    nodes: Vec<(u32, Hash)>,
    size: u64,
}

impl Frontier {
    /// Appends one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut node = (0u32, leaf);
        while let Some(&(h, left)) = self.nodes.last() {
            if h != node.0 {
                break;
            }
            self.nodes.pop();
            node = (h + 1, node_hash(&left, &node.1));
        }
        self.nodes.push(node);
        self.size += 1;
    }

    /// Leaves appended.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The RFC 6962 root of the leaves appended so far.
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(&(_, mut acc)) = it.next() else { return sha(&[]) };
        for (_, left) in it {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

/// Where a [`Stored`] tree finds its hashes: ranges of leaf hashes, and perfect subtrees' roots
/// computed before (the log is append-only, so a perfect subtree's root never changes).
pub trait SubtreeSource {
    /// Leaf hashes `start .. start + count` (0-based), all of them or an error.
    ///
    /// # Errors
    /// A sentence when they cannot be read.
    fn leaves(&mut self, start: u64, count: u64) -> Result<Vec<Hash>, String>;
    /// The root of the perfect subtree of `2^level` leaves starting at `index * 2^level`, if known.
    ///
    /// # Errors
    /// A sentence when the store cannot be read.
    fn known(&mut self, level: u32, index: u64) -> Result<Option<Hash>, String>;
    /// Records a root computed now.
    fn learned(&mut self, level: u32, index: u64, hash: Hash);
}

/// Subtrees of at least this many levels are remembered (each covers 256 leaves or more, so the
/// remembered roots number at most 2n / 256); smaller ones are hashed from their leaves.
pub const REMEMBERED_LEVEL: u32 = 8;

/// The RFC 6962 tree over a log of any size, computed from remembered perfect subtrees: a root or an
/// inclusion proof costs O(log n) subtree lookups once the subtrees are known, and each subtree is
/// computed once in the log's life, not once per request.
pub struct Stored<S: SubtreeSource> {
    source: S,
    memo: std::collections::HashMap<(u32, u64), Hash>,
}

impl<S: SubtreeSource> Stored<S> {
    /// A tree over `source`.
    pub fn new(source: S) -> Self {
        Stored { source, memo: std::collections::HashMap::new() }
    }

    /// The source, with what it learned.
    pub fn into_source(self) -> S {
        self.source
    }

    fn subtree(&mut self, level: u32, index: u64) -> Result<Hash, String> {
        if let Some(h) = self.memo.get(&(level, index)) {
            return Ok(*h);
        }
        let h = if level < REMEMBERED_LEVEL {
            let leaves = self.source.leaves(index << level, 1 << level)?;
            if leaves.len() != 1 << level {
                return Err(format!("the log has fewer leaves than its size says (at {})", index << level));
            }
            root(&leaves)
        } else if let Some(h) = self.source.known(level, index)? {
            h
        } else {
            let h = if level == REMEMBERED_LEVEL {
                let leaves = self.source.leaves(index << level, 1 << level)?;
                if leaves.len() != 1 << level {
                    return Err(format!("the log has fewer leaves than its size says (at {})", index << level));
                }
                Tree::new(leaves).root()
            } else {
                let (l, r) = (self.subtree(level - 1, 2 * index)?, self.subtree(level - 1, 2 * index + 1)?);
                node_hash(&l, &r)
            };
            self.source.learned(level, index, h);
            h
        };
        self.memo.insert((level, index), h);
        Ok(h)
    }

    /// The root of leaves `start .. start + len`, where `start` is a multiple of the largest power of
    /// two below `len` (as every range of the RFC's recursion is).
    fn range(&mut self, start: u64, len: u64) -> Result<Hash, String> {
        if len == 0 {
            return Ok(sha(&[]));
        }
        if len.is_power_of_two() && start.is_multiple_of(len) {
            return self.subtree(len.trailing_zeros(), start / len);
        }
        let k = split(len as usize) as u64;
        let (l, r) = (self.range(start, k)?, self.range(start + k, len - k)?);
        Ok(node_hash(&l, &r))
    }

    /// The root of the first `size` leaves.
    ///
    /// # Errors
    /// When the source cannot be read.
    pub fn root(&mut self, size: u64) -> Result<Hash, String> {
        self.range(0, size)
    }

    /// The audit path of leaf `index` in the tree of the first `size` leaves, as [`inclusion_proof`].
    ///
    /// # Errors
    /// When the source cannot be read.
    pub fn inclusion_proof(&mut self, index: u64, size: u64) -> Result<Vec<Hash>, String> {
        let mut path = Vec::new();
        if index >= size {
            return Ok(path);
        }
        let (mut start, mut len, mut m) = (0u64, size, index);
        let mut upper = Vec::new();
        while len > 1 {
            let k = split(len as usize) as u64;
            if m < k {
                upper.push((start + k, len - k));
                len = k;
            } else {
                upper.push((start, k));
                start += k;
                len -= k;
                m -= k;
            }
        }
        // The recursion's complements, innermost first.
        for (s, l) in upper.into_iter().rev() {
            path.push(self.range(s, l)?);
        }
        Ok(path)
    }
}

/// Verifies that `leaf` is at `index` in a tree of `size` leaves with `root`.
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root
}

/// The consistency proof between the first `m` leaves and all of `leaves` (RFC 6962 SUBPROOF).
pub fn consistency_proof(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    fn subproof(m: usize, leaves: &[Hash], complete: bool) -> Vec<Hash> {
        let n = leaves.len();
        if m == n {
            return if complete { Vec::new() } else { vec![root(leaves)] };
        }
        let k = split(n);
        if m <= k {
            let mut p = subproof(m, &leaves[..k], complete);
            p.push(root(&leaves[k..]));
            p
        } else {
            let mut p = subproof(m - k, &leaves[k..], false);
            p.push(root(&leaves[..k]));
            p
        }
    }
    if m == 0 || m >= leaves.len() {
        return Vec::new();
    }
    subproof(m, leaves, true)
}

/// Verifies that a tree of `size2` leaves with `root2` extends one of `size1` leaves with `root1`.
pub fn verify_consistency(size1: u64, size2: u64, proof: &[Hash], root1: &Hash, root2: &Hash) -> bool {
    if size1 == size2 {
        return proof.is_empty() && root1 == root2;
    }
    if size1 == 0 || size1 > size2 {
        return false;
    }
    let mut path: Vec<Hash> = proof.to_vec();
    if size1.is_power_of_two() {
        path.insert(0, *root1);
    }
    let Some((first, rest)) = path.split_first() else { return false };
    let (mut fnode, mut snode) = (size1 - 1, size2 - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && fr == *root1 && sr == *root2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&(i as u64).to_be_bytes())).collect()
    }

    #[test]
    fn rfc6962_empty_and_single() {
        // SHA-256 of the empty string, as RFC 6962 defines the empty tree's hash.
        assert_eq!(
            gpuattest_proto::hex(&root(&[])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // RFC 6962's leaf hash of the empty leaf.
        assert_eq!(
            gpuattest_proto::hex(&leaf_hash(&[])),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn every_inclusion_proof_verifies_and_wrong_ones_do_not() {
        for n in 1..=40 {
            let l = leaves(n);
            let r = root(&l);
            for i in 0..n {
                let p = inclusion_proof(i, &l);
                assert!(verify_inclusion(&l[i], i as u64, n as u64, &p, &r), "n={n} i={i}");
                let other = (i + 1) % n;
                if other != i {
                    assert!(!verify_inclusion(&l[other], i as u64, n as u64, &p, &r), "n={n} i={i}");
                }
                // The same path at another index does not lead to the root. (The tree size is bound by
                // the signed tree head, not by the path: a path can fit a larger tree's shape.)
                if n > 1 {
                    assert!(!verify_inclusion(&l[i], ((i + 1) % n) as u64, n as u64, &p, &r), "n={n} i={i}");
                }
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_rewrites_do_not() {
        for n in 1..=33 {
            let l = leaves(n);
            let r2 = root(&l);
            for m in 1..=n {
                let r1 = root(&l[..m]);
                let p = consistency_proof(m, &l);
                assert!(verify_consistency(m as u64, n as u64, &p, &r1, &r2), "m={m} n={n}");
                if m < n {
                    // History rewritten: the old head's leaves differ.
                    let mut forged = l.clone();
                    forged[0] = leaf_hash(b"rewritten");
                    let fr1 = root(&forged[..m]);
                    assert!(!verify_consistency(m as u64, n as u64, &p, &fr1, &r2), "m={m} n={n}");
                }
            }
        }
    }

    #[test]
    fn finding_5_the_frontier_and_the_built_tree_agree_with_the_recursive_definition() {
        for n in 0..70usize {
            let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&(i as u64).to_be_bytes())).collect();
            let tree = Tree::new(leaves.clone());
            let mut f = Frontier::default();
            for l in &leaves {
                f.push(*l);
            }
            assert_eq!(tree.root(), root(&leaves), "root, n={n}");
            assert_eq!(f.root(), root(&leaves), "frontier, n={n}");
            for i in 0..n {
                assert_eq!(tree.inclusion_proof(i), inclusion_proof(i, &leaves), "proof {i} of {n}");
            }
        }
    }

    /// A source over leaves in memory, counting what it is asked, remembering in a map.
    struct Counting {
        leaves: Vec<Hash>,
        read: u64,
        known: std::collections::HashMap<(u32, u64), Hash>,
    }

    impl SubtreeSource for Counting {
        fn leaves(&mut self, start: u64, count: u64) -> Result<Vec<Hash>, String> {
            self.read += count;
            Ok(self.leaves.iter().skip(start as usize).take(count as usize).copied().collect())
        }
        fn known(&mut self, level: u32, index: u64) -> Result<Option<Hash>, String> {
            Ok(self.known.get(&(level, index)).copied())
        }
        fn learned(&mut self, level: u32, index: u64, hash: Hash) {
            self.known.insert((level, index), hash);
        }
    }

    #[test]
    fn finding_6_stored_subtrees_give_the_same_proofs_and_each_costs_log_n_once_known() {
        for n in [0usize, 1, 2, 3, 255, 256, 257, 511, 512, 513, 1000, 4097] {
            let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&(i as u64).to_be_bytes())).collect();
            let mut t = Stored::new(Counting { leaves: leaves.clone(), read: 0, known: Default::default() });
            assert_eq!(t.root(n as u64), Ok(root(&leaves)), "root, n={n}");
            for i in (0..n).step_by(37).chain(n.checked_sub(1)) {
                assert_eq!(t.inclusion_proof(i as u64, n as u64), Ok(inclusion_proof(i, &leaves)), "{i} of {n}");
            }
        }
        // Once the subtrees are remembered, a fresh tree over the same source reads at most a few
        // leaf ranges below the remembered level per proof, never the log.
        let n = 1u64 << 16;
        let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut first = Stored::new(Counting { leaves, read: 0, known: Default::default() });
        first.root(n).expect("root");
        let mut source = first.into_source();
        assert_eq!(source.read, n, "the first pass reads the log once");
        source.read = 0;
        let mut again = Stored::new(source);
        let proof = again.inclusion_proof(12_345, n).expect("proof");
        assert_eq!(proof.len(), 16);
        assert!(again.into_source().read <= 2 * 256, "a proof reads only its own leaf block");
    }
}
