//! `.fvecs` reader (the TEXMEX / ANN-benchmarks format): every row is a
//! little-endian i32 dimension followed by that many little-endian f32s.
//!
//! All rows must share the first row's dimension, so the row count follows
//! from the file size and rows can be located without reading the ones before.

use std::io::{Read, Seek, SeekFrom};

use super::{InputError, f32s_le, invalid};

/// The engine's own upper bound; a larger "dimension" means this is not an
/// fvecs file (or not a float one: .ivecs / .bvecs).
const MAX_DIM: i32 = 65_536;

pub struct FvecsReader<R> {
    r: R,
    /// None for an empty file.
    dim: Option<usize>,
    rows: u64,
    pos: u64,
    buf: Vec<u8>,
}

impl<R: Read + Seek> FvecsReader<R> {
    pub fn open(mut r: R) -> Result<Self, InputError> {
        let len = r.seek(SeekFrom::End(0))?;
        r.seek(SeekFrom::Start(0))?;
        if len == 0 {
            return Ok(FvecsReader {
                r,
                dim: None,
                rows: 0,
                pos: 0,
                buf: Vec::new(),
            });
        }
        let mut head = [0u8; 4];
        r.read_exact(&mut head)
            .map_err(|_| invalid(format!("fvecs file is {len} bytes: too short for a row")))?;
        let d = i32::from_le_bytes(head);
        if !(1..=MAX_DIM).contains(&d) {
            return Err(invalid(format!(
                "fvecs row 0 declares dimension {d}; expected 1..={MAX_DIM} (is this an fvecs file?)"
            )));
        }
        let dim = d as usize;
        let row_bytes = 4 + 4 * dim as u64;
        if len % row_bytes != 0 {
            return Err(invalid(format!(
                "fvecs file is {len} bytes, not a multiple of the {row_bytes}-byte row size for dimension {dim} \
                 (truncated, or rows of different dimensions)"
            )));
        }
        r.seek(SeekFrom::Start(0))?;
        Ok(FvecsReader {
            r,
            dim: Some(dim),
            rows: len / row_bytes,
            pos: 0,
            buf: Vec::new(),
        })
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn dim(&self) -> Option<usize> {
        self.dim
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn seek_row(&mut self, row: u64) -> Result<(), InputError> {
        let row = row.min(self.rows);
        let dim = self.dim.unwrap_or(0) as u64;
        self.r.seek(SeekFrom::Start(row * (4 + 4 * dim)))?;
        self.pos = row;
        Ok(())
    }

    pub fn next_row(&mut self) -> Result<Option<Vec<f32>>, InputError> {
        let Some(dim) = self.dim else { return Ok(None) };
        if self.pos >= self.rows {
            return Ok(None);
        }
        self.buf.resize(4 + 4 * dim, 0);
        self.r
            .read_exact(&mut self.buf)
            .map_err(|e| invalid(format!("fvecs row {}: {e}", self.pos)))?;
        let d = i32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if d as i64 != dim as i64 {
            return Err(invalid(format!(
                "fvecs row {} declares dimension {d}, but the file's first row has {dim}",
                self.pos
            )));
        }
        let mut v = Vec::with_capacity(dim);
        f32s_le(&self.buf[4..], &mut v);
        self.pos += 1;
        Ok(Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn fvecs(rows: &[&[f32]]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in rows {
            out.extend((r.len() as i32).to_le_bytes());
            for x in *r {
                out.extend(x.to_le_bytes());
            }
        }
        out
    }

    fn read_all(bytes: Vec<u8>) -> Result<Vec<Vec<f32>>, InputError> {
        let mut r = FvecsReader::open(Cursor::new(bytes))?;
        let mut out = Vec::new();
        while let Some(v) = r.next_row()? {
            out.push(v);
        }
        Ok(out)
    }

    #[test]
    fn reads_rows_and_seeks() {
        let bytes = fvecs(&[&[1.0, 2.0], &[3.0, 4.0], &[5.0, 6.0]]);
        let mut r = FvecsReader::open(Cursor::new(bytes.clone())).unwrap();
        assert_eq!((r.rows(), r.dim()), (3, Some(2)));
        r.seek_row(2).unwrap();
        assert_eq!(r.next_row().unwrap(), Some(vec![5.0, 6.0]));
        assert_eq!(r.next_row().unwrap(), None);
        assert_eq!(read_all(bytes).unwrap().len(), 3);
        assert!(read_all(Vec::new()).unwrap().is_empty());
    }

    #[test]
    fn rejects_malformed_files() {
        let mut truncated = fvecs(&[&[1.0, 2.0], &[3.0, 4.0]]);
        truncated.pop();
        // Same total size as two 2-d rows, but the second row says 1.
        let mut mixed = fvecs(&[&[1.0, 2.0], &[3.0, 4.0]]);
        mixed[12..16].copy_from_slice(&1i32.to_le_bytes());
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (truncated, "not a multiple"),
            (mixed, "row 1 declares dimension 1"),
            (fvecs(&[&[1.0, 2.0], &[3.0]]), "not a multiple"),
            (fvecs(&[&[]]), "dimension 0"),
            ((-5i32).to_le_bytes().to_vec(), "dimension -5"),
            (1_000_000i32.to_le_bytes().to_vec(), "dimension 1000000"),
            (vec![1, 0], "too short"),
        ];
        for (bytes, want) in cases {
            let e = read_all(bytes).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
    }
}
