//! JSON Lines reader: one `{"id": "...", "vector": [...], "payload": {...}}`
//! per line (`payload` optional; blank lines ignored).
//!
//! `open` makes one pass to count records and remember the byte offset of
//! every `stride`-th record, so `--start-row`/`--resume` can jump into the file
//! and the progress bar knows the total.

use std::io::{BufRead, Seek, SeekFrom};

use serde_json::Value;

use super::{InputError, invalid};

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub vector: Vec<f32>,
    pub payload_json: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: Value,
    vector: Vec<f64>,
    #[serde(default)]
    payload: Value,
}

pub struct JsonlReader<R> {
    r: R,
    rows: u64,
    stride: u64,
    /// (byte offset, 1-based line number) of records 0, stride, 2*stride, ...
    marks: Vec<(u64, u64)>,
    dim: Option<usize>,
    /// Index of the next record, and how many lines were consumed so far.
    pos: u64,
    line: u64,
    buf: Vec<u8>,
}

impl<R: BufRead + Seek> JsonlReader<R> {
    pub fn open(mut r: R, stride: usize) -> Result<Self, InputError> {
        let stride = stride.max(1) as u64;
        let (mut rows, mut line, mut offset) = (0u64, 0u64, 0u64);
        let mut marks = Vec::new();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = r.read_until(b'\n', &mut buf)?;
            if n == 0 {
                break;
            }
            line += 1;
            if !is_blank(&buf) {
                if rows % stride == 0 {
                    marks.push((offset, line));
                }
                rows += 1;
            }
            offset += n as u64;
        }
        r.seek(SeekFrom::Start(0))?;
        let mut me = JsonlReader {
            r,
            rows,
            stride,
            marks,
            dim: None,
            pos: 0,
            line: 0,
            buf,
        };
        // The dimension comes from the first record (checked again per row).
        if rows > 0 {
            me.dim = me.next_record()?.map(|rec| rec.vector.len());
            me.seek_row(0)?;
        }
        Ok(me)
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn dim(&self) -> Option<usize> {
        self.dim
    }

    pub fn seek_row(&mut self, row: u64) -> Result<(), InputError> {
        let row = row.min(self.rows);
        let Some(&(offset, line)) = self.marks.get((row / self.stride) as usize) else {
            // Past the last mark: only possible at the very end.
            self.r.seek(SeekFrom::End(0))?;
            self.pos = self.rows;
            return Ok(());
        };
        self.r.seek(SeekFrom::Start(offset))?;
        self.pos = row - row % self.stride;
        self.line = line - 1;
        while self.pos < row {
            self.next_line()?;
            self.pos += 1;
        }
        Ok(())
    }

    /// Moves to the next non-blank line; false at the end.
    fn next_line(&mut self) -> Result<bool, InputError> {
        loop {
            self.buf.clear();
            if self.r.read_until(b'\n', &mut self.buf)? == 0 {
                return Ok(false);
            }
            self.line += 1;
            if !is_blank(&self.buf) {
                return Ok(true);
            }
        }
    }

    pub fn next_record(&mut self) -> Result<Option<Record>, InputError> {
        if !self.next_line()? {
            return Ok(None);
        }
        let line_no = self.line;
        let at = |msg: String| invalid(format!("line {line_no}: {msg}"));
        let l: Line = serde_json::from_slice(&self.buf).map_err(|e| at(e.to_string()))?;
        let id = match l.id {
            Value::String(s) if s.is_empty() => return Err(at("id is empty".into())),
            Value::String(s) => s,
            Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
            other => {
                return Err(at(format!(
                    "id must be a string or an integer, got {other}"
                )));
            }
        };
        let payload_json = match l.payload {
            Value::Null => None,
            p @ Value::Object(_) => Some(p.to_string()),
            other => return Err(at(format!("payload must be a JSON object, got {other}"))),
        };
        if let Some(dim) = self.dim
            && l.vector.len() != dim
        {
            return Err(at(format!(
                "vector has {} dimensions, but the first record has {dim}",
                l.vector.len()
            )));
        }
        let vector = l.vector.iter().map(|&x| x as f32).collect();
        self.pos += 1;
        Ok(Some(Record {
            id,
            vector,
            payload_json,
        }))
    }
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn open(text: &str, stride: usize) -> Result<JsonlReader<Cursor<Vec<u8>>>, InputError> {
        JsonlReader::open(Cursor::new(text.as_bytes().to_vec()), stride)
    }

    fn read_all(text: &str) -> Result<Vec<Record>, InputError> {
        let mut r = open(text, 2)?;
        let mut out = Vec::new();
        while let Some(rec) = r.next_record()? {
            out.push(rec);
        }
        Ok(out)
    }

    const GOOD: &str = r#"{"id": "a", "vector": [1, 2], "payload": {"lang": "en"}}

{"id": 7, "vector": [3.5, 4]}
{"id": "c", "vector": [5, 6], "payload": null}
{"id": "d", "vector": [7, 8]}
"#;

    #[test]
    fn reads_records() {
        let recs = read_all(GOOD).unwrap();
        assert_eq!(recs.len(), 4);
        assert_eq!(recs[0].payload_json.as_deref(), Some(r#"{"lang":"en"}"#));
        assert_eq!(recs[1].id, "7");
        assert_eq!(recs[1].vector, vec![3.5, 4.0]);
        assert_eq!(recs[2].payload_json, None);
        assert!(read_all("").unwrap().is_empty());
    }

    #[test]
    fn seeks_to_any_row() {
        for stride in [1, 2, 3, 100] {
            let mut r = open(GOOD, stride).unwrap();
            assert_eq!((r.rows(), r.dim()), (4, Some(2)));
            for (row, id) in [(3, "d"), (1, "7"), (0, "a"), (2, "c")] {
                r.seek_row(row).unwrap();
                assert_eq!(
                    r.next_record().unwrap().unwrap().id,
                    id,
                    "stride {stride} row {row}"
                );
            }
            r.seek_row(4).unwrap();
            assert!(r.next_record().unwrap().is_none());
        }
    }

    #[test]
    fn rejects_bad_lines_with_line_numbers() {
        let cases = [
            (
                "{\"id\": \"a\", \"vector\": [1]}\n\n{\"id\": \"b\"}\n",
                "line 3: missing field `vector`",
            ),
            (
                "{\"id\": \"a\", \"vector\": [1, 2]}\n{\"id\": \"b\", \"vector\": [1]}\n",
                "line 2: vector has 1 dimensions",
            ),
            ("{\"id\": \"\", \"vector\": [1]}\n", "line 1: id is empty"),
            ("{\"id\": 1.5, \"vector\": [1]}\n", "id must be a string"),
            (
                "{\"id\": \"a\", \"vector\": [1], \"payload\": [1]}\n",
                "payload must be a JSON object",
            ),
            (
                "{\"id\": \"a\", \"vectors\": [1]}\n",
                "unknown field `vectors`",
            ),
            ("{\"id\": \"a\", \"vector\": [\"x\"]}\n", "line 1"),
            ("not json\n", "line 1"),
        ];
        for (text, want) in cases {
            let e = read_all(text).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
    }
}
