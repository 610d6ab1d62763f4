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
///
/// [`Subtrees::forget_below`] drops what only trees smaller than a floor `f` need: at level `k` it
/// keeps the nodes from index `f/2^k - 1` on. That is every node a root, an inclusion proof or a
/// consistency proof touches when the sizes and the leaf index are at least `f` (each is folded
/// from aligned nodes that start at or after the last aligned block below `f`), so the memory is
/// the leaves since the floor, twice over, plus one node per level.
#[derive(Debug, Clone, Default)]
pub struct Subtrees {
    /// Per level: the index of its first node held, and the nodes held from there on.
    levels: Vec<(usize, Vec<Hash>)>,
    /// Every leaf ever pushed.
    len: usize,
    /// Roots and proofs need sizes (and leaf indices) at least this (see [`Subtrees::forget_below`]).
    floor: usize,
}

impl Subtrees {
    /// The leaves held, in order: every leaf pushed from [`Subtrees::leaves_from`] on.
    pub fn leaves(&self) -> &[Hash] {
        self.levels.first().map_or(&[], |(_, l)| l.as_slice())
    }

    /// The index of the first leaf held (0 unless [`Subtrees::forget_below`] dropped some).
    pub fn leaves_from(&self) -> usize {
        self.levels.first().map_or(0, |(first, _)| *first)
    }

    /// The leaf at `index`, if held.
    pub fn leaf(&self, index: usize) -> Option<Hash> {
        self.get(0, index)
    }

    /// Appends a leaf (amortised O(1) hashes).
    pub fn push(&mut self, leaf: Hash) {
        self.len += 1;
        let mut hash = leaf;
        let mut k = 0;
        loop {
            if self.levels.len() == k {
                self.levels.push((0, Vec::new()));
            }
            let (first, level) = &mut self.levels[k];
            level.push(hash);
            // A node pairs with its left neighbour when its index is odd; that neighbour is
            // always held (it is at or after the floor's block, see `forget_below`).
            let index = *first + level.len() - 1;
            let n = level.len();
            if index % 2 == 0 {
                return;
            }
            debug_assert!(n >= 2, "the left neighbour of node {index} at level {k} was forgotten");
            if n < 2 {
                return;
            }
            hash = node_hash(&level[n - 2], &level[n - 1]);
            k += 1;
        }
    }

    /// Drops the leaves and nodes that only roots of fewer than `floor` leaves, or proofs for
    /// leaves below `floor`, need; those then answer `None`. A floor never moves back (a lower
    /// one does nothing); one above the leaves pushed is taken as their number.
    pub fn forget_below(&mut self, floor: usize) {
        let floor = floor.min(self.len);
        if floor <= self.floor {
            return;
        }
        self.floor = floor;
        for (k, (first, level)) in self.levels.iter_mut().enumerate() {
            let keep_from = (floor >> k).saturating_sub(1);
            if keep_from > *first {
                let drop = (keep_from - *first).min(level.len());
                level.drain(..drop);
                *first += drop;
            }
        }
    }

    /// Number of leaves pushed (held or not).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no leaf.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The node at `index` of level `k`, if held.
    fn get(&self, k: usize, index: usize) -> Option<Hash> {
        let (first, level) = self.levels.get(k)?;
        level.get(index.checked_sub(*first)?).copied()
    }

    /// The node over leaves `start .. start + len`, a node of the tree over a prefix (so `start` is
    /// a multiple of every power of two up to `len`, and the range is within the leaves). `None`
    /// when a node it needs is not held (never for the sizes the public methods accept; a wrong
    /// answer would be signed into checkpoints, so a gap is reported, not papered over).
    fn node(&self, start: usize, len: usize) -> Option<Hash> {
        if len == 0 {
            return Some(empty_root());
        }
        if len.is_power_of_two() && start.is_multiple_of(len) {
            if let Some(h) = self.get(len.trailing_zeros() as usize, start / len) {
                return Some(h);
            }
            if len == 1 {
                return None;
            }
        }
        let k = split(len);
        Some(node_hash(&self.node(start, k)?, &self.node(start + k, len - k)?))
    }

    /// The root over the first `size` leaves.
    pub fn root(&self, size: usize) -> Option<Hash> {
        if size < self.floor || size > self.len {
            return None;
        }
        self.node(0, size)
    }

    /// Like [`inclusion_proof`] over the first `size` leaves.
    pub fn inclusion_proof(&self, index: usize, size: usize) -> Option<Vec<Hash>> {
        if index >= size || size > self.len || index < self.floor {
            return None;
        }
        let mut out = Vec::new();
        self.path(index, 0, size, &mut out)?;
        Some(out)
    }

    fn path(&self, m: usize, start: usize, len: usize, out: &mut Vec<Hash>) -> Option<()> {
        if len <= 1 {
            return Some(());
        }
        let k = split(len);
        if m < k {
            self.path(m, start, k, out)?;
            out.push(self.node(start + k, len - k)?);
        } else {
            self.path(m - k, start + k, len - k, out)?;
            out.push(self.node(start, k)?);
        }
        Some(())
    }

    /// Like [`consistency_proof`] from the first `old_size` leaves to the first `size`.
    pub fn consistency_proof(&self, old_size: usize, size: usize) -> Option<Vec<Hash>> {
        if old_size > size || size > self.len || old_size < self.floor {
            return None;
        }
        let mut out = Vec::new();
        if old_size > 0 && old_size < size {
            self.subproof(old_size, 0, size, true, &mut out)?;
        }
        Some(out)
    }

    fn subproof(&self, m: usize, start: usize, n: usize, whole: bool, out: &mut Vec<Hash>) -> Option<()> {
        if m == n {
            if !whole {
                out.push(self.node(start, n)?);
            }
            return Some(());
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, k, whole, out)?;
            out.push(self.node(start + k, n - k)?);
        } else {
            self.subproof(m - k, start + k, n - k, false, out)?;
            out.push(self.node(start, k)?);
        }
        Some(())
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

    /// A tree that forgets below a floor answers exactly like the bare leaves for every size, leaf
    /// and old size at or above the floor, keeps doing so as leaves arrive and the floor moves,
    /// answers `None` below it, and holds O(leaves since the floor + levels) hashes.
    #[test]
    fn a_tree_that_forgets_below_a_floor_keeps_every_root_and_proof_above_it() {
        let all: Vec<Hash> = (0..140u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for step in [1usize, 3, 7, 16] {
            let mut tree = Subtrees::default();
            let mut floor = 0;
            for (n, leaf) in all.iter().enumerate() {
                tree.push(*leaf);
                let n = n + 1;
                if n % step == 0 {
                    // The floor trails the head by a varying distance, as a follower's does, and
                    // now and then catches up with it.
                    let behind = if n % 45 == 0 { 0 } else { 1 + (n * 7) % 23 };
                    floor = floor.max(n.saturating_sub(behind));
                    tree.forget_below(floor);
                }
                assert_eq!(tree.len(), n);
                assert_eq!(tree.leaves_from() + tree.leaves().len(), n);
                assert!(tree.leaves_from() <= floor);
                assert_eq!(tree.leaves(), &all[tree.leaves_from()..n]);
                // Exactly the spec: at level k, the nodes from index floor/2^k - 1 to the last one.
                for (k, (_, level)) in tree.levels.iter().enumerate() {
                    let expected = (n >> k) - (floor >> k).saturating_sub(1).min(n >> k);
                    assert_eq!(level.len(), expected, "level {k} at {n}, floor {floor}");
                }
                for size in floor..=n {
                    assert_eq!(tree.root(size), Some(root(&all[..size])), "root of {size}, floor {floor}");
                    for i in floor..size {
                        assert_eq!(tree.inclusion_proof(i, size), Some(inclusion_proof(i, &all[..size])));
                    }
                    for old in floor..=size {
                        assert_eq!(tree.consistency_proof(old, size), Some(consistency_proof(old, &all[..size])));
                    }
                }
                if floor > 0 {
                    assert_eq!(tree.root(floor - 1), None);
                    assert_eq!(tree.inclusion_proof(floor - 1, n), None);
                    assert_eq!(tree.consistency_proof(floor - 1, n), None);
                }
            }
        }
        // A floor never moves back, and one beyond the leaves stops at them.
        let mut tree = Subtrees::default();
        all[..10].iter().for_each(|l| tree.push(*l));
        tree.forget_below(50);
        tree.forget_below(3);
        assert_eq!(tree.root(10), Some(root(&all[..10])));
        assert_eq!(tree.root(9), None);
        tree.push(all[10]);
        assert_eq!(tree.root(11), Some(root(&all[..11])));
        assert_eq!(tree.inclusion_proof(10, 11), Some(inclusion_proof(10, &all[..11])));
    }
}
