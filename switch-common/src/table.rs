//! Building a service's selection table (userspace only).
//!
//! Two levels, each chosen for the promise it keeps:
//!
//! 1. **Pools get exact shares.** Every slot has a rank from a seeded
//!    permutation of `0..TABLE_SIZE`; pool *i* owns the ranks in its quota's
//!    interval. Quotas are the pool weights rounded by the largest-remainder
//!    method, so a 5% canary is 5% to 1/65,537. Moving weight between two
//!    adjacent pools only moves the slots whose ranks cross the boundary:
//!    a canary step 5% -> 25% moves blue flows to green and nothing else.
//! 2. **Backends in a pool by weighted rendezvous hashing** (HRW) of
//!    (slot, backend address). Removing, draining or failing one backend moves
//!    exactly the slots it held; no other backend's slot changes.
//!
//! The result depends only on the seed and the configuration (backend
//! addresses, weights, states), never on history or map indexes, so every
//! switch host with the same configuration builds the same table.

use crate::hash::{finish, mix};
use crate::maps::{NO_BACKEND, TABLE_SIZE};

/// One backend as the table builder sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackendSpec {
    /// Global backend index written into the table.
    pub index: u16,
    /// `hash::backend_ident` of its address and port.
    pub ident: u32,
    pub weight: u32,
    /// Active and healthy: may receive new flows.
    pub eligible: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PoolSpec {
    pub weight: u32,
    pub backends: Vec<BackendSpec>,
}

/// Splits `total` into parts proportional to `weights`, exactly summing to
/// `total` (largest remainder; ties to the lower index). All-zero weights
/// give all-zero parts.
pub fn quotas(weights: &[u64], total: usize) -> Vec<usize> {
    let sum: u128 = weights.iter().map(|&w| w as u128).sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    let mut parts: Vec<usize> = Vec::with_capacity(weights.len());
    let mut rems: Vec<(u128, usize)> = Vec::with_capacity(weights.len());
    for (i, &w) in weights.iter().enumerate() {
        let exact = w as u128 * total as u128;
        parts.push((exact / sum) as usize);
        rems.push((exact % sum, i));
    }
    let short = total - parts.iter().sum::<usize>();
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in rems.iter().take(short) {
        parts[i] += 1;
    }
    parts
}

/// Seeded permutation of the slots: `rank(s) = (a*s + b) mod M`, a bijection
/// because M is prime and `a` is not a multiple of it.
fn rank(seed: u32, slot: usize) -> usize {
    let m = TABLE_SIZE as u64;
    let a = 1 + finish(seed ^ 0x9e37_79b9) as u64 % (m - 1);
    let b = finish(seed ^ 0x7f4a_7c15) as u64 % m;
    ((a * slot as u64 + b) % m) as usize
}

fn hrw_hash(seed: u32, ident: u32, slot: usize) -> u32 {
    finish(mix(mix(seed, ident), slot as u32))
}

/// Chooses the backend of `slot` among `backends` (all eligible, weight > 0).
fn pick(seed: u32, backends: &[BackendSpec], equal_weights: bool, slot: usize) -> u16 {
    let mut best = NO_BACKEND;
    if equal_weights {
        let mut best_key = (0u32, 0u32);
        for b in backends {
            let key = (hrw_hash(seed, b.ident, slot), b.ident);
            if best == NO_BACKEND || key > best_key {
                best_key = key;
                best = b.index;
            }
        }
    } else {
        // Weighted HRW: score = w / -ln(u), u uniform in (0, 1).
        let mut best_score = f64::NEG_INFINITY;
        let mut best_ident = 0;
        for b in backends {
            let u = (hrw_hash(seed, b.ident, slot) as f64 + 0.5) / 4_294_967_296.0;
            let score = b.weight as f64 / -u.ln();
            if best == NO_BACKEND
                || score > best_score
                || (score == best_score && b.ident > best_ident)
            {
                best_score = score;
                best_ident = b.ident;
                best = b.index;
            }
        }
    }
    best
}

/// Builds the table. Pools with weight 0 or no eligible backend get no
/// slots; their share goes to the others in proportion. With no eligible
/// pool at all every slot is `NO_BACKEND`.
pub fn build(seed: u32, pools: &[PoolSpec]) -> Vec<u16> {
    let eligible: Vec<Vec<BackendSpec>> = pools
        .iter()
        .map(|p| {
            p.backends
                .iter()
                .copied()
                .filter(|b| b.eligible && b.weight > 0)
                .collect()
        })
        .collect();
    let weights: Vec<u64> = pools
        .iter()
        .zip(&eligible)
        .map(|(p, e)| if e.is_empty() { 0 } else { p.weight as u64 })
        .collect();
    let q = quotas(&weights, TABLE_SIZE);
    // Rank interval owned by each pool.
    let mut bounds = Vec::with_capacity(q.len());
    let mut start = 0;
    for &n in &q {
        bounds.push(start + n);
        start += n;
    }
    let equal: Vec<bool> = eligible
        .iter()
        .map(|e| e.windows(2).all(|w| w[0].weight == w[1].weight))
        .collect();
    let mut table = vec![NO_BACKEND; TABLE_SIZE];
    if start == 0 {
        return table;
    }
    for (slot, entry) in table.iter_mut().enumerate() {
        let r = rank(seed, slot);
        let pool = bounds.partition_point(|&end| end <= r);
        *entry = pick(seed, &eligible[pool], equal[pool], slot);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::backend_ident;

    fn backend(i: u16, weight: u32) -> BackendSpec {
        let addr = [198, 18, 1, i as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        BackendSpec {
            index: i,
            ident: backend_ident(7, &addr, 8080),
            weight,
            eligible: true,
        }
    }

    fn count(table: &[u16], index: u16) -> usize {
        table.iter().filter(|&&b| b == index).count()
    }

    #[test]
    fn quotas_are_exact_and_sum_to_total() {
        assert_eq!(quotas(&[95, 5], TABLE_SIZE), vec![62_260, 3_277]);
        assert_eq!(quotas(&[1, 1, 1], 10), vec![4, 3, 3]);
        assert_eq!(quotas(&[0, 0], 10), vec![0, 0]);
        assert_eq!(
            quotas(&[u32::MAX as u64, 1], TABLE_SIZE)
                .iter()
                .sum::<usize>(),
            TABLE_SIZE
        );
    }

    #[test]
    fn pool_shares_are_exact() {
        let pools = vec![
            PoolSpec {
                weight: 90,
                backends: vec![backend(0, 1), backend(1, 1)],
            },
            PoolSpec {
                weight: 10,
                backends: vec![backend(2, 1), backend(3, 1)],
            },
        ];
        let t = build(7, &pools);
        let green = count(&t, 2) + count(&t, 3);
        assert_eq!(green, quotas(&[90, 10], TABLE_SIZE)[1]);
    }

    #[test]
    fn growing_a_canary_moves_only_blue_slots_to_green() {
        let mk = |g: u32| {
            build(
                7,
                &[
                    PoolSpec {
                        weight: 100 - g,
                        backends: vec![backend(0, 1), backend(1, 1)],
                    },
                    PoolSpec {
                        weight: g,
                        backends: vec![backend(2, 1), backend(3, 1)],
                    },
                ],
            )
        };
        let before = mk(5);
        let after = mk(25);
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert!(*b <= 1 && *a >= 2, "slot moved {b} -> {a}");
            }
        }
    }

    #[test]
    fn removing_a_backend_moves_only_its_slots() {
        let all: Vec<_> = (0..5).map(|i| backend(i, 1)).collect();
        let before = build(
            7,
            &[PoolSpec {
                weight: 1,
                backends: all.clone(),
            }],
        );
        let mut fewer = all;
        fewer[3].eligible = false;
        let after = build(
            7,
            &[PoolSpec {
                weight: 1,
                backends: fewer,
            }],
        );
        for (b, a) in before.iter().zip(&after) {
            if *b != 3 {
                assert_eq!(b, a);
            } else {
                assert_ne!(*a, 3);
            }
        }
    }

    #[test]
    fn backend_weights_are_respected() {
        let t = build(
            7,
            &[PoolSpec {
                weight: 1,
                backends: vec![backend(0, 3), backend(1, 1)],
            }],
        );
        let share = count(&t, 0) as f64 / TABLE_SIZE as f64;
        assert!((share - 0.75).abs() < 0.01, "share {share}");
    }

    #[test]
    fn pool_without_eligible_backends_gives_its_share_away() {
        let mut down = backend(2, 1);
        down.eligible = false;
        let t = build(
            7,
            &[
                PoolSpec {
                    weight: 50,
                    backends: vec![backend(0, 1)],
                },
                PoolSpec {
                    weight: 50,
                    backends: vec![down],
                },
            ],
        );
        assert_eq!(count(&t, 0), TABLE_SIZE);
        let none = build(
            7,
            &[PoolSpec {
                weight: 50,
                backends: vec![down],
            }],
        );
        assert_eq!(count(&none, NO_BACKEND), TABLE_SIZE);
    }

    #[test]
    fn same_config_same_table_regardless_of_order() {
        let a = build(
            7,
            &[PoolSpec {
                weight: 1,
                backends: vec![backend(0, 1), backend(1, 1)],
            }],
        );
        let b = build(
            7,
            &[PoolSpec {
                weight: 1,
                backends: vec![backend(1, 1), backend(0, 1)],
            }],
        );
        assert_eq!(a, b);
    }
}
