//! DICOM UIDs derived from the generator's seeded random stream.
//!
//! Every UID is `2.25.<128-bit decimal>` (PS3.5 B.2), so it is valid without an org root,
//! unique in practice, and the same for the same seed.

use rand::Rng;

/// A fresh UID in the `2.25` arc drawn from `rng`.
pub fn random_uid(rng: &mut impl Rng) -> String {
    // A leading zero digit is not allowed in a UID component; a u128 in decimal never has one
    // unless it is 0, which we map away.
    let value: u128 = rng.random::<u128>().max(1);
    format!("2.25.{value}")
}

/// True when `uid` follows PS3.5 9.1: digits and dots, no empty or zero-led component, ≤ 64 chars.
pub fn is_valid_uid(uid: &str) -> bool {
    uid.len() <= 64
        && !uid.is_empty()
        && uid.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_digit())
                && (part == "0" || !part.starts_with('0'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn uids_are_valid_and_deterministic() {
        let mut a = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut b = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..1000 {
            let uid = random_uid(&mut a);
            assert!(is_valid_uid(&uid), "{uid}");
            assert_eq!(uid, random_uid(&mut b));
        }
        assert!(!is_valid_uid("1.2.03"));
        assert!(!is_valid_uid("1..2"));
    }
}
