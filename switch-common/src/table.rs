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
//! 2. **Backends in a pool by a weighted race.** Every (backend, slot) pair
//!    has a fixed arrival time `E(b, s)`; a slot goes to the backend with the
//!    smallest `E(b, s) / weight(b)`. Because the times are fixed, removing,
//!    draining or failing one backend moves exactly the slots it held, and
//!    changing its weight moves slots only to or from it.
//!
//!    Computing every pair would cost slots × backends (0.65 G for 10,000
//!    backends). Instead each backend's arrivals are generated as a point
//!    process over the slots, in value order, epoch by epoch (dyadic value
//!    ranges, each with its own seeded generator, so any prefix is the same
//!    whatever else is generated). Only arrivals below a race horizon
//!    `T / W` are generated; `T` is chosen so that every slot almost surely
//!    has one, and a block of ranks where one has none widens its own
//!    horizon. The smallest of the generated arrivals is then the smallest
//!    of all. Cost: about `TABLE_SIZE × T` arrivals per pool, whatever the
//!    number of backends, spread over the cores block by block.
//!
//! The result depends only on the seed and the configuration (backend
//! addresses, weights, states), never on history or map indexes, so every
//! switch host with the same configuration builds the same table.

use crate::hash::finish;
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
fn rank_coefficients(seed: u32) -> (u64, u64) {
    let m = TABLE_SIZE as u64;
    let a = 1 + finish(seed ^ 0x9e37_79b9) as u64 % (m - 1);
    let b = finish(seed ^ 0x7f4a_7c15) as u64 % m;
    (a, b)
}

/// Expected arrivals per slot within the first horizon (at least: whole
/// epochs are generated, up to twice as many). A block of 4,096 slots with
/// a slot still empty widens its own horizon, one epoch more, until it is
/// complete, so a low start costs little (a few checks of the block) and
/// stops each block near the first dyadic horizon that completes it; a
/// high one generated up to twice that for every block (10 here took 30%
/// longer for 10,000 backends than 6, measured with the same tables).
const HORIZON: f64 = 6.0;
/// Epoch 0 holds arrival times in [0, 2^-FIRST_EPOCH); epoch k >= 1 holds
/// [2^(k-1-FIRST_EPOCH), 2^(k-FIRST_EPOCH)).
const FIRST_EPOCH: i32 = 12;
/// Ranks are generated in blocks of 2^BLOCK_BITS, each (backend, epoch,
/// block) with its own generator, so a pool only generates in its ranks.
const BLOCK_BITS: u32 = 12;

/// A small, fast, seeded generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn new(seed: u32, ident: u32, epoch: u32, block: u32) -> Rng {
        let mut r = Rng(((seed as u64) << 32 | ident as u64)
            ^ ((epoch as u64) << 8 | block as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[inline(always)]
fn epoch_range(k: u32) -> (f64, f64) {
    // 2^(k - FIRST_EPOCH) built from its exponent bits: `powi` here was
    // most of a build's time (it runs for every backend, epoch and block).
    let e = (k as i32 - FIRST_EPOCH).clamp(-1000, 1000);
    let hi = f64::from_bits(((1023 + e) as u64) << 52);
    let lo = if k == 0 { 0.0 } else { hi / 2.0 };
    (lo, hi)
}

/// The ranks of block `j`.
fn block(j: u32) -> (usize, usize) {
    let start = (j as usize) << BLOCK_BITS;
    (start, (start + (1 << BLOCK_BITS)).min(TABLE_SIZE))
}

/// Calls `f(rank, time)` for every arrival of backend `ident` in epoch `k`
/// and rank block `j`: on average one per rank per unit of time.
#[inline(always)]
fn arrivals(seed: u32, ident: u32, k: u32, j: u32, mut f: impl FnMut(usize, f32)) {
    let (lo, hi) = epoch_range(k);
    let (start, end) = block(j);
    let size = (end - start) as u64;
    let mut rng = Rng::new(seed, ident, k, j);
    let expected = (hi - lo) * size as f64;
    // A whole number of arrivals with the right mean, decided by the
    // generator of this epoch and block.
    let n = (expected + (rng.next() >> 11) as f64 / (1u64 << 53) as f64) as u64;
    let (lo, width) = (lo as f32, (hi - lo) as f32);
    for _ in 0..n {
        let x = rng.next();
        let rank = start + (((x >> 32) * size) >> 32) as usize;
        let u = (x as u32 >> 8) as f32 / (1u32 << 24) as f32;
        f(rank, lo + width * u);
    }
}

/// One pool's backends ready for the race: sorted (larger ident first: a
/// backend's position is its tie-break rank) with their total weight.
struct Racers {
    backends: Vec<BackendSpec>,
    total: f64,
}

impl Racers {
    fn new(backends: &[BackendSpec]) -> Racers {
        let mut backends = backends.to_vec();
        backends.sort_by(|a, b| b.ident.cmp(&a.ident).then(a.index.cmp(&b.index)));
        let total = backends.iter().map(|b| b.weight as f64).sum();
        Racers { backends, total }
    }
}

/// The winner (backend index) of every rank in `lo..hi`, all in block `j`,
/// by the weighted race. A block's arrivals come from generators of its
/// own, so its race is independent of every other block's (blocks run in
/// parallel, in any order), its scores stay in the L1 cache, and a block
/// that needs a wider horizon widens only its own.
fn race_block(seed: u32, racers: &Racers, j: u32, (lo, hi): (usize, usize)) -> Vec<u16> {
    let backends = &racers.backends;
    // Per rank: (score bits << 32) | position; the smallest wins.
    let mut best = vec![u64::MAX; hi - lo];
    let mut done = vec![0u32; backends.len()];
    // The horizon decides only how much is generated, never who wins: a
    // rank's winner is the smallest of all its arrivals, every arrival
    // below the horizon is generated, and the loop ends only when every
    // rank's best is below it.
    let mut horizon = HORIZON / racers.total;
    loop {
        for (i, b) in backends.iter().enumerate() {
            let inv_w = 1.0 / b.weight as f32;
            let tag = i as u64;
            while epoch_range(done[i]).0 < horizon * b.weight as f64 {
                arrivals(seed, b.ident, done[i], j, |rank, t| {
                    // Outside lo..hi (a block shared with another pool):
                    // the wrapped index is past the end too.
                    if let Some(e) = best.get_mut(rank.wrapping_sub(lo)) {
                        let key = ((t * inv_w).to_bits() as u64) << 32 | tag;
                        // Branch-free: whether an arrival beats the best so
                        // far is a coin toss the CPU cannot predict.
                        *e = (*e).min(key);
                    }
                });
                done[i] += 1;
            }
        }
        // Whole epochs were generated: every arrival of backend b below
        // the end of its last epoch, so every score below the smallest
        // such end / weight. A rank's best below that (with a margin for
        // f32 rounding) is the true minimum, whatever else is generated;
        // a best above it could lose to an ungenerated arrival: then widen
        // the horizon.
        let generated = backends
            .iter()
            .zip(&done)
            .map(|(b, &k)| epoch_range(k.saturating_sub(1)).1 / b.weight as f64)
            .fold(f64::INFINITY, f64::min);
        let sure = (generated * (1.0 - 1e-5)) as f32;
        if best
            .iter()
            .all(|&k| k != u64::MAX && f32::from_bits((k >> 32) as u32) < sure)
        {
            break;
        }
        horizon *= 2.0;
    }
    best.iter()
        .map(|key| backends[(*key as u32) as usize].index)
        .collect()
}

/// Runs `tasks` (pool, block, ranks) on every core, each worker taking the
/// next task until none is left; the winners of each task in task order.
fn race_all(seed: u32, racers: &[Racers], tasks: &[(usize, u32, (usize, usize))]) -> Vec<Vec<u16>> {
    let run = |t: &(usize, u32, (usize, usize))| race_block(seed, &racers[t.0], t.1, t.2);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if threads == 1 || tasks.len() < 2 {
        return tasks.iter().map(run).collect();
    }
    let next = core::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<Vec<u16>> = vec![Vec::new(); tasks.len()];
    std::thread::scope(|sc| {
        let workers: Vec<_> = (0..threads.min(tasks.len()))
            .map(|_| {
                sc.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
                        let Some(t) = tasks.get(i) else { break };
                        mine.push((i, run(t)));
                    }
                    mine
                })
            })
            .collect();
        for w in workers {
            // A worker cannot panic (no indexing out of its own vectors);
            // were one to, its tasks would stay empty and be run below.
            for (i, winners) in w.join().unwrap_or_default() {
                out[i] = winners;
            }
        }
    });
    for (i, t) in tasks.iter().enumerate() {
        if out[i].len() != t.2.1 - t.2.0 {
            out[i] = run(t);
        }
    }
    out
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
    let mut table = vec![NO_BACKEND; TABLE_SIZE];
    if start == 0 {
        return table;
    }
    let mut slot_of_rank = vec![0u32; TABLE_SIZE];
    // rank(slot) = (a·slot + b) mod TABLE_SIZE, stepped by adding `a`: a
    // division per slot was a third of a small table's build.
    let (a, b) = rank_coefficients(seed);
    let mut rank = b as usize;
    for slot in 0..TABLE_SIZE {
        slot_of_rank[rank] = slot as u32;
        rank += a as usize;
        if rank >= TABLE_SIZE {
            rank -= TABLE_SIZE;
        }
    }
    // Every (pool, block) piece of the rank space is a task of its own.
    let racers: Vec<Racers> = eligible.iter().map(|b| Racers::new(b)).collect();
    let mut tasks = Vec::new();
    let mut from = 0;
    for (p, &to) in bounds.iter().enumerate() {
        let mut r = from;
        while r < to {
            let j = (r >> BLOCK_BITS) as u32;
            let end = block(j).1.min(to);
            tasks.push((p, j, (r, end)));
            r = end;
        }
        from = to;
    }
    for (t, winners) in tasks.iter().zip(race_all(seed, &racers, &tasks)) {
        for (r, w) in (t.2.0..t.2.1).zip(winners) {
            table[slot_of_rank[r] as usize] = w;
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::backend_ident;

    fn backend(i: u16, weight: u32) -> BackendSpec {
        let addr = [
            198,
            18,
            (i >> 8) as u8,
            i as u8,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ];
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

    /// Every switch host of a fleet must build the same table from the same
    /// seed and configuration, and during a rolling upgrade the hosts run
    /// two builds: a change to the table function is a change of what every
    /// connection hashes to. These digests were taken from the builder as
    /// of 2026-11-30 (and checked equal to the builder before it was made
    /// block-parallel); change them only on purpose, with a note for
    /// operators that a fleet must not mix the two builds.
    #[test]
    fn tables_are_the_same_as_the_last_release() {
        let mk = |count: u32, base: u32| -> Vec<BackendSpec> {
            (0..count)
                .map(|i| {
                    let ip = (0xc612_0000u32 + base + i).to_be_bytes();
                    let mut a = [0u8; 16];
                    a[..4].copy_from_slice(&ip);
                    BackendSpec {
                        index: (base + i) as u16,
                        ident: backend_ident(1, &a, 80),
                        weight: 1,
                        eligible: true,
                    }
                })
                .collect()
        };
        for (n, want) in [
            (10u32, 0x389b_d989_b7b9_da78u64),
            (1000, 0x77b6_cb6b_e0c6_9f23),
        ] {
            let pools = vec![
                PoolSpec {
                    weight: 90,
                    backends: mk(n, 0),
                },
                PoolSpec {
                    weight: 10,
                    backends: mk((n / 10).max(1), 20_000),
                },
            ];
            let mut h: u64 = 0;
            for seed in [1u32, 7, 99] {
                let mut other = pools.clone();
                other[0].weight = 37;
                other[1].weight = 63;
                if other[0].backends.len() > 3 {
                    other[0].backends[2].weight = 5;
                    other[0].backends[3].eligible = false;
                }
                for p in [&pools, &other] {
                    for (i, v) in build(seed, p).iter().enumerate() {
                        h = h
                            .wrapping_mul(0x100_0000_01b3)
                            .wrapping_add(*v as u64 ^ i as u64);
                    }
                }
            }
            assert_eq!(h, want, "the table of {n} backends changed");
        }
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

    fn pool(weight: u32, ids: std::ops::Range<u16>, w: impl Fn(u16) -> u32) -> PoolSpec {
        PoolSpec {
            weight,
            backends: ids.map(|i| backend(i, w(i))).collect(),
        }
    }

    /// How long a build takes (never asserted: `cargo xtask bench` reports it).
    #[test]
    #[ignore]
    fn build_time() {
        for n in [10u16, 100, 1000, 10_000] {
            let pools = [pool(95, 0..n / 2, |_| 1), pool(5, n / 2..n, |_| 1)];
            let t = std::time::Instant::now();
            let table = build(7, &pools);
            eprintln!("{n} backends: {:?}", t.elapsed());
            assert!(table.iter().all(|&b| b != NO_BACKEND));
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn weights() -> impl Strategy<Value = Vec<u32>> {
            prop::collection::vec(1u32..5, 1..40)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(24))]

            /// Pool shares are exact; every slot has an eligible backend.
            #[test]
            fn shares_are_exact(seed: u32, blue in 0u32..1000, green in 0u32..1000, ws in weights()) {
                prop_assume!(blue + green > 0);
                let n = ws.len() as u16;
                let pools = [
                    pool(blue, 0..n, |i| ws[i as usize]),
                    pool(green, 100..100 + n, |i| ws[(i - 100) as usize]),
                ];
                let t = build(seed, &pools);
                let q = quotas(&[blue as u64, green as u64], TABLE_SIZE);
                let green_slots = t.iter().filter(|&&b| b >= 100).count();
                prop_assert_eq!(green_slots, q[1]);
                prop_assert!(t.iter().all(|&b| b != NO_BACKEND));
            }

            /// Removing (or draining) any one backend moves exactly its slots.
            #[test]
            fn removing_a_backend_moves_only_its_slots(seed: u32, ws in weights(), gone in 0usize..40) {
                let n = ws.len() as u16;
                let gone = (gone % ws.len()) as u16;
                let all = pool(1, 0..n, |i| ws[i as usize]);
                let before = build(seed, std::slice::from_ref(&all));
                let mut fewer = all.clone();
                fewer.backends[gone as usize].eligible = false;
                let after = build(seed, &[fewer]);
                for (b, a) in before.iter().zip(&after) {
                    if *b == gone {
                        prop_assert!(*a != gone);
                    } else {
                        prop_assert_eq!(b, a);
                    }
                }
            }

            /// A canary step moves slots only from the old pool to the new.
            #[test]
            fn a_canary_step_moves_only_between_the_pools(seed: u32, from in 0u32..100, by in 1u32..50, ws in weights()) {
                let to = (from + by).min(100);
                let n = ws.len() as u16;
                let mk = |g: u32| build(seed, &[
                    pool(100 - g, 0..n, |i| ws[i as usize]),
                    pool(g, 100..100 + n, |i| ws[(i - 100) as usize]),
                ]);
                let (before, after) = (mk(from), mk(to));
                for (b, a) in before.iter().zip(&after) {
                    if b != a {
                        prop_assert!(*b < 100 && *a >= 100, "slot moved {} -> {}", b, a);
                    }
                }
            }

            /// The same seed and configuration give the same table, in any order.
            #[test]
            fn same_seed_and_config_same_table(seed: u32, ws in weights()) {
                let n = ws.len() as u16;
                let p = pool(1, 0..n, |i| ws[i as usize]);
                let mut rev = p.clone();
                rev.backends.reverse();
                prop_assert_eq!(build(seed, &[p]), build(seed, &[rev]));
            }
        }
    }
}
