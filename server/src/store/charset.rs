//! SpecificCharacterSet (0008,0005) decoding, including ISO 2022 code extensions.
//!
//! dicom-rs decodes text with the first value of SpecificCharacterSet only and does no
//! escape-sequence switching, so `\ISO 2022 IR 87` (Japanese), `\ISO 2022 IR 149`
//! (Korean) or `\ISO 2022 IR 58` (Chinese GB2312) come out wrong there. This module takes
//! the raw bytes of a text value and the whole (multi-valued) SpecificCharacterSet and
//! does PS3.5 §6.1 properly: the code tables come from `encoding_rs`; the G0/G1 switching
//! on escape sequences, and the return to the initial state at control characters and at
//! PN/multi-value delimiters (PS3.5 §6.1.2.5.3), is ours.
//!
//! Undecodable bytes become U+FFFD rather than errors: an index must accept whatever a
//! modality sends, and a replacement character in a name is better than a refused study.

use encoding_rs::Encoding;

/// What is designated to G0 (bytes 0x21..=0x7E).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum G0 {
    /// ISO-IR 6 (ASCII).
    Ascii,
    /// ISO-IR 14, JIS X 0201 Romaji (ASCII with ¥ and ‾).
    JisRoman,
    /// ISO-IR 87, JIS X 0208 (two bytes).
    Jis0208,
    /// ISO-IR 159, JIS X 0212 (two bytes).
    Jis0212,
}

/// What is designated to G1 (bytes 0xA0..=0xFF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum G1 {
    None,
    /// ISO-IR 100, Latin-1 (decoded directly: byte value = code point).
    Latin1,
    /// Another single-byte ISO 8859 part (or TIS-620 / JIS X 0201 katakana).
    Single(&'static Encoding),
    /// ISO-IR 13, JIS X 0201 katakana.
    Katakana,
    /// ISO-IR 149, KS X 1001 (two bytes, EUC-KR).
    Ksx1001,
    /// ISO-IR 58, GB 2312 (two bytes, EUC-CN ⊂ GBK).
    Gb2312,
}

/// A parsed SpecificCharacterSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharacterSet {
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// A whole-value encoding without code extensions (UTF-8, GB18030, GBK, ISO 8859-x,
    /// Shift-JIS for ISO_IR 13).
    Whole(&'static Encoding),
    /// Latin-1 without code extensions (encoding_rs maps the label to windows-1252).
    Latin1,
    /// ISO 2022 code extensions with this initial state.
    Iso2022 { g0: G0, g1: G1 },
}

/// Why a SpecificCharacterSet was not understood (the caller falls back to the default
/// repertoire with replacement characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported SpecificCharacterSet term {0:?}")]
pub struct UnsupportedCharset(pub String);

fn single_byte(term: &str) -> Option<G1> {
    use encoding_rs::*;
    Some(match term {
        "100" => G1::Latin1,
        "101" => G1::Single(ISO_8859_2),
        "109" => G1::Single(ISO_8859_3),
        "110" => G1::Single(ISO_8859_4),
        "144" => G1::Single(ISO_8859_5),
        "127" => G1::Single(ISO_8859_6),
        "126" => G1::Single(ISO_8859_7),
        "138" => G1::Single(ISO_8859_8),
        "148" => G1::Single(WINDOWS_1254),
        "203" => G1::Single(ISO_8859_15),
        "166" => G1::Single(WINDOWS_874),
        _ => return None,
    })
}

impl CharacterSet {
    /// The default repertoire (no SpecificCharacterSet).
    pub fn default_repertoire() -> CharacterSet {
        CharacterSet {
            kind: Kind::Iso2022 {
                g0: G0::Ascii,
                g1: G1::None,
            },
        }
    }

    /// Parses the values of SpecificCharacterSet (already split on `\`, possibly with an
    /// empty first value).
    pub fn from_values<S: AsRef<str>>(values: &[S]) -> Result<CharacterSet, UnsupportedCharset> {
        let terms: Vec<&str> = values.iter().map(|v| v.as_ref().trim()).collect();
        let first = terms.first().copied().unwrap_or("");
        let extensions = terms.len() > 1 || first.starts_with("ISO 2022");
        // Whole-value encodings: no code extensions allowed with these (PS3.3 C.12.1.1.2).
        match first {
            "ISO_IR 192" => {
                return Ok(CharacterSet {
                    kind: Kind::Whole(encoding_rs::UTF_8),
                });
            }
            "GB18030" => {
                return Ok(CharacterSet {
                    kind: Kind::Whole(encoding_rs::GB18030),
                });
            }
            "GBK" => {
                return Ok(CharacterSet {
                    kind: Kind::Whole(encoding_rs::GBK),
                });
            }
            _ => {}
        }
        if !extensions {
            return match first {
                "" | "ISO_IR 6" => Ok(CharacterSet::default_repertoire()),
                "ISO_IR 100" => Ok(CharacterSet { kind: Kind::Latin1 }),
                // JIS X 0201: katakana in G1, Romaji in G0; Shift_JIS decodes both.
                "ISO_IR 13" => Ok(CharacterSet {
                    kind: Kind::Whole(encoding_rs::SHIFT_JIS),
                }),
                other => match other.strip_prefix("ISO_IR ").and_then(single_byte) {
                    Some(G1::Single(enc)) => Ok(CharacterSet {
                        kind: Kind::Whole(enc),
                    }),
                    _ => Err(UnsupportedCharset(other.to_owned())),
                },
            };
        }
        // Validate every term, and take the initial state from the first one.
        for term in &terms[1..] {
            parse_2022_term(term)?;
        }
        let (g0, g1) = match first {
            "" => (G0::Ascii, G1::None),
            t => {
                let (g0, g1) = parse_2022_term(t)?;
                (g0.unwrap_or(G0::Ascii), g1.unwrap_or(G1::None))
            }
        };
        Ok(CharacterSet {
            kind: Kind::Iso2022 { g0, g1 },
        })
    }

    /// Parses a raw SpecificCharacterSet value (`\`-separated), as found in a dataset.
    pub fn from_raw(value: &str) -> Result<CharacterSet, UnsupportedCharset> {
        let values: Vec<&str> = value.split('\\').collect();
        CharacterSet::from_values(&values)
    }

    /// Decodes a text value. `pn` marks a person name (`^` and `=` return to the initial
    /// state); `multi` marks a VR whose `\` separates values (all but ST, LT, UT).
    pub fn decode(&self, bytes: &[u8], pn: bool, multi: bool) -> String {
        match &self.kind {
            Kind::Whole(enc) => enc.decode_without_bom_handling(bytes).0.into_owned(),
            Kind::Latin1 => bytes.iter().map(|&b| char::from(b)).collect(),
            Kind::Iso2022 { g0, g1 } => decode_2022(bytes, *g0, *g1, pn, multi),
        }
    }
}

/// Maps an `ISO 2022 IR nnn` term to the sets it designates.
fn parse_2022_term(term: &str) -> Result<(Option<G0>, Option<G1>), UnsupportedCharset> {
    let err = || UnsupportedCharset(term.to_owned());
    let number = term.strip_prefix("ISO 2022 IR ").ok_or_else(err)?;
    Ok(match number {
        "6" => (Some(G0::Ascii), None),
        "13" => (Some(G0::JisRoman), Some(G1::Katakana)),
        "87" => (None, None),
        "159" => (None, None),
        "149" => (None, None),
        "58" => (None, None),
        n => (None, Some(single_byte(n).ok_or_else(err)?)),
    })
}

/// Decodes one two-byte character given as two bytes with the high bit set.
fn decode_pair(enc: &'static Encoding, prefix: &[u8], a: u8, b: u8, out: &mut String) {
    let mut buf = Vec::with_capacity(3);
    buf.extend_from_slice(prefix);
    buf.push(a | 0x80);
    buf.push(b | 0x80);
    out.push_str(&enc.decode_without_bom_handling(&buf).0);
}

fn decode_2022(bytes: &[u8], init_g0: G0, init_g1: G1, pn: bool, multi: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    let (mut g0, mut g1) = (init_g0, init_g1);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == 0x1B {
            // Escape sequence: designate a set to G0 or G1.
            let rest = &bytes[i + 1..];
            let designation: Option<(usize, Option<G0>, Option<G1>)> = match rest {
                [b'(', b'B', ..] => Some((2, Some(G0::Ascii), None)),
                [b'(', b'J', ..] => Some((2, Some(G0::JisRoman), None)),
                [b')', b'I', ..] => Some((2, None, Some(G1::Katakana))),
                [b'$', b'B', ..] => Some((2, Some(G0::Jis0208), None)),
                [b'$', b'(', b'D', ..] => Some((3, Some(G0::Jis0212), None)),
                [b'$', b')', b'C', ..] => Some((3, None, Some(G1::Ksx1001))),
                [b'$', b')', b'A', ..] => Some((3, None, Some(G1::Gb2312))),
                [b'-', f, ..] => {
                    let n = match f {
                        b'A' => "100",
                        b'B' => "101",
                        b'C' => "109",
                        b'D' => "110",
                        b'L' => "144",
                        b'G' => "127",
                        b'F' => "126",
                        b'H' => "138",
                        b'M' => "148",
                        b'b' => "203",
                        b'T' => "166",
                        _ => "",
                    };
                    single_byte(n).map(|s| (2, None, Some(s)))
                }
                _ => None,
            };
            match designation {
                Some((len, new_g0, new_g1)) => {
                    g0 = new_g0.unwrap_or(g0);
                    g1 = new_g1.unwrap_or(g1);
                    i += 1 + len;
                }
                None => {
                    out.push('\u{FFFD}');
                    i += 1;
                }
            }
            continue;
        }
        if b < 0x20 || b == 0x7F {
            // Control characters return to the initial state (PS3.5 6.1.2.5.3).
            out.push(char::from(b));
            g0 = init_g0;
            g1 = init_g1;
            i += 1;
            continue;
        }
        if b < 0x80 {
            match g0 {
                G0::Jis0208 | G0::Jis0212 => {
                    let Some(&b2) = bytes.get(i + 1).filter(|&&c| (0x21..0x7F).contains(&c)) else {
                        out.push('\u{FFFD}');
                        i += 1;
                        continue;
                    };
                    let prefix: &[u8] = if g0 == G0::Jis0212 { &[0x8F] } else { &[] };
                    decode_pair(encoding_rs::EUC_JP, prefix, b, b2, &mut out);
                    i += 2;
                }
                G0::Ascii | G0::JisRoman => {
                    let c = match (g0, b) {
                        (G0::JisRoman, 0x5C) => '¥',
                        (G0::JisRoman, 0x7E) => '‾',
                        _ => char::from(b),
                    };
                    out.push(c);
                    let delimiter = (pn && (b == b'^' || b == b'=')) || (multi && b == b'\\');
                    if delimiter {
                        g0 = init_g0;
                        g1 = init_g1;
                    }
                    i += 1;
                }
            }
            continue;
        }
        // High half: G1.
        match g1 {
            G1::None => {
                out.push('\u{FFFD}');
                i += 1;
            }
            G1::Latin1 => {
                out.push(char::from(b));
                i += 1;
            }
            G1::Single(enc) => {
                out.push_str(&enc.decode_without_bom_handling(&[b]).0);
                i += 1;
            }
            G1::Katakana => {
                out.push(match b {
                    0xA1..=0xDF => {
                        char::from_u32(0xFF61 + u32::from(b - 0xA1)).unwrap_or('\u{FFFD}')
                    }
                    _ => '\u{FFFD}',
                });
                i += 1;
            }
            G1::Ksx1001 | G1::Gb2312 => {
                let Some(&b2) = bytes.get(i + 1).filter(|&&c| c >= 0xA1) else {
                    out.push('\u{FFFD}');
                    i += 1;
                    continue;
                };
                let enc = if g1 == G1::Ksx1001 {
                    encoding_rs::EUC_KR
                } else {
                    encoding_rs::GBK
                };
                decode_pair(enc, &[], b, b2, &mut out);
                i += 2;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_pn(charset: &str, bytes: &[u8]) -> String {
        CharacterSet::from_raw(charset)
            .unwrap()
            .decode(bytes, true, true)
    }

    /// PS3.5 H.3.1: Japanese with ISO 2022 IR 87 (JIS X 0208 ideographic and phonetic).
    #[test]
    fn japanese_iso_2022_ir_87() {
        let bytes: &[u8] =
            b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B";
        assert_eq!(
            decode_pn("\\ISO 2022 IR 87", bytes),
            "Yamada^Tarou=山田^太郎=やまだ^たろう"
        );
    }

    /// PS3.5 H.3.2: Japanese with JIS X 0201 katakana in G1 and JIS X 0208.
    #[test]
    fn japanese_iso_2022_ir_13_and_87() {
        let bytes: &[u8] = b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3=\x1b$B;3ED\x1b(J^\x1b$BB@O:\x1b(J=\x1b$B$d$^$@\x1b(J^\x1b$B$?$m$&\x1b(J";
        assert_eq!(
            decode_pn("ISO 2022 IR 13\\ISO 2022 IR 87", bytes),
            "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"
        );
    }

    /// PS3.5 I.2: Korean with ISO 2022 IR 149 (KS X 1001 in G1).
    #[test]
    fn korean_iso_2022_ir_149() {
        let bytes: &[u8] = b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf";
        assert_eq!(
            decode_pn("\\ISO 2022 IR 149", bytes),
            "Hong^Gildong=洪^吉洞=홍^길동"
        );
    }

    /// PS3.5 K.2: Chinese with ISO 2022 IR 58 (GB 2312 in G1).
    #[test]
    fn chinese_iso_2022_ir_58() {
        let bytes: &[u8] = b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\x1b$)A\xd0\xa1\xb6\xab=";
        assert_eq!(
            decode_pn("\\ISO 2022 IR 58", bytes),
            "Zhang^XiaoDong=张^小东="
        );
    }

    /// PS3.5 J: GB18030 and UTF-8 as whole-value encodings.
    #[test]
    fn gb18030_and_utf8() {
        let gb = b"Wang^XiaoDong=\xcd\xf5^\xd0\xa1\xb6\xab=";
        assert_eq!(decode_pn("GB18030", gb), "Wang^XiaoDong=王^小东=");
        assert_eq!(
            decode_pn("ISO_IR 192", "Wang^XiaoDong=王^小东=".as_bytes()),
            "Wang^XiaoDong=王^小东="
        );
    }

    #[test]
    fn latin_and_default() {
        assert_eq!(decode_pn("ISO_IR 100", b"Nov\xe1k^Hans"), "Novák^Hans");
        assert_eq!(decode_pn("ISO 2022 IR 100", b"Nov\xe1k^Hans"), "Novák^Hans");
        assert_eq!(decode_pn("", b"Smith^John"), "Smith^John");
        // Bytes outside the declared repertoire are replaced, never an error.
        assert_eq!(decode_pn("", b"A\xe1"), "A\u{FFFD}");
        assert_eq!(decode_pn("ISO_IR 144", b"\xbb\xee\xda\xd8\xdd"), "Люкин");
        // Greek with code extensions: ESC - F designates ISO 8859-7 to G1.
        assert_eq!(
            decode_pn(
                "\\ISO 2022 IR 126",
                b"\x1b-F\xc4\xe9\xef\xed\xf5\xf3\xe9\xef\xf2"
            ),
            "Διονυσιος"
        );
    }

    #[test]
    fn truncated_and_unknown_input_is_replaced() {
        let cs = CharacterSet::from_raw("\\ISO 2022 IR 87").unwrap();
        assert_eq!(cs.decode(b"\x1b$B;", true, true), "\u{FFFD}");
        assert_eq!(cs.decode(b"\x1b", true, true), "\u{FFFD}");
        assert!(CharacterSet::from_raw("KLINGON").is_err());
        assert!(CharacterSet::from_raw("\\ISO 2022 IR 999").is_err());
    }
}
