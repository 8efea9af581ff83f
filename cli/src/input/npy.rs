//! NumPy `.npy` reader for 2-D little-endian float32 arrays in C order — what
//! `np.save("v.npy", a.astype("<f4"))` writes.
//!
//! Format: magic `\x93NUMPY`, major/minor version bytes, header length (u16
//! for 1.0, u32 for 2.0/3.0), then a Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (1000, 128), }`, then
//! the raw data. Anything else is rejected with a message saying how to
//! convert the array.

use std::io::{Read, Seek, SeekFrom};

use super::{InputError, f32s_le, invalid};

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// numpy writes headers of a few hundred bytes; a bigger one means a damaged
/// file, and the cap keeps a garbage length from allocating gigabytes.
const MAX_HEADER: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub rows: u64,
    pub dim: usize,
    /// Byte offset of the first value.
    pub data_offset: u64,
}

pub struct NpyReader<R> {
    r: R,
    header: Header,
    pos: u64,
    buf: Vec<u8>,
}

impl<R: Read + Seek> NpyReader<R> {
    /// Parses and checks the header, and that the file holds exactly the
    /// declared data (a truncated copy fails here, not halfway through a load).
    pub fn open(mut r: R) -> Result<Self, InputError> {
        let header = read_header(&mut r)?;
        let len = r.seek(SeekFrom::End(0))?;
        let need = header
            .rows
            .checked_mul(header.dim as u64)
            .and_then(|n| n.checked_mul(4))
            .ok_or_else(|| invalid("npy shape is too large"))?;
        let have = len.saturating_sub(header.data_offset);
        if have < need {
            return Err(invalid(format!(
                "npy file is truncated: the header declares {} x {} float32 ({need} bytes) but only {have} bytes of data follow",
                header.rows, header.dim
            )));
        }
        if have > need {
            return Err(invalid(format!(
                "npy file has {} bytes after the {} x {} array the header declares",
                have - need,
                header.rows,
                header.dim
            )));
        }
        r.seek(SeekFrom::Start(header.data_offset))?;
        Ok(NpyReader {
            r,
            header,
            pos: 0,
            buf: Vec::new(),
        })
    }

    pub fn rows(&self) -> u64 {
        self.header.rows
    }

    pub fn dim(&self) -> usize {
        self.header.dim
    }

    /// Index of the row the next `next_row` returns.
    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn seek_row(&mut self, row: u64) -> Result<(), InputError> {
        let row = row.min(self.header.rows);
        let off = self.header.data_offset + row * self.header.dim as u64 * 4;
        self.r.seek(SeekFrom::Start(off))?;
        self.pos = row;
        Ok(())
    }

    pub fn next_row(&mut self) -> Result<Option<Vec<f32>>, InputError> {
        if self.pos >= self.header.rows {
            return Ok(None);
        }
        self.buf.resize(self.header.dim * 4, 0);
        self.r.read_exact(&mut self.buf).map_err(|e| {
            invalid(format!(
                "npy row {}: {e} (was the file truncated while reading?)",
                self.pos
            ))
        })?;
        let mut v = Vec::with_capacity(self.header.dim);
        f32s_le(&self.buf, &mut v);
        self.pos += 1;
        Ok(Some(v))
    }
}

/// Reads the magic, version and header dict; leaves `r` at the data.
pub fn read_header<R: Read>(r: &mut R) -> Result<Header, InputError> {
    let mut pre = [0u8; 8];
    read_exact_or(r, &mut pre, "file is too short to be a .npy file")?;
    if &pre[..6] != MAGIC {
        return Err(invalid("not a .npy file: bad magic (expected \\x93NUMPY)"));
    }
    let (major, minor) = (pre[6], pre[7]);
    let (len, prefix) = match major {
        1 => {
            let mut b = [0u8; 2];
            read_exact_or(r, &mut b, "npy header length is missing")?;
            (u16::from_le_bytes(b) as usize, 10)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            read_exact_or(r, &mut b, "npy header length is missing")?;
            (u32::from_le_bytes(b) as usize, 12)
        }
        _ => {
            return Err(invalid(format!(
                "unsupported .npy format version {major}.{minor} (supported: 1.0, 2.0, 3.0)"
            )));
        }
    };
    if len > MAX_HEADER {
        return Err(invalid(format!(
            "npy header length {len} is implausible; the file is damaged"
        )));
    }
    let mut text = vec![0u8; len];
    read_exact_or(r, &mut text, "npy header is truncated")?;
    // Versions 1 and 2 are latin-1/ASCII, 3 is UTF-8; every key and value we
    // accept is ASCII, so UTF-8 decoding covers all three.
    let text = std::str::from_utf8(&text).map_err(|_| invalid("npy header is not text"))?;
    let (descr, fortran, shape) = parse_dict(text)?;
    if descr != "<f4" {
        let hint = if descr == ">f4" {
            "it is big-endian float32"
        } else {
            "kindex needs little-endian float32 ('<f4')"
        };
        return Err(invalid(format!(
            "npy dtype {descr:?} is not supported: {hint}; convert with np.save(path, a.astype('<f4'))"
        )));
    }
    if fortran {
        return Err(invalid(
            "npy array is in Fortran (column-major) order; kindex needs C order: \
             np.save(path, np.ascontiguousarray(a))",
        ));
    }
    let [rows, dim] = shape[..] else {
        return Err(invalid(format!(
            "npy array has shape {shape:?}; kindex needs a 2-D array (rows, dimension)"
        )));
    };
    if dim == 0 || dim > u32::MAX as u64 {
        return Err(invalid(format!("npy array has dimension {dim}")));
    }
    Ok(Header {
        rows,
        dim: dim as usize,
        data_offset: (prefix + len) as u64,
    })
}

fn read_exact_or<R: Read>(r: &mut R, buf: &mut [u8], msg: &str) -> Result<(), InputError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => invalid(msg),
        _ => InputError::Io(e),
    })
}

/// The three values of the header dict: descr, fortran_order, shape.
fn parse_dict(text: &str) -> Result<(String, bool, Vec<u64>), InputError> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    p.expect(b'{')?;
    loop {
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.expect(b':')?;
        match key.as_str() {
            "descr" => descr = Some(p.string()?),
            "fortran_order" => fortran = Some(p.boolean()?),
            "shape" => shape = Some(p.tuple()?),
            other => return Err(invalid(format!("npy header has an unknown key {other:?}"))),
        }
        if !p.eat(b',') {
            p.expect(b'}')?;
            break;
        }
    }
    p.skip_ws();
    if p.i != p.s.len() {
        return Err(invalid("npy header has text after the dict"));
    }
    let missing = |k: &str| invalid(format!("npy header lacks {k:?}"));
    Ok((
        descr.ok_or_else(|| missing("descr"))?,
        fortran.ok_or_else(|| missing("fortran_order"))?,
        shape.ok_or_else(|| missing("shape"))?,
    ))
}

/// Just enough of Python literal syntax for npy headers.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), InputError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(invalid(format!(
                "npy header is malformed: expected {:?} at byte {}",
                c as char, self.i
            )))
        }
    }

    fn string(&mut self) -> Result<String, InputError> {
        self.skip_ws();
        let q = match self.s.get(self.i) {
            Some(&q @ (b'\'' | b'"')) => q,
            _ => {
                return Err(invalid(format!(
                    "npy header is malformed: expected a string at byte {}",
                    self.i
                )));
            }
        };
        let start = self.i + 1;
        let len = self.s[start..]
            .iter()
            .position(|&c| c == q)
            .ok_or_else(|| invalid("npy header has an unterminated string"))?;
        self.i = start + len + 1;
        Ok(String::from_utf8_lossy(&self.s[start..start + len]).into_owned())
    }

    fn word(&mut self) -> &str {
        self.skip_ws();
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i].is_ascii_alphanumeric() {
            self.i += 1;
        }
        std::str::from_utf8(&self.s[start..self.i]).unwrap_or_default()
    }

    fn boolean(&mut self) -> Result<bool, InputError> {
        match self.word() {
            "True" => Ok(true),
            "False" => Ok(false),
            w => Err(invalid(format!(
                "npy header: fortran_order must be True or False, got {w:?}"
            ))),
        }
    }

    fn tuple(&mut self) -> Result<Vec<u64>, InputError> {
        self.expect(b'(')?;
        let mut out = Vec::new();
        loop {
            if self.eat(b')') {
                return Ok(out);
            }
            let w = self.word();
            // Python 2 era files may write long integers as `1000L`.
            let n = w.strip_suffix('L').unwrap_or(w);
            let n = n
                .parse::<u64>()
                .map_err(|_| invalid(format!("npy header: shape entry {w:?} is not a number")))?;
            out.push(n);
            if !self.eat(b',') {
                self.expect(b')')?;
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    /// Builds a .npy file the way numpy does (header padded to 64 bytes).
    pub(crate) fn npy_bytes(
        major: u8,
        descr: &str,
        fortran: bool,
        shape: &str,
        data: &[f32],
    ) -> Vec<u8> {
        let f = if fortran { "True" } else { "False" };
        let mut dict = format!("{{'descr': '{descr}', 'fortran_order': {f}, 'shape': {shape}, }}");
        let prefix = if major == 1 { 10 } else { 12 };
        while (prefix + dict.len() + 1) % 64 != 0 {
            dict.push(' ');
        }
        dict.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend([major, 0]);
        if major == 1 {
            out.extend((dict.len() as u16).to_le_bytes());
        } else {
            out.extend((dict.len() as u32).to_le_bytes());
        }
        out.extend(dict.as_bytes());
        for x in data {
            out.extend(x.to_le_bytes());
        }
        out
    }

    fn open(bytes: Vec<u8>) -> Result<NpyReader<Cursor<Vec<u8>>>, InputError> {
        NpyReader::open(Cursor::new(bytes))
    }

    fn err(bytes: Vec<u8>) -> String {
        match open(bytes) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn reads_all_versions() {
        let data: Vec<f32> = (0..6).map(|x| x as f32 * 0.5).collect();
        for major in [1, 2, 3] {
            let mut r = open(npy_bytes(major, "<f4", false, "(3, 2)", &data)).unwrap();
            assert_eq!((r.rows(), r.dim()), (3, 2));
            assert_eq!(r.next_row().unwrap(), Some(vec![0.0, 0.5]));
            assert_eq!(r.position(), 1);
            r.seek_row(2).unwrap();
            assert_eq!(r.next_row().unwrap(), Some(vec![2.0, 2.5]));
            assert_eq!(r.next_row().unwrap(), None);
        }
    }

    #[test]
    fn empty_array_and_long_suffix() {
        let r = open(npy_bytes(1, "<f4", false, "(0, 8)", &[])).unwrap();
        assert_eq!((r.rows(), r.dim()), (0, 8));
        let r = open(npy_bytes(1, "<f4", false, "(1L, 2L)", &[1.0, 2.0])).unwrap();
        assert_eq!(r.rows(), 1);
    }

    #[test]
    fn rejects_malformed_files() {
        let d = [0.0f32; 4];
        let mut bad_magic = npy_bytes(1, "<f4", false, "(2, 2)", &d);
        bad_magic[1] = b'X';
        let mut bad_version = npy_bytes(1, "<f4", false, "(2, 2)", &d);
        bad_version[6] = 4;
        let mut truncated = npy_bytes(1, "<f4", false, "(2, 2)", &d);
        truncated.truncate(truncated.len() - 3);
        let mut trailing = npy_bytes(1, "<f4", false, "(2, 2)", &d);
        trailing.extend([0, 0, 0, 0]);
        let mut short_header = npy_bytes(1, "<f4", false, "(2, 2)", &d);
        short_header.truncate(40);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (bad_magic, "bad magic"),
            (b"\x93NUM".to_vec(), "too short"),
            (bad_version, "version 4.0"),
            (
                npy_bytes(1, "<f8", false, "(2, 2)", &[0.0; 8]),
                "\"<f8\" is not supported",
            ),
            (npy_bytes(1, ">f4", false, "(2, 2)", &d), "big-endian"),
            (npy_bytes(1, "<i4", false, "(2, 2)", &d), "\"<i4\""),
            (npy_bytes(1, "<f4", true, "(2, 2)", &d), "Fortran"),
            (npy_bytes(1, "<f4", false, "(4,)", &d), "2-D"),
            (npy_bytes(1, "<f4", false, "(1, 2, 2)", &d), "2-D"),
            (npy_bytes(1, "<f4", false, "(4, 0)", &[]), "dimension 0"),
            (npy_bytes(1, "<f4", false, "(a, 2)", &d), "not a number"),
            (truncated, "truncated"),
            (trailing, "4 bytes after"),
            (short_header, "header is truncated"),
            (
                npy_bytes(1, "<f4", false, "(99999999999999999, 4000000)", &d),
                "too large",
            ),
        ];
        for (bytes, want) in cases {
            let e = err(bytes);
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
    }

    #[test]
    fn rejects_odd_headers() {
        let cases = [
            (
                "{'descr': '<f4', 'shape': (1, 1), }",
                "lacks \"fortran_order\"",
            ),
            (
                "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (1, 1)}",
                "True or False",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1), 'x': 1}",
                "unknown key",
            ),
            ("{'descr': '<f4, 'fortran_order': False}", "malformed"),
            ("['descr']", "malformed"),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1)} junk",
                "after the dict",
            ),
        ];
        for (dict, want) in cases {
            let mut bytes = MAGIC.to_vec();
            bytes.extend([1, 0]);
            bytes.extend((dict.len() as u16).to_le_bytes());
            bytes.extend(dict.as_bytes());
            bytes.extend([0u8; 4]);
            let e = err(bytes);
            assert!(e.contains(want), "{dict}: {e:?} should contain {want:?}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(mut r) = open(bytes) {
                while let Ok(Some(_)) = r.next_row() {}
            }
        }

        #[test]
        fn mutated_valid_files_never_panic(
            flips in proptest::collection::vec((0usize..200, any::<u8>()), 0..8),
            cut in 0usize..200,
        ) {
            let mut bytes = npy_bytes(1, "<f4", false, "(3, 4)", &[1.0; 12]);
            for (i, b) in flips {
                let n = bytes.len();
                bytes[i % n] = b;
            }
            bytes.truncate(bytes.len().saturating_sub(cut % 8));
            if let Ok(mut r) = open(bytes) {
                while let Ok(Some(_)) = r.next_row() {}
            }
        }
    }
}
