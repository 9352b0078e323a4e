//! Bearer tokens: generation, hashing and comparison.
//!
//! A token is `rs_` followed by 64 hex digits (256 random bits from the thread-local
//! CSPRNG). Only its SHA-256 digest is stored; the token itself is printed once by
//! `radserve token create` and never written anywhere by us. Looking a token up by its
//! digest leaks nothing useful through timing (an attacker controls the token, not its
//! digest); the one comparison we do ourselves, against `RADSERVE_ADMIN_TOKEN`, compares
//! digests in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Role;
use crate::store::{Archive, NewToken, StoreError};

/// Every token we create starts with this (so that a leaked one is easy to spot in a scan).
pub const TOKEN_PREFIX: &str = "rs_";
/// Longest bearer credential we look at; anything longer is refused unread.
pub const MAX_TOKEN_LEN: usize = 512;
/// Longest token label.
pub const MAX_LABEL_LEN: usize = 64;

/// The SHA-256 digest of a token.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Lowercase hex, as stored in the index.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Equality that takes the same time wherever the digests differ.
    pub fn ct_eq(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::fmt::Debug for TokenHash {
    // Digests are not secrets, but keep them short in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({}…)", &self.to_hex()[..8])
    }
}

/// The digest of `token`.
pub fn hash(token: &str) -> TokenHash {
    TokenHash(Sha256::digest(token.as_bytes()).into())
}

/// A new random token.
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{TOKEN_PREFIX}{}", hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Why a token could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("invalid label: {0}")]
    Label(&'static str),
    #[error("cannot store the token: {0}")]
    Store(#[from] StoreError),
}

/// A token just created: the secret (to show once) and its index row id.
#[derive(Debug)]
pub struct CreatedToken {
    pub id: i64,
    pub token: String,
}

/// Checks a label: at most [`MAX_LABEL_LEN`] characters, no control characters. Labels
/// appear in audit records and logs, so they must not smuggle line breaks.
pub fn validate_label(label: &str) -> Result<(), TokenError> {
    if label.chars().count() > MAX_LABEL_LEN {
        return Err(TokenError::Label("longer than 64 characters"));
    }
    if label.chars().any(char::is_control) {
        return Err(TokenError::Label("contains control characters"));
    }
    Ok(())
}

/// Creates a token with `role` and `label`, stores its digest and returns it.
pub async fn create(
    archive: &Archive,
    role: Role,
    label: &str,
) -> Result<CreatedToken, TokenError> {
    validate_label(label)?;
    let token = generate();
    let id = archive
        .insert_token(&NewToken {
            token_hash: hash(&token).to_hex(),
            role: role.as_str().to_owned(),
            label: label.to_owned(),
        })
        .await?;
    Ok(CreatedToken { id, token })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_prefixed_random_and_hash_to_hex() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        assert!(a[3..].bytes().all(|c| c.is_ascii_hexdigit()));
        let h = hash(&a).to_hex();
        assert_eq!(h.len(), 64);
        assert_ne!(h, hash(&b).to_hex());
    }

    #[test]
    fn hash_is_sha256() {
        // echo -n abc | sha256sum
        assert_eq!(
            hash("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn constant_time_equality_compares_whole_digests() {
        let a = hash("rs_one");
        assert!(a.ct_eq(&hash("rs_one")));
        assert!(!a.ct_eq(&hash("rs_two")));
        assert!(!a.ct_eq(&hash("rs_one ")));
        // Digests that differ only in the last byte are still unequal.
        let mut last = a.0;
        last[31] ^= 1;
        assert!(!a.ct_eq(&TokenHash(last)));
    }

    #[test]
    fn labels_are_bounded_and_single_line() {
        assert!(validate_label("").is_ok());
        assert!(validate_label("orthanc-forwarder").is_ok());
        assert!(validate_label(&"x".repeat(64)).is_ok());
        assert!(validate_label(&"x".repeat(65)).is_err());
        assert!(validate_label("evil\nline").is_err());
    }
}
