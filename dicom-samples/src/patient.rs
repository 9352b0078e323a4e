//! Synthetic patients: identifiers with an issuer, names in Latin script or in Chinese
//! (with a romanised form), birth date and sex, and the character set each study is written in.

use chrono::{Datelike, NaiveDate};
use rand::Rng;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};

/// Assigning authority written as IssuerOfPatientID and used as the FHIR identifier system.
pub const PATIENT_ID_ISSUER: &str = "RADSERVE-DEMO-HOSPITAL";
/// FHIR identifier system URI of the same issuer.
pub const PATIENT_ID_SYSTEM: &str = "urn:oid:2.25.4224301201031992151317141001";

/// Administrative sex as DICOM writes it (PatientSex).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sex {
    #[serde(rename = "M")]
    Male,
    #[serde(rename = "F")]
    Female,
}

impl Sex {
    pub fn dicom_code(self) -> &'static str {
        match self {
            Sex::Male => "M",
            Sex::Female => "F",
        }
    }
    pub fn fhir_code(self) -> &'static str {
        match self {
            Sex::Male => "male",
            Sex::Female => "female",
        }
    }
}

/// A patient's name. Chinese names carry both the ideographic form and its pinyin, as a
/// Chinese hospital's PACS stores them (`Wang^Xiaodong=王^小东`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientName {
    pub family: String,
    pub given: String,
    /// Family and given name in Han characters, for Chinese patients.
    pub ideographic: Option<(String, String)>,
}

impl PatientName {
    /// The DICOM PN value: alphabetic group, then the ideographic group when there is one.
    pub fn to_dicom_pn(&self) -> String {
        match &self.ideographic {
            Some((family, given)) => format!("{}^{}={}^{}", self.family, self.given, family, given),
            None => format!("{}^{}", self.family, self.given),
        }
    }

    pub fn is_chinese(&self) -> bool {
        self.ideographic.is_some()
    }
}

/// How a study's text is encoded: the SpecificCharacterSet it is written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TextEncoding {
    /// `ISO_IR 100`, Latin alphabet No. 1 (accented Latin names).
    Latin1,
    /// `ISO_IR 192`, UTF-8.
    Utf8,
    /// `GB18030`, the Chinese national standard.
    Gb18030,
}

impl TextEncoding {
    pub fn specific_character_set(self) -> &'static str {
        match self {
            TextEncoding::Latin1 => "ISO_IR 100",
            TextEncoding::Utf8 => "ISO_IR 192",
            TextEncoding::Gb18030 => "GB18030",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Patient {
    /// PatientID as the PACS holds it (zero-padded medical record number).
    pub patient_id: String,
    /// The plain number behind `patient_id`; the EMR writes it in its own formats.
    pub mrn: u32,
    pub issuer: String,
    pub name: PatientName,
    pub birth_date: NaiveDate,
    pub sex: Sex,
}

impl Patient {
    /// Age in whole years on `date`, as DICOM's PatientAge (`nnnY`).
    pub fn age_on(&self, date: NaiveDate) -> String {
        let mut years = date.year() - self.birth_date.year();
        if (date.month(), date.day()) < (self.birth_date.month(), self.birth_date.day()) {
            years -= 1;
        }
        format!("{:03}Y", years.clamp(0, 999))
    }
}

const LATIN_FAMILY: &[&str] = &[
    "Müller",
    "Schmidt",
    "García",
    "Martínez",
    "Dubois",
    "Lefèvre",
    "Rossi",
    "Bianchi",
    "Smith",
    "Johnson",
    "Nielsen",
    "Øster",
    "Kowalski",
    "Novák",
    "O'Brien",
    "Van der Berg",
    "Jönsson",
    "Fernández",
    "Costa",
    "Brown",
];
const LATIN_GIVEN_MALE: &[&str] = &[
    "Hans", "José", "Pierre", "Luca", "John", "Lars", "Piotr", "Jan", "Seán", "Mikael", "Tomás",
];
const LATIN_GIVEN_FEMALE: &[&str] = &[
    "Anna", "María", "Hélène", "Giulia", "Mary", "Ingrid", "Zofia", "Eva", "Siobhán", "Åsa", "Inês",
];
/// (pinyin, Han) family names.
const CHINESE_FAMILY: &[(&str, &str)] = &[
    ("Wang", "王"),
    ("Li", "李"),
    ("Zhang", "张"),
    ("Liu", "刘"),
    ("Chen", "陈"),
    ("Yang", "杨"),
    ("Huang", "黄"),
    ("Zhao", "赵"),
    ("Zhou", "周"),
    ("Wu", "吴"),
];
/// (pinyin, Han) given names.
const CHINESE_GIVEN: &[(&str, &str)] = &[
    ("Xiaodong", "小东"),
    ("Wei", "伟"),
    ("Fang", "芳"),
    ("Jing", "静"),
    ("Lei", "磊"),
    ("Min", "敏"),
    ("Jun", "军"),
    ("Yan", "燕"),
    ("Hua", "华"),
    ("Jianguo", "建国"),
];

/// Draws a patient. `chinese` picks the name's script; the MRN is unique per `index`.
pub fn random_patient(rng: &mut impl Rng, index: usize, chinese: bool) -> Patient {
    let sex = if rng.random_bool(0.5) {
        Sex::Male
    } else {
        Sex::Female
    };
    let name = if chinese {
        let (family, family_han) = *CHINESE_FAMILY.choose(rng).expect("non-empty table");
        let (given, given_han) = *CHINESE_GIVEN.choose(rng).expect("non-empty table");
        PatientName {
            family: family.to_string(),
            given: given.to_string(),
            ideographic: Some((family_han.to_string(), given_han.to_string())),
        }
    } else {
        let given_table = match sex {
            Sex::Male => LATIN_GIVEN_MALE,
            Sex::Female => LATIN_GIVEN_FEMALE,
        };
        PatientName {
            family: LATIN_FAMILY
                .choose(rng)
                .expect("non-empty table")
                .to_string(),
            given: given_table
                .choose(rng)
                .expect("non-empty table")
                .to_string(),
            ideographic: None,
        }
    };
    // Unique per index (stride 37 > jitter 30); the zero-padded PatientID and the EMR's
    // unpadded MRN then differ only in formatting, as they do between real silos.
    let mrn = 1000 + (index as u32) * 37 + rng.random_range(0..30);
    let birth_date = NaiveDate::from_ymd_opt(
        rng.random_range(1935..2005),
        rng.random_range(1..=12),
        rng.random_range(1..=28),
    )
    .expect("day 1..=28 exists in every month");
    Patient {
        patient_id: format!("{mrn:08}"),
        mrn,
        issuer: PATIENT_ID_ISSUER.to_string(),
        name,
        birth_date,
        sex,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn chinese_pn_has_alphabetic_and_ideographic_groups() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let p = random_patient(&mut rng, 0, true);
        let pn = p.name.to_dicom_pn();
        let groups: Vec<&str> = pn.split('=').collect();
        assert_eq!(groups.len(), 2, "{pn}");
        assert!(groups[0].is_ascii() && groups[0].contains('^'));
        assert!(!groups[1].is_ascii() && groups[1].contains('^'));
    }

    #[test]
    fn patient_ids_are_unique_per_index() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let ids: std::collections::HashSet<String> = (0..500)
            .map(|i| random_patient(&mut rng, i, i % 3 == 0).patient_id)
            .collect();
        assert_eq!(ids.len(), 500);
    }

    #[test]
    fn age_counts_whole_years() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut p = random_patient(&mut rng, 0, false);
        p.birth_date = NaiveDate::from_ymd_opt(1960, 6, 15).unwrap();
        assert_eq!(
            p.age_on(NaiveDate::from_ymd_opt(2026, 6, 14).unwrap()),
            "065Y"
        );
        assert_eq!(
            p.age_on(NaiveDate::from_ymd_opt(2026, 6, 15).unwrap()),
            "066Y"
        );
    }
}
