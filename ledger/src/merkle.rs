//! The log's Merkle tree (RFC 6962 / RFC 9162 shape, blake3 hashes).
//!
//! ```text
//!   leaf  = blake3(0x00 || slot object bytes)          one leaf per slot, in slot order
//!   node  = blake3(0x01 || left || right)
//!   root of n leaves: split at k = the largest power of two < n, root = node(root[0..k], root[k..n])
//!   empty tree: blake3("")
//!
//!            root(5)
//!           /       \
//!       node         leaf4          a tree of 5 slots: the left part is the perfect
//!      /    \                       tree over slots 0..4, the right part what remains
//!   node    node
//!   /  \    /  \
//!  l0  l1  l2  l3
//! ```
//!
//! The 0x00 / 0x01 prefixes keep a leaf from ever being read as a node (second-preimage attacks).
//! A slot object over `MAX_SLOT_BYTES` is never downloaded; its leaf is
//! `blake3(0x00 || "cairn-oversized-slot" || size:u64)`, so replacing a real slot with a huge
//! object still changes the root. Proofs follow RFC 6962 §2.1.1 (audit paths) and §2.1.2
//! (consistency); verification follows RFC 9162 §2.1.3.2 and §2.1.4.2.

use std::fmt;

/// A node or leaf hash of the log's Merkle tree.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({self})")
    }
}

const OVERSIZED_MARKER: &[u8] = b"cairn-oversized-slot";

/// The leaf hash of a slot object.
pub fn leaf_hash(slot_bytes: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[0x00]);
    h.update(slot_bytes);
    Hash(*h.finalize().as_bytes())
}

/// The leaf hash of a slot object too large to download.
pub fn oversized_leaf_hash(size: u64) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[0x00]);
    h.update(OVERSIZED_MARKER);
    h.update(&size.to_be_bytes());
    Hash(*h.finalize().as_bytes())
}

/// The hash of an inner node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[0x01]);
    h.update(&left.0);
    h.update(&right.0);
    Hash(*h.finalize().as_bytes())
}

/// The root of the empty tree.
pub fn empty_root() -> Hash {
    Hash(*blake3::hash(b"").as_bytes())
}

/// The largest power of two strictly below `n` (n >= 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// The root over these leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => empty_root(),
        [one] => *one,
        _ => {
            let k = split(leaves.len());
            let (l, r) = leaves.split_at(k);
            node_hash(&root(l), &root(r))
        }
    }
}

/// The audit path of leaf `index` in the tree over `leaves` (empty when out of range).
pub fn inclusion_proof(index: usize, leaves: &[Hash]) -> Vec<Hash> {
    let mut path = Vec::new();
    if index < leaves.len() {
        inclusion_path(index, leaves, &mut path);
    }
    path
}

fn inclusion_path(m: usize, leaves: &[Hash], out: &mut Vec<Hash>) {
    if leaves.len() <= 1 {
        return;
    }
    let k = split(leaves.len());
    let (l, r) = leaves.split_at(k);
    if m < k {
        inclusion_path(m, l, out);
        out.push(root(r));
    } else {
        inclusion_path(m - k, r, out);
        out.push(root(l));
    }
}

/// The proof that the tree over the first `old_size` leaves is a prefix of the tree over `leaves`
/// (empty when `old_size` is 0, equal to, or above the number of leaves).
pub fn consistency_proof(old_size: usize, leaves: &[Hash]) -> Vec<Hash> {
    let mut out = Vec::new();
    if old_size > 0 && old_size < leaves.len() {
        subproof(old_size, leaves, true, &mut out);
    }
    out
}

fn subproof(m: usize, leaves: &[Hash], whole: bool, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !whole {
            out.push(root(leaves));
        }
        return;
    }
    let k = split(n);
    let (l, r) = leaves.split_at(k);
    if m <= k {
        subproof(m, l, whole, out);
        out.push(root(r));
    } else {
        subproof(m - k, r, false, out);
        out.push(root(l));
    }
}

/// Whether `proof` shows that `leaf` is leaf `index` of the tree of `size` leaves with `root`.
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// Whether `proof` shows that the tree of `old_size` leaves with `old_root` is a prefix of the
/// tree of `new_size` leaves with `new_root`.
pub fn verify_consistency(old_size: u64, old_root: &Hash, new_size: u64, new_root: &Hash, proof: &[Hash]) -> bool {
    if old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    if old_size == 0 {
        // Everything extends the empty tree.
        return proof.is_empty() && *old_root == empty_root();
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f, mut s) = (old_size - 1, new_size - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    fr == *old_root && sr == *new_root && s == 0
}

/// The roots of every complete, aligned subtree over a growing list of leaves: level `k` holds the
/// roots of leaves `i*2^k .. (i+1)*2^k`. Every node of the tree over a prefix of the leaves is
/// one of these or a fold of O(log n) of them, so roots and proofs cost O(log² n) hashes instead
/// of the O(n) of [`root`] and [`inclusion_proof`] over the bare leaves (same results).
#[derive(Debug, Clone, Default)]
pub struct Subtrees {
    levels: Vec<Vec<Hash>>,
}

impl Subtrees {
    /// The leaves pushed so far, in order.
    pub fn leaves(&self) -> &[Hash] {
        self.levels.first().map_or(&[], Vec::as_slice)
    }

    /// Appends a leaf (amortised O(1) hashes).
    pub fn push(&mut self, leaf: Hash) {
        let mut hash = leaf;
        let mut k = 0;
        loop {
            if self.levels.len() == k {
                self.levels.push(Vec::new());
            }
            let level = &mut self.levels[k];
            level.push(hash);
            let n = level.len();
            if n % 2 == 1 {
                return;
            }
            hash = node_hash(&level[n - 2], &level[n - 1]);
            k += 1;
        }
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.levels.first().map_or(0, Vec::len)
    }

    /// Whether there is no leaf.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The node over leaves `start .. start + len`, a node of the tree over a prefix (so `start` is
    /// a multiple of every power of two up to `len`, and the range is within the leaves).
    fn node(&self, start: usize, len: usize) -> Hash {
        if len == 0 {
            return empty_root();
        }
        if len.is_power_of_two() && start.is_multiple_of(len) {
            let level = len.trailing_zeros() as usize;
            if let Some(h) = self.levels.get(level).and_then(|l| l.get(start / len)) {
                return *h;
            }
        }
        if len == 1 {
            // Unreachable for a range within the leaves; a neutral answer rather than a panic.
            return empty_root();
        }
        let k = split(len);
        node_hash(&self.node(start, k), &self.node(start + k, len - k))
    }

    /// The root over the first `size` leaves.
    pub fn root(&self, size: usize) -> Option<Hash> {
        (size <= self.len()).then(|| self.node(0, size))
    }

    /// Like [`inclusion_proof`] over the first `size` leaves.
    pub fn inclusion_proof(&self, index: usize, size: usize) -> Option<Vec<Hash>> {
        if index >= size || size > self.len() {
            return None;
        }
        let mut out = Vec::new();
        self.path(index, 0, size, &mut out);
        Some(out)
    }

    fn path(&self, m: usize, start: usize, len: usize, out: &mut Vec<Hash>) {
        if len <= 1 {
            return;
        }
        let k = split(len);
        if m < k {
            self.path(m, start, k, out);
            out.push(self.node(start + k, len - k));
        } else {
            self.path(m - k, start + k, len - k, out);
            out.push(self.node(start, k));
        }
    }

    /// Like [`consistency_proof`] from the first `old_size` leaves to the first `size`.
    pub fn consistency_proof(&self, old_size: usize, size: usize) -> Option<Vec<Hash>> {
        if old_size > size || size > self.len() {
            return None;
        }
        let mut out = Vec::new();
        if old_size > 0 && old_size < size {
            self.subproof(old_size, 0, size, true, &mut out);
        }
        Some(out)
    }

    fn subproof(&self, m: usize, start: usize, n: usize, whole: bool, out: &mut Vec<Hash>) {
        if m == n {
            if !whole {
                out.push(self.node(start, n));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, k, whole, out);
            out.push(self.node(start + k, n - k));
        } else {
            self.subproof(m - k, start + k, n - k, false, out);
            out.push(self.node(start, k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&(i as u64).to_be_bytes())).collect()
    }

    #[test]
    fn every_inclusion_and_consistency_proof_verifies_up_to_33_leaves() {
        for n in 1..=33usize {
            let all = leaves(n);
            let r = root(&all);
            for i in 0..n {
                let p = inclusion_proof(i, &all);
                assert!(verify_inclusion(&all[i], i as u64, n as u64, &p, &r), "inclusion {i} of {n}");
                assert!(!verify_inclusion(&all[i], n as u64, n as u64, &p, &r), "index out of range");
                if n > 1 {
                    assert!(!verify_inclusion(&all[(i + 1) % n], i as u64, n as u64, &p, &r));
                }
            }
            for m in 0..=n {
                let p = consistency_proof(m, &all);
                let old = root(&all[..m]);
                assert!(verify_consistency(m as u64, &old, n as u64, &r, &p), "consistency {m} -> {n}");
                if m > 0 && m < n {
                    let forked = leaf_hash(b"forged");
                    let mut other = all.clone();
                    other[m - 1] = forked;
                    assert!(!verify_consistency(m as u64, &root(&other[..m]), n as u64, &r, &p));
                }
            }
        }
    }

    #[test]
    fn leaves_and_nodes_never_collide() {
        let (a, b) = (leaf_hash(b"a"), leaf_hash(b"b"));
        let mut joined = a.0.to_vec();
        joined.extend_from_slice(&b.0);
        assert_ne!(node_hash(&a, &b), leaf_hash(&joined));
        assert_ne!(oversized_leaf_hash(5), leaf_hash(&5u64.to_be_bytes()));
    }

    #[test]
    fn subtrees_give_the_same_roots_and_proofs_as_the_bare_leaves() {
        let leaves: Vec<Hash> = (0..70u8).map(|i| leaf_hash(&[i])).collect();
        let mut tree = Subtrees::default();
        assert_eq!(tree.root(0), Some(empty_root()));
        for (n, leaf) in leaves.iter().enumerate() {
            tree.push(*leaf);
            let n = n + 1;
            assert_eq!(tree.len(), n);
            assert_eq!(tree.root(n), Some(root(&leaves[..n])), "root of {n}");
            for size in 0..=n {
                assert_eq!(tree.root(size), Some(root(&leaves[..size])));
                for i in 0..size {
                    assert_eq!(
                        tree.inclusion_proof(i, size),
                        Some(inclusion_proof(i, &leaves[..size])),
                        "{i} of {size}"
                    );
                }
                for old in 0..=size {
                    assert_eq!(tree.consistency_proof(old, size), Some(consistency_proof(old, &leaves[..size])));
                }
            }
        }
        assert_eq!(tree.root(71), None);
        assert_eq!(tree.inclusion_proof(70, 70), None);
        assert_eq!(tree.consistency_proof(5, 71), None);
    }
}
