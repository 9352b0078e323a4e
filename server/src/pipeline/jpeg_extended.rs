//! A decoder for greyscale JPEG sequential DCT with Huffman coding at 8 or 12 bits per
//! sample (ITU-T T.81 processes 1, 2 and 4): what DICOM's JPEG Extended transfer syntax
//! (1.2.840.10008.1.2.4.51) carries, typically 12-bit radiographs and older CT and MR.
//!
//! dicom-pixeldata 0.10 decodes JPEG with jpeg-decoder, which has no 12-bit DCT, and no
//! maintained pure-Rust crate has one; without this radserve would accept such instances
//! (the SCP must, the syntax is negotiated for the 8-bit case too) and store them, but could
//! neither render nor analyse them. Progressive, lossless (handled by dicom-pixeldata),
//! hierarchical and arithmetic-coded streams and colour images are refused with a clear
//! error.
//!
//! The inverse DCT is the separable floating-point one; its results are within ±1 of
//! libjpeg's integer transform (checked against dcmtk's `dcmdjpeg` in `decode.rs`).

use std::sync::OnceLock;

/// Why a JPEG stream could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JpegError {
    #[error("not a JPEG stream: it does not start with an SOI marker")]
    NotJpeg,
    #[error("the JPEG stream ends early ({0})")]
    Truncated(&'static str),
    #[error("invalid JPEG stream: {0}")]
    Invalid(String),
    #[error("unsupported JPEG stream: {0}")]
    Unsupported(String),
}

/// A decoded greyscale image: `samples` row-major, `0..2^precision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GreyImage {
    pub rows: usize,
    pub columns: usize,
    /// Bits per sample: 8 or 12.
    pub precision: u8,
    pub samples: Vec<u16>,
}

/// Natural (row-major) position of the k-th coefficient in zig-zag order (T.81 figure A.6).
const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// Padding bytes the bit reader may invent past the entropy-coded data before the stream
/// counts as cut short: an encoder pads only the last byte, so a few suffice for any
/// block the data really holds.
const MAX_INVENTED_BYTES: usize = 8;

/// Largest image decoded (pixels): well above a large DX detector (4,300²) or a mammogram,
/// and a bound on the memory a corrupt or hostile header can ask for.
pub const MAX_PIXELS: usize = 8192 * 8192;

/// Decodes `data`, a complete JPEG stream that must be `rows` × `columns` (the DICOM
/// header's size).
pub fn decode(data: &[u8], rows: usize, columns: usize) -> Result<GreyImage, JpegError> {
    if data.len() < 2 || data[0] != 0xFF || data[1] != 0xD8 {
        return Err(JpegError::NotJpeg);
    }
    if rows.saturating_mul(columns) > MAX_PIXELS {
        return Err(JpegError::Unsupported(format!(
            "a {rows}×{columns} image: at most {MAX_PIXELS} pixels are decoded"
        )));
    }
    let mut stream = Stream {
        data,
        position: 2,
        quantisation: [None; 4],
        dc_tables: Default::default(),
        ac_tables: Default::default(),
        frame: None,
        restart_interval: 0,
        image: None,
    };
    loop {
        let marker = match stream.next_marker() {
            Ok(marker) => marker,
            // Some encoders leave out the EOI after a complete scan; what was decoded stands.
            Err(JpegError::Truncated(_)) if stream.image.is_some() => break,
            Err(e) => return Err(e),
        };
        match marker {
            0xD9 => break,
            0xC0 | 0xC1 => stream.read_frame(marker, rows, columns)?,
            0xC2 | 0xC6 | 0xCA | 0xCE => {
                return Err(JpegError::Unsupported("progressive DCT".into()));
            }
            0xC3 | 0xC7 | 0xCB | 0xCF => {
                return Err(JpegError::Unsupported(
                    "lossless JPEG (decoded elsewhere)".into(),
                ));
            }
            0xC5 => return Err(JpegError::Unsupported("hierarchical JPEG".into())),
            0xC9 | 0xCD => return Err(JpegError::Unsupported("arithmetic coding".into())),
            0xC4 => stream.read_huffman_tables()?,
            0xDB => stream.read_quantisation_tables()?,
            0xDD => {
                let segment = stream.segment()?;
                if segment.len() != 2 {
                    return Err(JpegError::Invalid("DRI segment is not 2 bytes".into()));
                }
                stream.restart_interval = usize::from(u16::from_be_bytes([segment[0], segment[1]]));
            }
            0xDA => stream.read_scan()?,
            0xDC => return Err(JpegError::Unsupported("a DNL marker".into())),
            0xD8 => return Err(JpegError::Invalid("a second SOI marker".into())),
            0xD0..=0xD7 => {
                return Err(JpegError::Invalid("a restart marker outside a scan".into()));
            }
            // APPn, COM and anything else with a length: skipped.
            _ => {
                stream.segment()?;
            }
        }
    }
    stream
        .image
        .ok_or_else(|| JpegError::Invalid("no scan before the EOI marker".into()))
}

/// A Huffman table in T.81 annex F's form (F.2.2.3): per code length the largest code,
/// the smallest code and where its values start.
#[derive(Debug, Clone)]
struct HuffmanTable {
    max_code: [i32; 17],
    min_code: [i32; 17],
    first_value: [usize; 17],
    values: Vec<u8>,
}

impl HuffmanTable {
    fn new(counts: &[u8; 16], values: Vec<u8>) -> Result<Self, JpegError> {
        let mut table = HuffmanTable {
            max_code: [-1; 17],
            min_code: [0; 17],
            first_value: [0; 17],
            values,
        };
        let (mut code, mut index) = (0i32, 0usize);
        for length in 1..=16 {
            let count = i32::from(counts[length - 1]);
            table.first_value[length] = index;
            table.min_code[length] = code;
            code += count;
            index += count as usize;
            if count > 0 {
                table.max_code[length] = code - 1;
            }
            // Codes of this length must fit in `length` bits.
            if code > 1 << length {
                return Err(JpegError::Invalid(
                    "a Huffman table with too many codes".into(),
                ));
            }
            code <<= 1;
        }
        Ok(table)
    }

    fn decode(&self, bits: &mut BitReader) -> Result<u8, JpegError> {
        let mut code = 0i32;
        for length in 1..=16 {
            code = (code << 1) | bits.bits(1)? as i32;
            if code <= self.max_code[length] {
                let index = self.first_value[length] + (code - self.min_code[length]) as usize;
                return Ok(self.values[index]);
            }
        }
        Err(JpegError::Invalid("a code not in the Huffman table".into()))
    }
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    precision: u8,
    rows: usize,
    columns: usize,
    component_id: u8,
    quantisation_table: usize,
}

struct Stream<'a> {
    data: &'a [u8],
    position: usize,
    /// In zig-zag order, as stored.
    quantisation: [Option<[u16; 64]>; 4],
    dc_tables: [Option<HuffmanTable>; 4],
    ac_tables: [Option<HuffmanTable>; 4],
    frame: Option<Frame>,
    restart_interval: usize,
    image: Option<GreyImage>,
}

impl<'a> Stream<'a> {
    fn byte(&mut self) -> Result<u8, JpegError> {
        let byte = *self
            .data
            .get(self.position)
            .ok_or(JpegError::Truncated("looking for a marker"))?;
        self.position += 1;
        Ok(byte)
    }

    /// The next marker's code, skipping fill bytes (0xFF) before it.
    fn next_marker(&mut self) -> Result<u8, JpegError> {
        if self.byte()? != 0xFF {
            return Err(JpegError::Invalid(format!(
                "expected a marker at byte {}",
                self.position - 1
            )));
        }
        loop {
            match self.byte()? {
                0xFF => continue,
                0x00 => return Err(JpegError::Invalid("a stuffed byte outside a scan".into())),
                code => return Ok(code),
            }
        }
    }

    /// The body of a marker segment (after its length).
    fn segment(&mut self) -> Result<&'a [u8], JpegError> {
        let high = self.byte()?;
        let low = self.byte()?;
        let length = usize::from(u16::from_be_bytes([high, low]));
        if length < 2 {
            return Err(JpegError::Invalid("a segment length below 2".into()));
        }
        let start = self.position;
        let end = start + length - 2;
        if end > self.data.len() {
            return Err(JpegError::Truncated("inside a marker segment"));
        }
        self.position = end;
        Ok(&self.data[start..end])
    }

    fn read_quantisation_tables(&mut self) -> Result<(), JpegError> {
        let mut segment = self.segment()?;
        let mut tables = Vec::new();
        while let Some((&precision_and_id, rest)) = segment.split_first() {
            let (wide, id) = (precision_and_id >> 4, usize::from(precision_and_id & 0x0F));
            if id > 3 || wide > 1 {
                return Err(JpegError::Invalid(
                    "a DQT table id above 3 or a bad precision".into(),
                ));
            }
            let width = if wide == 1 { 2 } else { 1 };
            if rest.len() < 64 * width {
                return Err(JpegError::Truncated("inside a quantisation table"));
            }
            let mut table = [0u16; 64];
            for (k, entry) in table.iter_mut().enumerate() {
                *entry = if wide == 1 {
                    u16::from_be_bytes([rest[2 * k], rest[2 * k + 1]])
                } else {
                    u16::from(rest[k])
                };
            }
            tables.push((id, table));
            segment = &rest[64 * width..];
        }
        for (id, table) in tables {
            self.quantisation[id] = Some(table);
        }
        Ok(())
    }

    fn read_huffman_tables(&mut self) -> Result<(), JpegError> {
        let mut segment = self.segment()?;
        let mut tables = Vec::new();
        while let Some((&class_and_id, rest)) = segment.split_first() {
            let (class, id) = (class_and_id >> 4, usize::from(class_and_id & 0x0F));
            if class > 1 || id > 3 {
                return Err(JpegError::Invalid(
                    "a DHT class above 1 or a table id above 3".into(),
                ));
            }
            let counts: [u8; 16] = rest
                .get(..16)
                .and_then(|c| c.try_into().ok())
                .ok_or(JpegError::Truncated("inside a Huffman table"))?;
            let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
            let values = rest
                .get(16..16 + total)
                .ok_or(JpegError::Truncated("inside a Huffman table"))?
                .to_vec();
            tables.push((class, id, HuffmanTable::new(&counts, values)?));
            segment = &rest[16 + total..];
        }
        for (class, id, table) in tables {
            if class == 0 {
                self.dc_tables[id] = Some(table);
            } else {
                self.ac_tables[id] = Some(table);
            }
        }
        Ok(())
    }

    fn read_frame(&mut self, marker: u8, rows: usize, columns: usize) -> Result<(), JpegError> {
        if self.frame.is_some() {
            return Err(JpegError::Invalid("a second frame header".into()));
        }
        let segment = self.segment()?;
        if segment.len() < 6 {
            return Err(JpegError::Truncated("inside the frame header"));
        }
        let precision = segment[0];
        let height = usize::from(u16::from_be_bytes([segment[1], segment[2]]));
        let width = usize::from(u16::from_be_bytes([segment[3], segment[4]]));
        let components = segment[5];
        match (marker, precision) {
            (0xC0, 8) | (0xC1, 8 | 12) => {}
            _ => {
                return Err(JpegError::Unsupported(format!(
                    "{precision}-bit samples in a {} frame",
                    if marker == 0xC0 {
                        "baseline"
                    } else {
                        "extended"
                    }
                )));
            }
        }
        if components != 1 {
            return Err(JpegError::Unsupported(format!(
                "{components} components (only greyscale is decoded here)"
            )));
        }
        if segment.len() != 9 {
            return Err(JpegError::Invalid(
                "a frame header of the wrong length".into(),
            ));
        }
        if height == 0 {
            return Err(JpegError::Unsupported(
                "a height given by a DNL marker".into(),
            ));
        }
        if (height, width) != (rows, columns) {
            return Err(JpegError::Invalid(format!(
                "the JPEG frame is {height}×{width}, the DICOM header says {rows}×{columns}"
            )));
        }
        let quantisation_table = usize::from(segment[8]);
        if quantisation_table > 3 {
            return Err(JpegError::Invalid("a quantisation table id above 3".into()));
        }
        self.frame = Some(Frame {
            precision,
            rows: height,
            columns: width,
            component_id: segment[6],
            quantisation_table,
        });
        Ok(())
    }

    fn read_scan(&mut self) -> Result<(), JpegError> {
        let frame = self
            .frame
            .ok_or_else(|| JpegError::Invalid("a scan before the frame header".into()))?;
        if self.image.is_some() {
            return Err(JpegError::Invalid(
                "a second scan of a greyscale image".into(),
            ));
        }
        let segment = self.segment()?;
        if segment.len() != 6 || segment[0] != 1 {
            return Err(JpegError::Invalid(
                "a scan header that is not one component's".into(),
            ));
        }
        let (component, tables) = (segment[1], segment[2]);
        let (start, end, approximation) = (segment[3], segment[4], segment[5]);
        if component != frame.component_id {
            return Err(JpegError::Invalid(
                "a scan of a component the frame does not have".into(),
            ));
        }
        if (start, end, approximation) != (0, 63, 0) {
            return Err(JpegError::Invalid(
                "a sequential scan must cover coefficients 0–63 with no approximation".into(),
            ));
        }
        let missing = |what: &str| JpegError::Invalid(format!("the scan uses an undefined {what}"));
        let dc = self.dc_tables[usize::from(tables >> 4) & 3]
            .as_ref()
            .ok_or_else(|| missing("DC Huffman table"))?;
        let ac = self.ac_tables[usize::from(tables & 0x0F) & 3]
            .as_ref()
            .ok_or_else(|| missing("AC Huffman table"))?;
        let quantisation = self.quantisation[frame.quantisation_table]
            .ok_or_else(|| missing("quantisation table"))?;

        let block_columns = frame.columns.div_ceil(8);
        let block_rows = frame.rows.div_ceil(8);
        let blocks = block_rows * block_columns;
        let mut samples = vec![0u16; frame.rows * frame.columns];
        let mut bits = BitReader::new(self.data, self.position);
        let mut prediction = 0i32;
        let mut coefficients = [0i32; 64];
        let mut pixels = [0u16; 64];
        let level_shift = 1i32 << (frame.precision - 1);
        let max_sample = (1i32 << frame.precision) - 1;
        let mut expected_restart = 0u8;
        for block in 0..blocks {
            if self.restart_interval > 0 && block > 0 && block % self.restart_interval == 0 {
                bits.restart(expected_restart)?;
                expected_restart = (expected_restart + 1) % 8;
                prediction = 0;
            }
            decode_block(
                &mut bits,
                dc,
                ac,
                &mut prediction,
                &quantisation,
                &mut coefficients,
            )?;
            inverse_dct(&coefficients, level_shift, max_sample, &mut pixels);
            let (block_row, block_column) = (block / block_columns, block % block_columns);
            for y in 0..8 {
                let row = block_row * 8 + y;
                if row >= frame.rows {
                    break;
                }
                let first = block_column * 8;
                let count = 8.min(frame.columns - first);
                let target = row * frame.columns + first;
                samples[target..target + count].copy_from_slice(&pixels[y * 8..y * 8 + count]);
            }
        }
        self.position = bits.end_of_scan();
        self.image = Some(GreyImage {
            rows: frame.rows,
            columns: frame.columns,
            precision: frame.precision,
            samples,
        });
        Ok(())
    }
}

/// Reads the entropy-coded segment bit by bit, removing stuffed zero bytes; at a marker
/// (or the end of the data) it invents zero bytes, as T.81 lets a decoder do for the
/// last byte's padding, but only a few.
struct BitReader<'a> {
    data: &'a [u8],
    position: usize,
    /// Bits not yet used, from the top.
    accumulator: u32,
    available: u32,
    at_marker: bool,
    invented: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8], position: usize) -> Self {
        BitReader {
            data,
            position,
            accumulator: 0,
            available: 0,
            at_marker: false,
            invented: 0,
        }
    }

    fn fill(&mut self) -> Result<(), JpegError> {
        while self.available <= 24 {
            let byte = if self.at_marker {
                None
            } else {
                match (
                    self.data.get(self.position),
                    self.data.get(self.position + 1),
                ) {
                    (Some(0xFF), Some(0x00)) => {
                        self.position += 2;
                        Some(0xFF)
                    }
                    (Some(0xFF), _) | (None, _) => {
                        self.at_marker = true;
                        None
                    }
                    (Some(&byte), _) => {
                        self.position += 1;
                        Some(byte)
                    }
                }
            };
            let byte = match byte {
                Some(byte) => byte,
                None => {
                    self.invented += 1;
                    if self.invented > MAX_INVENTED_BYTES {
                        return Err(JpegError::Truncated("inside the entropy-coded data"));
                    }
                    0
                }
            };
            self.accumulator |= u32::from(byte) << (24 - self.available);
            self.available += 8;
        }
        Ok(())
    }

    /// The next `count` bits (1..=16) as an unsigned number.
    fn bits(&mut self, count: u32) -> Result<u32, JpegError> {
        if self.available < count {
            self.fill()?;
        }
        let value = self.accumulator >> (32 - count);
        self.accumulator <<= count;
        self.available -= count;
        Ok(value)
    }

    /// Drops the partial byte and expects restart marker RSTn.
    fn restart(&mut self, n: u8) -> Result<(), JpegError> {
        self.accumulator = 0;
        self.available = 0;
        self.at_marker = false;
        self.invented = 0;
        while self.data.get(self.position) == Some(&0xFF)
            && self.data.get(self.position + 1) == Some(&0xFF)
        {
            self.position += 1;
        }
        match (
            self.data.get(self.position),
            self.data.get(self.position + 1),
        ) {
            (Some(0xFF), Some(&marker)) if marker == 0xD0 + n => {
                self.position += 2;
                Ok(())
            }
            (None, _) | (_, None) => Err(JpegError::Truncated("before a restart marker")),
            _ => Err(JpegError::Invalid(format!(
                "restart marker RST{n} missing at byte {}",
                self.position
            ))),
        }
    }

    /// Where the data after the scan starts: the next marker that is not a stuffed byte.
    fn end_of_scan(&self) -> usize {
        let mut position = self.position;
        while position + 1 < self.data.len() {
            if self.data[position] == 0xFF && self.data[position + 1] != 0x00 {
                return position;
            }
            position += 1;
        }
        self.data.len()
    }
}

/// T.81 F.12: a `size`-bit magnitude category value as a signed number.
fn extend(value: u32, size: u32) -> i32 {
    let value = value as i32;
    if size == 0 {
        0
    } else if value < 1 << (size - 1) {
        value - (1 << size) + 1
    } else {
        value
    }
}

/// One 8×8 block's dequantised coefficients, in natural order.
fn decode_block(
    bits: &mut BitReader,
    dc: &HuffmanTable,
    ac: &HuffmanTable,
    prediction: &mut i32,
    quantisation: &[u16; 64],
    coefficients: &mut [i32; 64],
) -> Result<(), JpegError> {
    coefficients.fill(0);
    let size = u32::from(dc.decode(bits)?);
    if size > 16 {
        return Err(JpegError::Invalid("a DC difference over 16 bits".into()));
    }
    let difference = if size == 0 {
        0
    } else {
        extend(bits.bits(size)?, size)
    };
    *prediction = prediction
        .checked_add(difference)
        .ok_or_else(|| JpegError::Invalid("a DC value out of range".into()))?;
    coefficients[0] = prediction.saturating_mul(i32::from(quantisation[0]));
    let mut k = 1;
    while k < 64 {
        let run_size = ac.decode(bits)?;
        let (run, size) = (usize::from(run_size >> 4), u32::from(run_size & 0x0F));
        if size == 0 {
            if run == 15 {
                k += 16;
                continue;
            }
            break;
        }
        k += run;
        if k > 63 {
            return Err(JpegError::Invalid(
                "AC coefficients past the end of a block".into(),
            ));
        }
        let value = extend(bits.bits(size)?, size);
        coefficients[ZIGZAG[k]] = value.saturating_mul(i32::from(quantisation[k]));
        k += 1;
    }
    Ok(())
}

/// `COSINES[x][u]` = C(u)/2 · cos((2x+1)uπ/16).
fn cosines() -> &'static [[f32; 8]; 8] {
    static TABLE: OnceLock<[[f32; 8]; 8]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = [[0f32; 8]; 8];
        for (x, row) in table.iter_mut().enumerate() {
            for (u, entry) in row.iter_mut().enumerate() {
                let scale = if u == 0 {
                    std::f64::consts::FRAC_1_SQRT_2
                } else {
                    1.0
                };
                let angle = (2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / 16.0;
                *entry = (scale / 2.0 * angle.cos()) as f32;
            }
        }
        table
    })
}

/// Separable 2-D inverse DCT (T.81 A.3.3), level-shifted and clamped to the sample range.
fn inverse_dct(coefficients: &[i32; 64], level_shift: i32, max_sample: i32, out: &mut [u16; 64]) {
    let cos = cosines();
    // Along each row of coefficients (horizontal frequency u → column x).
    let mut rows = [0f32; 64];
    for v in 0..8 {
        let line = &coefficients[v * 8..v * 8 + 8];
        if line.iter().all(|&c| c == 0) {
            continue;
        }
        for x in 0..8 {
            rows[v * 8 + x] = (0..8).map(|u| cos[x][u] * line[u] as f32).sum();
        }
    }
    // Then down each column (vertical frequency v → row y).
    for y in 0..8 {
        for x in 0..8 {
            let value: f32 = (0..8).map(|v| cos[y][v] * rows[v * 8 + x]).sum();
            // Saturating: a corrupt stream's coefficients can be anything.
            let sample = (value.round() as i32)
                .saturating_add(level_shift)
                .clamp(0, max_sample);
            out[y * 8 + x] = sample as u16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_baseline_or_extended_greyscale_stream() {
        assert_eq!(decode(b"GIF89a", 8, 8), Err(JpegError::NotJpeg));
        assert_eq!(
            decode(&[0xFF, 0xD8], 8, 8),
            Err(JpegError::Truncated("looking for a marker"))
        );
        // A progressive frame header.
        let progressive = [
            0xFF, 0xD8, 0xFF, 0xC2, 0x00, 0x0B, 12, 0, 8, 0, 8, 1, 1, 0x11, 0,
        ];
        assert!(matches!(
            decode(&progressive, 8, 8),
            Err(JpegError::Unsupported(_))
        ));
        // An extended frame header with three components.
        let colour = [
            0xFF, 0xD8, 0xFF, 0xC1, 0x00, 0x11, 12, 0, 8, 0, 8, 3, 1, 0x11, 0, 2, 0x11, 0, 3, 0x11,
            0,
        ];
        assert!(matches!(
            decode(&colour, 8, 8),
            Err(JpegError::Unsupported(_))
        ));
        // 12-bit samples claimed by a baseline frame.
        let baseline_12 = [
            0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x0B, 12, 0, 8, 0, 8, 1, 1, 0x11, 0,
        ];
        assert!(matches!(
            decode(&baseline_12, 8, 8),
            Err(JpegError::Unsupported(_))
        ));
        // A size that is not the DICOM header's.
        let extended = [
            0xFF, 0xD8, 0xFF, 0xC1, 0x00, 0x0B, 12, 0, 8, 0, 8, 1, 1, 0x11, 0,
        ];
        assert!(matches!(
            decode(&extended, 16, 8),
            Err(JpegError::Invalid(_))
        ));
        // The right size, then EOI without a scan.
        let mut no_scan = extended.to_vec();
        no_scan.extend_from_slice(&[0xFF, 0xD9]);
        assert!(matches!(decode(&no_scan, 8, 8), Err(JpegError::Invalid(_))));
        // A scan before any table.
        let mut no_tables = extended.to_vec();
        no_tables.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 1, 1, 0x00, 0, 63, 0, 0x00]);
        assert!(matches!(
            decode(&no_tables, 8, 8),
            Err(JpegError::Invalid(_))
        ));
    }

    #[test]
    fn huffman_tables_with_more_codes_than_bits_are_refused() {
        // Three codes of length 1 cannot exist.
        let mut counts = [0u8; 16];
        counts[0] = 3;
        assert!(HuffmanTable::new(&counts, vec![0, 1, 2]).is_err());
        counts[0] = 2;
        assert!(HuffmanTable::new(&counts, vec![0, 1]).is_ok());
    }

    #[test]
    fn the_inverse_dct_of_a_dc_only_block_is_flat() {
        // DC coefficient 8·d gives every sample d above the level shift.
        let mut coefficients = [0i32; 64];
        coefficients[0] = 8 * 100;
        let mut out = [0u16; 64];
        inverse_dct(&coefficients, 2048, 4095, &mut out);
        assert!(out.iter().all(|&s| s == 2148), "{out:?}");
        // Clamped at both ends of the 12-bit range.
        coefficients[0] = 8 * 5000;
        inverse_dct(&coefficients, 2048, 4095, &mut out);
        assert!(out.iter().all(|&s| s == 4095));
        coefficients[0] = -8 * 5000;
        inverse_dct(&coefficients, 2048, 4095, &mut out);
        assert!(out.iter().all(|&s| s == 0));
    }

    #[test]
    fn extend_maps_magnitude_categories_to_signed_values() {
        assert_eq!(extend(0, 1), -1);
        assert_eq!(extend(1, 1), 1);
        assert_eq!(extend(0b00, 2), -3);
        assert_eq!(extend(0b11, 2), 3);
        assert_eq!(extend(0b0111_1111_1111, 12), -2048);
    }

    /// A greyscale test card: gradients, a sharp-edged disc and hashed noise.
    fn test_card(rows: usize, columns: usize) -> Vec<u8> {
        (0..rows * columns)
            .map(|i| {
                let (y, x) = ((i / columns) as i64, (i % columns) as i64);
                let disc = if (x - 20).pow(2) + (y - 17).pow(2) < 100 {
                    90
                } else {
                    0
                };
                let noise = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 59;
                (2 * x + y + disc + noise as i64).clamp(0, 255) as u8
            })
            .collect()
    }

    #[test]
    fn decodes_8_bit_streams_with_restart_markers_and_partial_blocks_like_jpeg_decoder() {
        // 45×61: neither edge a multiple of 8. Restart every 3 blocks, and once without.
        let (rows, columns) = (45, 61);
        let card = test_card(rows, columns);
        for restart_interval in [0u16, 3] {
            let mut stream = Vec::new();
            let mut encoder = jpeg_encoder::Encoder::new(&mut stream, 85);
            encoder.set_restart_interval(restart_interval);
            encoder
                .encode(
                    &card,
                    columns as u16,
                    rows as u16,
                    jpeg_encoder::ColorType::Luma,
                )
                .expect("jpeg-encoder encodes");
            if restart_interval > 0 {
                assert!(stream.windows(2).any(|w| w == [0xFF, 0xD3]), "RST3 written");
            }
            let ours = decode(&stream, rows, columns).expect("decodes");
            let reference = jpeg_decoder::Decoder::new(&stream[..])
                .decode()
                .expect("jpeg-decoder decodes");
            assert_eq!(
                (ours.rows, ours.columns, ours.precision),
                (rows, columns, 8)
            );
            assert_eq!(ours.samples.len(), reference.len());
            let worst = ours
                .samples
                .iter()
                .zip(&reference)
                .map(|(&a, &b)| a.abs_diff(u16::from(b)))
                .max();
            // Both round a floating or integer IDCT: at most one grey level apart.
            assert!(
                worst <= Some(1),
                "restart {restart_interval}: off by {worst:?}"
            );
            // Without its EOI marker the stream still decodes, to the same image.
            let without_eoi = &stream[..stream.len() - 2];
            assert_eq!(decode(without_eoi, rows, columns).as_ref(), Ok(&ours));
            // A stream cut in its entropy-coded data is refused, not padded out.
            let cut = &stream[..stream.len() / 2];
            assert!(
                matches!(decode(cut, rows, columns), Err(JpegError::Truncated(_))),
                "restart {restart_interval}: {:?}",
                decode(cut, rows, columns).err()
            );
        }
    }

    #[test]
    fn corrupt_streams_give_errors_or_images_never_a_panic() {
        let (rows, columns) = (24, 40);
        let mut stream = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut stream, 75);
        encoder.set_restart_interval(2);
        encoder
            .encode(
                &test_card(rows, columns),
                columns as u16,
                rows as u16,
                jpeg_encoder::ColorType::Luma,
            )
            .expect("jpeg-encoder encodes");
        // The same stream claimed as 12-bit extended: the 12-bit path on the same data.
        let sof = stream
            .windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .expect("a baseline frame header");
        let mut extended = stream.clone();
        extended[sof + 1] = 0xC1;
        extended[sof + 4] = 12;
        assert!(decode(&extended, rows, columns).is_ok());
        // Every byte replaced by a few values, and every truncation: Ok or Err, nothing else
        // (a panic fails the test).
        let mut outcomes = [0usize; 2];
        for original in [&stream, &extended] {
            for position in 0..original.len() {
                for value in [0x00, 0xFF, original[position] ^ 0x10, 0xD9] {
                    let mut corrupt = original.clone();
                    corrupt[position] = value;
                    outcomes[usize::from(decode(&corrupt, rows, columns).is_ok())] += 1;
                }
                let _ = decode(&original[..position], rows, columns);
            }
        }
        // Entropy-coded bytes changed mostly still decode; header bytes mostly do not.
        assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
        // A header asking for more than MAX_PIXELS is refused before any allocation.
        assert!(matches!(
            decode(&stream, 65_535, 65_535),
            Err(JpegError::Unsupported(_))
        ));
    }
}
