//! The metrics the model cards quote: ROC AUC per label, Dice, detection sensitivity.

/// Area under the ROC curve: the probability that a random positive scores above a random
/// negative (ties count half). `None` when either class is absent.
pub fn roc_auc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let mut pairs: Vec<(f32, bool)> = scores
        .iter()
        .copied()
        .zip(positive.iter().copied())
        .collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives = pairs.iter().filter(|p| p.1).count();
    let negatives = pairs.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    // Mann–Whitney U from mid-ranks, so tied scores count half.
    let mut rank_sum = 0.0f64;
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j < pairs.len() && pairs[j].0 == pairs[i].0 {
            j += 1;
        }
        let mid_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += mid_rank * pairs[i..j].iter().filter(|p| p.1).count() as f64;
        i = j;
    }
    let u = rank_sum - (positives * (positives + 1)) as f64 / 2.0;
    Some(u / (positives * negatives) as f64)
}

/// Overlap counts of a predicted and a true binary mask, to be summed over slices and scans.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overlap {
    pub both: u64,
    pub predicted: u64,
    pub truth: u64,
}

impl Overlap {
    pub fn add(&mut self, predicted: &[bool], truth: &[bool]) {
        for (&p, &t) in predicted.iter().zip(truth) {
            self.both += u64::from(p && t);
            self.predicted += u64::from(p);
            self.truth += u64::from(t);
        }
    }

    /// 2|P∩T| / (|P| + |T|); `None` when both are empty.
    pub fn dice(&self) -> Option<f64> {
        let total = self.predicted + self.truth;
        (total > 0).then(|| 2.0 * self.both as f64 / total as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_perfect_random_and_inverted_rankings() {
        let labels = [false, false, true, true];
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &labels), Some(1.0));
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &labels), Some(0.0));
        assert_eq!(roc_auc(&[0.5, 0.5, 0.5, 0.5], &labels), Some(0.5));
        assert_eq!(roc_auc(&[0.1, 0.4, 0.35, 0.8], &labels), Some(0.75));
        assert_eq!(roc_auc(&[0.1, 0.2], &[true, true]), None);
    }

    #[test]
    fn dice_counts() {
        let mut overlap = Overlap::default();
        overlap.add(&[true, true, false, false], &[true, false, true, false]);
        assert_eq!(overlap.dice(), Some(0.5));
        assert_eq!(Overlap::default().dice(), None);
    }
}
