//! The four roles a token can carry and what each is for.

use std::fmt;
use std::str::FromStr;

/// A token's role. Admin may do everything; the others one job each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A PACS or modality that stores studies (STOW-RS).
    Pacs,
    /// A clinician or viewer that reads patient data (QIDO-RS, WADO-RS, findings).
    Clinician,
    /// An ML engineer: models, benchmarks, metrics.
    Ml,
    /// Everything, including the audit log.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Pacs, Role::Clinician, Role::Ml, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Pacs => "pacs",
            Role::Clinician => "clinician",
            Role::Ml => "ml",
            Role::Admin => "admin",
        }
    }
}

/// A role name that is not one of ours (e.g. a row written by a newer version).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected one of pacs, clinician, ml, admin")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_fail() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(role.to_string(), role.as_str());
        }
        assert!("Admin".parse::<Role>().is_err(), "names are exact");
        assert!("root".parse::<Role>().is_err());
    }
}
