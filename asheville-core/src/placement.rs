//! Placement: which backend holds which shard of a pack.
//!
//! Weighted rendezvous (highest random weight) hashing. For shard `i` of
//! pack `p`, every backend `b` gets the score `-w_b / ln(u)` where
//! `u ∈ (0,1)` comes from `BLAKE3(p, i, name of b)`; the shard goes to the
//! best-scoring backend that does not already hold a shard of `p`,
//! preferring one whose failure domain holds none yet.
//!
//! Why this shape:
//! - a backend with twice the weight wins twice as often (the `-w/ln u`
//!   form is the standard weighted HRW);
//! - adding or removing one of `N` equally weighted backends moves about
//!   `1/N` of the shards (only the shards whose top choice changed, plus a
//!   small cascade within the same pack) — tested below;
//! - every decision is a pure function of (pack, shard, backend names,
//!   weights, domains): nothing to store beyond the resulting locations.

use std::collections::HashSet;

use crate::error::{Error, ErrorKind, Result};

/// A backend as placement sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Slot {
    /// Unique name of the backend.
    pub name: String,
    /// Relative share of shards it should receive; 0 means drained
    /// (it receives nothing new).
    pub weight: f64,
    /// Failure domain (a site, a cloud, a machine). Backends with the same
    /// domain fail together; two shards of one pack avoid sharing one.
    pub domain: String,
}

impl Slot {
    /// A slot with weight 1 in its own failure domain (named after it).
    pub fn new(name: impl Into<String>) -> Slot {
        let name = name.into();
        Slot {
            domain: name.clone(),
            name,
            weight: 1.0,
        }
    }
}

/// A placement over a fixed set of backends.
#[derive(Debug, Clone)]
pub struct Placement {
    slots: Vec<Slot>,
    name_keys: Vec<blake3::Hasher>,
}

impl Placement {
    /// Checks the slots (unique non-empty names, finite weights `>= 0`)
    /// and builds the placement.
    pub fn new(slots: Vec<Slot>) -> Result<Placement> {
        let mut seen = HashSet::new();
        for s in &slots {
            if s.name.is_empty() || !seen.insert(s.name.as_str()) {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    "backend names must be unique and non-empty",
                )
                .with_context("name", &s.name));
            }
            if !s.weight.is_finite() || s.weight < 0.0 {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    "backend weight must be a finite number >= 0",
                )
                .with_context("name", &s.name)
                .with_context("weight", s.weight));
            }
        }
        let name_keys = slots
            .iter()
            .map(|s| {
                let mut h = blake3::Hasher::new_derive_key("asheville 2026-11 placement v1");
                h.update(&(s.name.len() as u64).to_le_bytes());
                h.update(s.name.as_bytes());
                h
            })
            .collect();
        Ok(Placement { slots, name_keys })
    }

    /// The slots, in the order given.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    fn score(&self, b: usize, pack: &[u8], shard: usize) -> f64 {
        let mut h = self.name_keys[b].clone();
        h.update(pack);
        h.update(&(shard as u64).to_le_bytes());
        let mut x = [0u8; 8];
        x.copy_from_slice(&h.finalize().as_bytes()[..8]);
        // 53 random bits -> u in (0, 1).
        let u = ((u64::from_le_bytes(x) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        self.slots[b].weight / -u.ln()
    }

    /// Chooses a distinct backend (index into [`Placement::slots`]) for each
    /// of `shards` shards of `pack`. Errors if fewer than `shards` backends
    /// have a weight above zero.
    pub fn place(&self, pack: &[u8], shards: usize) -> Result<Vec<usize>> {
        let live = self.slots.iter().filter(|s| s.weight > 0.0).count();
        if live < shards {
            return Err(Error::new(
                ErrorKind::Insufficient,
                "fewer usable backends than shards per pack",
            )
            .with_context("shards", shards)
            .with_context("usable_backends", live));
        }
        let mut used = vec![false; self.slots.len()];
        let mut domains: HashSet<&str> = HashSet::new();
        let mut out = Vec::with_capacity(shards);
        for i in 0..shards {
            let mut best: Option<(bool, f64, usize)> = None;
            for (b, slot) in self.slots.iter().enumerate() {
                if used[b] || slot.weight <= 0.0 {
                    continue;
                }
                let fresh_domain = !domains.contains(slot.domain.as_str());
                let cand = (fresh_domain, self.score(b, pack, i), b);
                if best.is_none_or(|bst| (cand.0, cand.1) > (bst.0, bst.1)) {
                    best = Some(cand);
                }
            }
            let (_, _, b) =
                best.ok_or_else(|| Error::new(ErrorKind::Insufficient, "no backend left"))?;
            used[b] = true;
            domains.insert(self.slots[b].domain.as_str());
            out.push(b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(n: usize) -> Vec<Slot> {
        (0..n).map(|i| Slot::new(format!("backend-{i}"))).collect()
    }

    fn pack(i: u32) -> [u8; 32] {
        *blake3::hash(&i.to_le_bytes()).as_bytes()
    }

    #[test]
    fn shards_of_a_pack_go_to_distinct_backends() {
        let p = Placement::new(slots(8)).unwrap();
        for i in 0..500 {
            let placed = p.place(&pack(i), 6).unwrap();
            let set: HashSet<_> = placed.iter().collect();
            assert_eq!(set.len(), 6);
        }
        let e = p.place(&pack(0), 9).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Insufficient);
    }

    #[test]
    fn distribution_follows_weights() {
        let mut s = slots(4);
        s[0].weight = 2.0; // should get twice the shards of each other one
        let p = Placement::new(s).unwrap();
        let mut counts = [0usize; 4];
        let packs = 20_000;
        for i in 0..packs {
            counts[p.place(&pack(i), 1).unwrap()[0]] += 1;
        }
        let expect = [0.4, 0.2, 0.2, 0.2];
        for (c, e) in counts.iter().zip(expect) {
            let share = *c as f64 / packs as f64;
            assert!((share - e).abs() < 0.015, "{counts:?}");
        }
    }

    #[test]
    fn uniform_spread_of_all_shards() {
        let p = Placement::new(slots(10)).unwrap();
        let mut counts = [0usize; 10];
        for i in 0..10_000 {
            for b in p.place(&pack(i), 6).unwrap() {
                counts[b] += 1;
            }
        }
        let mean = 6_000.0;
        for c in counts {
            assert!(((c as f64) - mean).abs() / mean < 0.05, "{counts:?}");
        }
    }

    /// Moving shards costs network and time; adding or removing one of N
    /// backends must move about 1/N of them.
    #[test]
    fn adding_or_removing_a_backend_moves_about_one_nth() {
        let n = 10;
        let shards = 6;
        let packs = 5_000u32;
        let before = Placement::new(slots(n)).unwrap();
        let added = Placement::new(slots(n + 1)).unwrap();
        let mut removed_slots = slots(n);
        removed_slots.remove(3);
        let removed = Placement::new(removed_slots).unwrap();
        let name = |p: &Placement, i: usize| p.slots()[i].name.clone();
        let (mut moved_add, mut moved_remove) = (0usize, 0usize);
        for i in 0..packs {
            let b = before.place(&pack(i), shards).unwrap();
            let a = added.place(&pack(i), shards).unwrap();
            let r = removed.place(&pack(i), shards).unwrap();
            for s in 0..shards {
                moved_add += usize::from(name(&before, b[s]) != name(&added, a[s]));
                moved_remove += usize::from(name(&before, b[s]) != name(&removed, r[s]));
            }
        }
        let total = (packs as usize * shards) as f64;
        let add_share = moved_add as f64 / total;
        let remove_share = moved_remove as f64 / total;
        // Ideal: 1/11 ≈ 0.091 when adding, 1/10 = 0.1 when removing. The
        // in-pack cascade (a displaced shard taking the next choice, which
        // a later shard of the same pack held) adds a bounded amount;
        // measured: add 0.12, remove 0.14. A reshuffle would be ~0.9.
        eprintln!("moved: add {add_share:.3}, remove {remove_share:.3}");
        assert!(
            add_share > 0.08 && add_share < 0.14,
            "add moved {add_share:.3}"
        );
        assert!(
            remove_share > 0.09 && remove_share < 0.16,
            "remove moved {remove_share:.3}"
        );
    }

    #[test]
    fn failure_domains_are_spread_when_possible() {
        // 6 backends in 3 domains; rs(2,1) -> 3 shards must use 3 domains.
        let s: Vec<Slot> = (0..6)
            .map(|i| Slot {
                name: format!("b{i}"),
                weight: 1.0,
                domain: format!("site-{}", i / 2),
            })
            .collect();
        let p = Placement::new(s.clone()).unwrap();
        for i in 0..1000 {
            let placed = p.place(&pack(i), 3).unwrap();
            let doms: HashSet<_> = placed.iter().map(|&b| &s[b].domain).collect();
            assert_eq!(doms.len(), 3);
        }
        // 5 shards over 3 domains: all 3 domains used, still distinct backends.
        for i in 0..1000 {
            let placed = p.place(&pack(i), 5).unwrap();
            let doms: HashSet<_> = placed.iter().map(|&b| &s[b].domain).collect();
            assert_eq!(doms.len(), 3);
            assert_eq!(placed.iter().collect::<HashSet<_>>().len(), 5);
        }
    }

    #[test]
    fn drained_backends_get_nothing_and_bad_configs_fail() {
        let mut s = slots(4);
        s[1].weight = 0.0;
        let p = Placement::new(s).unwrap();
        for i in 0..1000 {
            assert!(!p.place(&pack(i), 3).unwrap().contains(&1));
        }
        assert!(p.place(&pack(0), 4).is_err());
        let mut dup = slots(2);
        dup[1].name = dup[0].name.clone();
        assert_eq!(
            Placement::new(dup).unwrap_err().kind(),
            ErrorKind::InvalidConfig
        );
        let mut neg = slots(2);
        neg[0].weight = f64::NAN;
        assert!(Placement::new(neg).is_err());
    }
}
