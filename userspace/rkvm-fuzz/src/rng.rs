//! The fuzzer's only source of randomness: SplitMix64, seeded from `--seed`, so that a run is a
//! pure function of its seed (pure; host-tested).

/// Deterministic 64-bit generator (SplitMix64: every seed, 0 included, gives a full-period
/// stream).
#[derive(Clone, Debug)]
pub struct Rng(u64);

/// Integers that sit on a boundary of some KVM rule (page and slot limits, address widths,
/// vCPU ids, signedness, APIC and IOAPIC bases).
pub const BOUNDARY: &[u64] = &[
    0,
    1,
    2,
    3,
    7,
    8,
    15,
    16,
    31,
    32,
    63,
    64,
    255,
    256,
    511,
    512,
    1023,
    1024,
    0xfff,
    0x1000,
    0x1001,
    4095,
    4096,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x20_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xfec0_0000,
    0xfee0_0000,
    0xffff_f000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_f000,
    0x8000_0000_0000,
    0xf_ffff_ffff_f000,
    0x10_0000_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    0xffff_8000_0000_0000,
    0xffff_ffff_ffff_f000,
    0xffff_ffff_ffff_fffe,
    u64::MAX,
];

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` = 0 gives 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            // Multiply-shift: no modulo bias worth caring about for a fuzzer, no division.
            ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
        }
    }

    /// Uniform index into a collection of `len` elements (`len` > 0).
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One element of `items` (non-empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }

    /// An index chosen with the given weights (at least one non-zero).
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let mut r = self.below(total);
        for (i, &w) in weights.iter().enumerate() {
            if r < u64::from(w) {
                return i;
            }
            r -= u64::from(w);
        }
        weights.len() - 1
    }

    /// A value that is often on a boundary: a [`BOUNDARY`] value, one of them plus or minus a
    /// little, a single bit, a small number or plain random bits.
    pub fn interesting(&mut self) -> u64 {
        match self.below(6) {
            0 | 1 => *self.pick(BOUNDARY),
            2 => self.pick(BOUNDARY).wrapping_add(self.below(9)).wrapping_sub(4),
            3 => 1u64 << self.below(64),
            4 => self.below(32),
            _ => self.next(),
        }
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// Applies 1 to `max` random mutations to `buf`: a byte, a bit, an aligned 2/4/8-byte word
    /// set to an interesting value, or a run of random bytes.
    pub fn mutate(&mut self, buf: &mut [u8], max: u64) {
        if buf.is_empty() {
            return;
        }
        for _ in 0..1 + self.below(max) {
            let len = buf.len();
            match self.below(5) {
                0 => buf[self.index(len)] = self.next() as u8,
                1 => buf[self.index(len)] ^= 1 << self.below(8),
                2 | 3 => {
                    let w = *self.pick(&[2usize, 4, 8]);
                    if len >= w {
                        let at = self.index(len / w) * w;
                        let v = self.interesting().to_le_bytes();
                        buf[at..at + w].copy_from_slice(&v[..w]);
                    }
                }
                _ => {
                    let at = self.index(len);
                    let n = (1 + self.index(16)).min(len - at);
                    let mut tmp = [0u8; 16];
                    self.fill(&mut tmp[..n]);
                    buf[at..at + n].copy_from_slice(&tmp[..n]);
                }
            }
        }
    }

    /// The seed of the `n`th derived stream (threads get their own, independent of timing).
    pub fn derive(seed: u64, n: u64) -> u64 {
        Rng::new(seed ^ n.wrapping_mul(0xd605_bbb5_8c8a_bbb5)).next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        for _ in 0..1000 {
            assert_eq!(a.next(), b.next());
        }
        assert_ne!(Rng::new(1).next(), Rng::new(2).next());
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = Rng::new(7);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let v = r.below(10);
            assert!(v < 10);
            seen[v as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(r.below(0), 0);
    }

    #[test]
    fn weighted_never_picks_a_zero_weight() {
        let mut r = Rng::new(3);
        for _ in 0..1000 {
            assert_ne!(r.weighted(&[5, 0, 1]), 1);
        }
    }

    #[test]
    fn mutate_changes_in_bounds_and_fill_is_deterministic() {
        let mut r = Rng::new(9);
        for len in 0..40 {
            let mut buf = vec![0u8; len];
            r.mutate(&mut buf, 4);
        }
        let (mut a, mut b) = (vec![0u8; 13], vec![0u8; 13]);
        Rng::new(5).fill(&mut a);
        Rng::new(5).fill(&mut b);
        assert_eq!(a, b);
        assert_ne!(Rng::derive(1, 0), Rng::derive(1, 1));
    }
}
