//! Minimal `.npy` reading/writing for 2-D little-endian float32 / int32
//! matrices (what the datasets and hnswlib exchange).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};

pub struct Matrix<T> {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<T>,
}

impl<T: Copy> Matrix<T> {
    pub fn row(&self, i: usize) -> &[T] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

fn header(bytes: &[u8]) -> anyhow::Result<(String, usize)> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("not a .npy file (bad magic)");
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => bail!("unsupported .npy version {v}"),
    };
    let end = start
        .checked_add(len)
        .filter(|&e| e <= bytes.len())
        .context("truncated .npy header")?;
    Ok((
        String::from_utf8_lossy(&bytes[start..end]).into_owned(),
        end,
    ))
}

fn shape(h: &str) -> anyhow::Result<(usize, usize)> {
    let s = h
        .split("'shape':")
        .nth(1)
        .context("no shape in .npy header")?;
    let inner = s
        .split('(')
        .nth(1)
        .and_then(|x| x.split(')').next())
        .context("bad shape")?;
    let dims: Vec<usize> = inner
        .split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| x.trim().parse())
        .collect::<Result<_, _>>()?;
    match dims[..] {
        [r, c] => Ok((r, c)),
        [r] => Ok((r, 1)),
        _ => bail!("expected a 1-D or 2-D array, got shape {dims:?}"),
    }
}

fn read<T: bytemuck::Pod>(path: &Path, descr: &str) -> anyhow::Result<Matrix<T>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (h, off) = header(&bytes)?;
    if !h.contains(&format!("'descr': '{descr}'")) {
        bail!("{}: expected dtype {descr}, header is {h}", path.display());
    }
    if h.contains("'fortran_order': True") {
        bail!("{}: Fortran order is not supported", path.display());
    }
    let (rows, cols) = shape(&h)?;
    let body = &bytes[off..];
    let want = rows * cols * std::mem::size_of::<T>();
    if body.len() < want {
        bail!(
            "{}: {} data bytes, expected {want}",
            path.display(),
            body.len()
        );
    }
    Ok(Matrix {
        rows,
        cols,
        data: bytemuck::pod_collect_to_vec(&body[..want]),
    })
}

pub fn read_f32(path: &Path) -> anyhow::Result<Matrix<f32>> {
    read(path, "<f4")
}

pub fn read_i32(path: &Path) -> anyhow::Result<Matrix<i32>> {
    read(path, "<i4")
}

fn write<T: bytemuck::Pod>(path: &Path, descr: &str, m: &Matrix<T>) -> anyhow::Result<()> {
    let mut h = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}, {}), }}",
        m.rows, m.cols
    );
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&(h.len() as u16).to_le_bytes())?;
    f.write_all(h.as_bytes())?;
    f.write_all(bytemuck::cast_slice(&m.data))?;
    Ok(())
}

pub fn write_f32(path: &Path, m: &Matrix<f32>) -> anyhow::Result<()> {
    write(path, "<f4", m)
}

pub fn write_i32(path: &Path, m: &Matrix<i32>) -> anyhow::Result<()> {
    write(path, "<i4", m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.npy");
        let m = Matrix {
            rows: 3,
            cols: 2,
            data: vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0],
        };
        write_f32(&p, &m).unwrap();
        let r = read_f32(&p).unwrap();
        assert_eq!((r.rows, r.cols, r.data), (3, 2, m.data));
        assert!(read_i32(&p).is_err());
    }
}
