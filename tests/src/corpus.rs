//! A corpus of broken DICOM uploads, generated in code from valid Part 10 files (explicit
//! VR little endian, as dicom-samples writes them): truncations, seeded flips of header
//! bytes, huge declared lengths, wrong magic, missing or odd file meta, empty files and
//! noise. Each case is built so that a correct archive must refuse it (it never cuts at
//! an element boundary, where the result could be a valid, shorter data set).

/// One broken upload.
#[derive(Debug, Clone)]
pub struct Broken {
    /// What was done, e.g. `CT0001.dcm truncated at 1234`.
    pub name: String,
    /// The bytes to send as a Part 10 file (STOW-RS part).
    pub file: Vec<u8>,
    /// The bytes to send as a C-STORE data set (after the file meta), for cases that have
    /// a DIMSE form; the command uses [`Broken::sop_class`] / [`Broken::sop_instance`].
    pub data_set: Option<Vec<u8>>,
    pub sop_class: String,
    pub sop_instance: String,
}

/// A seeded SplitMix64: reproducible without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// One element header found by [`elements`].
#[derive(Debug, Clone, Copy)]
pub struct Element {
    pub group: u16,
    pub element: u16,
    /// Offset of the tag.
    pub start: usize,
    /// Offset and size (2 or 4) of the length field.
    pub len_at: usize,
    pub len_size: usize,
    /// Offset of the value and its declared length (`u32::MAX`: undefined).
    pub value_at: usize,
    pub len: u32,
}

fn u16_le(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn u32_le(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The element headers of a Part 10 explicit VR little endian file, file meta included,
/// in file order, descending into sequences and items, up to and including Pixel Data.
/// `None` if `file` is not such a file.
pub fn elements(file: &[u8]) -> Option<Vec<Element>> {
    if file.get(128..132)? != b"DICM" {
        return None;
    }
    let mut out = Vec::new();
    let mut at = 132;
    while at + 8 <= file.len() {
        let group = u16_le(file, at)?;
        let element = u16_le(file, at + 2)?;
        let (len_at, len_size, len) = if group == 0xFFFE {
            (at + 4, 4, u32_le(file, at + 4)?)
        } else {
            match file.get(at + 4..at + 6)? {
                b"OB" | b"OD" | b"OF" | b"OL" | b"OV" | b"OW" | b"SQ" | b"SV" | b"UC" | b"UN"
                | b"UR" | b"UT" | b"UV" => (at + 8, 4, u32_le(file, at + 8)?),
                _ => (at + 6, 2, u32::from(u16_le(file, at + 6)?)),
            }
        };
        let value_at = len_at + len_size;
        let e = Element {
            group,
            element,
            start: at,
            len_at,
            len_size,
            value_at,
            len,
        };
        out.push(e);
        if (group, element) == (0x7FE0, 0x0010) {
            break;
        }
        let container = group == 0xFFFE || file.get(at + 4..at + 6) == Some(b"SQ");
        at = if container || len == u32::MAX {
            value_at
        } else {
            value_at + len as usize
        };
    }
    Some(out)
}

/// Offset of the first data set byte (after the file meta group).
pub fn data_set_start(elements: &[Element]) -> Option<usize> {
    elements.iter().find(|e| e.group != 0x0002).map(|e| e.start)
}

/// Meta (group 0002) with `ts` as Transfer Syntax UID, the group length recomputed.
fn with_transfer_syntax(file: &[u8], elements: &[Element], ts: &str) -> Option<Vec<u8>> {
    let start = data_set_start(elements)?;
    let ts_elem = elements
        .iter()
        .find(|e| (e.group, e.element) == (0x0002, 0x0010))?;
    let mut value = ts.as_bytes().to_vec();
    if value.len() % 2 == 1 {
        value.push(0);
    }
    let mut out = file.get(..ts_elem.len_at)?.to_vec();
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(&value);
    out.extend_from_slice(file.get(ts_elem.value_at + ts_elem.len as usize..start)?);
    // (0002,0000) UL is the first meta element: value at 140..144.
    let group_len = (out.len() - 144) as u32;
    out.get_mut(140..144)?
        .copy_from_slice(&group_len.to_le_bytes());
    out.extend_from_slice(file.get(start..)?);
    Some(out)
}

/// The broken variants of one valid file (`name` for messages), `seed` for the random
/// choices. Empty if `file` is not an explicit VR little endian Part 10 file.
pub fn broken_variants(name: &str, file: &[u8], seed: u64) -> Vec<Broken> {
    let Some(elements) = elements(file) else {
        return Vec::new();
    };
    let Some(ds_start) = data_set_start(&elements) else {
        return Vec::new();
    };
    let meta_value = |g: u16, e: u16| {
        elements
            .iter()
            .find(|x| (x.group, x.element) == (g, e))
            .and_then(|x| file.get(x.value_at..x.value_at + x.len as usize))
            .map(|v| {
                String::from_utf8_lossy(v)
                    .trim_end_matches(['\0', ' '])
                    .to_owned()
            })
            .unwrap_or_default()
    };
    let sop_class = meta_value(0x0002, 0x0002);
    let sop_instance = meta_value(0x0002, 0x0003);
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    let mut push = |what: String, bytes: Vec<u8>, dimse: bool| {
        let data_set = (dimse && bytes.len() >= ds_start).then(|| bytes[ds_start..].to_vec());
        out.push(Broken {
            name: format!("{name} {what}"),
            file: bytes,
            data_set,
            sop_class: sop_class.clone(),
            sop_instance: sop_instance.clone(),
        });
    };

    // Truncations: inside headers and values (never on an element boundary), in the
    // preamble and magic, and inside Pixel Data.
    let mut offsets = vec![1, 64, 128, 130, 133, 136, 141];
    let inner: Vec<&Element> = elements.iter().filter(|e| e.start >= ds_start).collect();
    for (i, e) in inner.iter().enumerate() {
        if i % 3 == 0 {
            offsets.push(e.start + 1 + rng.below(e.value_at - e.start - 1));
        }
        if e.len >= 2 && e.len != u32::MAX && e.group != 0xFFFE && i % 2 == 0 {
            let len = (e.len as usize).min(file.len() - e.value_at);
            if len >= 2 {
                offsets.push(e.value_at + 1 + rng.below(len - 1));
            }
        }
    }
    for e in elements.iter().filter(|e| e.group == 0x0002).step_by(2) {
        offsets.push(e.value_at - 1);
    }
    offsets.extend([file.len() - 1, file.len() - 2, file.len() - 1000]);
    offsets.sort_unstable();
    offsets.dedup();
    for off in offsets.into_iter().filter(|&o| o > 0 && o < file.len()) {
        push(format!("truncated at {off}"), file[..off].to_vec(), true);
    }

    // Seeded flips of header bytes: the top byte of a length (declares far more, or a
    // little less, than is there), and of the magic.
    let flippable: Vec<&Element> = elements
        .iter()
        .filter(|e| e.start >= ds_start && e.len != u32::MAX && e.group != 0xFFFE)
        .collect();
    for _ in 0..12 {
        let e = flippable[rng.below(flippable.len())];
        let mut bytes = file.to_vec();
        let top = e.len_at + e.len_size - 1;
        let mask = 0x80 | (rng.next_u64() as u8 & 0x7F);
        bytes[top] ^= mask;
        push(
            format!(
                "length of ({:04X},{:04X}) flipped ^{mask:#04x}",
                e.group, e.element
            ),
            bytes,
            true,
        );
    }
    for _ in 0..2 {
        let at = 128 + rng.below(4);
        let mut bytes = file.to_vec();
        bytes[at] ^= 1 << rng.below(8);
        push(format!("magic byte {at} flipped"), bytes, false);
    }

    // Huge declared lengths: in Pixel Data, in a sequence, in a new first element, and the
    // nine-byte data set that took 2 GB before the guard.
    for e in elements.iter().filter(|e| {
        e.start >= ds_start && e.len_size == 4 && e.group != 0xFFFE && e.len != u32::MAX
    }) {
        let mut bytes = file.to_vec();
        bytes[e.len_at..e.len_at + 4].copy_from_slice(&0x7FFF_FFF0u32.to_le_bytes());
        push(
            format!("({:04X},{:04X}) declares 0x7FFFFFF0", e.group, e.element),
            bytes,
            true,
        );
    }
    let mut bomb = file[..ds_start].to_vec();
    bomb.extend_from_slice(&[0x08, 0x00, 0x05, 0x00, b'U', b'T', 0, 0]);
    bomb.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    bomb.extend_from_slice(&file[ds_start..]);
    push("first element declares 0xFFFFFFF0".to_owned(), bomb, true);
    let mut nine = file[..ds_start].to_vec();
    nine.extend_from_slice(&[0x10, 0x00, 0x10, 0x00, b'O', b'B', 0, 0, 0, 0, 0, 0x80, 0]);
    push("nine-byte data set declaring 2 GiB".to_owned(), nine, true);

    // Wrong magic, missing meta, unknown transfer syntax.
    let mut wrong = file.to_vec();
    wrong[128..132].copy_from_slice(b"DICN");
    push("magic DICN".to_owned(), wrong, false);
    let mut no_meta = file[..132].to_vec();
    no_meta.extend_from_slice(&file[ds_start..]);
    push("without file meta".to_owned(), no_meta, false);
    push("bare data set".to_owned(), file[ds_start..].to_vec(), false);
    if let Some(bytes) = with_transfer_syntax(file, &elements, "1.2.3.4.999.1") {
        push("unknown transfer syntax".to_owned(), bytes, false);
    }
    out
}

/// The whole corpus for a set of valid files: every file's variants, plus an empty file
/// and seeded noise (bare, and behind a valid-looking preamble and magic).
pub fn broken_corpus(files: &[(String, Vec<u8>)], seed: u64) -> Vec<Broken> {
    let mut rng = Rng::new(seed ^ 0xA5A5);
    let mut out: Vec<Broken> = files
        .iter()
        .enumerate()
        .flat_map(|(i, (name, bytes))| broken_variants(name, bytes, seed.wrapping_add(i as u64)))
        .collect();
    let (sop_class, sop_instance) = out
        .first()
        .map(|b| (b.sop_class.clone(), b.sop_instance.clone()))
        .unwrap_or_default();
    let other = |name: &str, file: Vec<u8>, data_set: Option<Vec<u8>>| Broken {
        name: name.to_owned(),
        file,
        data_set,
        sop_class: sop_class.clone(),
        sop_instance: sop_instance.clone(),
    };
    out.push(other("empty file", Vec::new(), Some(Vec::new())));
    for n in [1, 7, 200, 5000] {
        let noise = rng.bytes(n);
        out.push(other(
            &format!("{n} bytes of noise"),
            noise.clone(),
            Some(noise),
        ));
    }
    let mut dicm = vec![0u8; 128];
    dicm.extend_from_slice(b"DICM");
    dicm.extend(rng.bytes(3000));
    out.push(other("magic then noise", dicm, None));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let path = crate::workspace_root().join("dicom-samples/studies/studies/0001_CT/CT0001.dcm");
        std::fs::read(path).unwrap()
    }

    #[test]
    fn the_corpus_has_every_kind_and_never_cuts_on_an_element_boundary() {
        let file = sample();
        let elements = elements(&file).unwrap();
        assert_eq!(
            elements.last().map(|e| (e.group, e.element)),
            Some((0x7FE0, 0x0010))
        );
        let boundaries: Vec<usize> = elements.iter().map(|e| e.start).collect();
        let corpus = broken_corpus(&[("CT0001.dcm".to_owned(), file.clone())], 7);
        for kind in [
            "truncated at",
            "flipped",
            "declares 0x7FFFFFF0",
            "2 GiB",
            "magic DICN",
            "without file meta",
            "unknown transfer syntax",
            "empty file",
            "noise",
        ] {
            assert!(corpus.iter().any(|b| b.name.contains(kind)), "no {kind}");
        }
        for b in corpus.iter().filter(|b| b.name.contains("truncated at")) {
            assert!(
                !boundaries.contains(&b.file.len()) && b.file.len() < file.len(),
                "{}",
                b.name
            );
        }
        // Seeded: the same corpus every time.
        let again = broken_corpus(&[("CT0001.dcm".to_owned(), file)], 7);
        assert!(corpus.iter().zip(&again).all(|(a, b)| a.file == b.file));
    }
}
