//! Log-linear latency histogram (HdrHistogram's bucket layout, no crate):
//! values below 32 have their own bucket, above that every power of two is
//! split into 32 linear sub-buckets, so a percentile is within ~3 % of the
//! truth over the whole `u64` range with a fixed 15 KiB of counters.

const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * (1 << SUB_BITS);

#[derive(Clone, Debug)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: vec![0; BUCKETS], total: 0, max: 0 }
    }
}

fn index(v: u64) -> usize {
    let i = if v < SUB {
        v
    } else {
        let exp = 63 - u64::from(v.leading_zeros());
        let shift = exp - u64::from(SUB_BITS);
        let sub = (v >> shift) - SUB;
        (shift + 1) * SUB + sub
    };
    usize::try_from(i).unwrap_or(BUCKETS - 1)
}

/// Highest value that lands in bucket `i`.
fn upper_bound(i: usize) -> u64 {
    let next = u64::try_from(i + 1).unwrap_or(u64::MAX);
    let (bucket, sub) = (next / SUB, next % SUB);
    let lower_of_next = if bucket == 0 { sub } else { (SUB + sub) << (bucket - 1) };
    lower_of_next.saturating_sub(1)
}

impl Histogram {
    pub(crate) fn record(&mut self, v: u64) {
        if let Some(c) = self.counts.get_mut(index(v)) {
            *c += 1;
        }
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub(crate) fn count(&self) -> u64 {
        self.total
    }

    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1): the upper bound of the bucket
    /// holding that rank, never above the exact maximum. 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = crate::f2u((q * crate::u2f(self.total)).ceil()).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper_bound(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut last = 0;
        for v in [0, 1, 31, 32, 33, 63, 64, 65, 1000, 123_456, 10_000_000, u64::MAX / 3] {
            let i = index(v);
            assert!(i >= last);
            last = i;
            assert!(upper_bound(i) >= v, "{v}");
            // Relative error of the reported bound is below 1/32.
            assert!(upper_bound(i) - v <= v / 32 + 1, "{v}");
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        for v in 1..=1000 {
            h.record(v);
        }
        let p50 = h.quantile(0.5);
        assert!((500..=516).contains(&p50), "{p50}");
        assert_eq!(h.quantile(1.0), 1000);
        assert!(h.quantile(0.99) >= 990);
    }
}
