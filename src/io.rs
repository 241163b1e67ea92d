//! Reading and writing matrices as `.npy` (f32 or f64, C or Fortran order) or `.csv`,
//! chosen by the file extension. Writes go to a temporary file that is renamed into place,
//! so a failed write leaves no partial output behind.

use crate::error::{NsaError, Result};
use nalgebra::DMatrix;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Element type of a written `.npy` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpyDtype {
    /// `<f8`.
    F64,
    /// `<f4`.
    F32,
}

fn io_err(path: &Path, source: std::io::Error) -> NsaError {
    NsaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn malformed(path: &Path, reason: impl Into<String>) -> NsaError {
    NsaError::MalformedFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

enum Kind {
    Npy,
    Csv,
}

fn kind_of(path: &Path) -> Result<Kind> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
    {
        Some(e) if e == "npy" => Ok(Kind::Npy),
        Some(e) if e == "csv" => Ok(Kind::Csv),
        _ => Err(NsaError::InvalidParameter {
            name: "file name",
            reason: format!("{}: the extension must be .npy or .csv", path.display()),
        }),
    }
}

/// Reads a 2-D matrix (a 1-D array is read as one column) from `.npy` or `.csv`.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("m.npy");
/// let m = nalgebra::DMatrix::from_row_slice(2, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
/// nsa_flow::io::write_matrix(&path, &m, nsa_flow::io::NpyDtype::F64).unwrap();
/// assert_eq!(nsa_flow::io::read_matrix(&path).unwrap(), m);
/// ```
pub fn read_matrix(path: impl AsRef<Path>) -> Result<DMatrix<f64>> {
    let path = path.as_ref();
    match kind_of(path)? {
        Kind::Npy => read_npy(path).map(|(shape, data)| to_matrix_2d(path, &shape, data))?,
        Kind::Csv => read_csv(path),
    }
}

/// Reads a 3-D `.npy` array `[B, p, k]` as `B` matrices (a 2-D array is a batch of one).
pub fn read_batch(path: impl AsRef<Path>) -> Result<Vec<DMatrix<f64>>> {
    let path = path.as_ref();
    if !matches!(kind_of(path)?, Kind::Npy) {
        return Err(malformed(
            path,
            "a batch of matrices must be a 3-D .npy file",
        ));
    }
    let (shape, data) = read_npy(path)?;
    match shape.len() {
        2 => Ok(vec![to_matrix_2d(path, &shape, data)?]),
        3 => {
            let (b, p, k) = (shape[0], shape[1], shape[2]);
            let per = p * k;
            Ok((0..b)
                .map(|i| DMatrix::from_row_slice(p, k, &data[i * per..(i + 1) * per]))
                .collect())
        }
        n => Err(malformed(
            path,
            format!("expected a 2-D or 3-D array, found {n}-D"),
        )),
    }
}

/// Returns the shape and the data in C (row-major) order.
fn read_npy(path: &Path) -> Result<(Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    check_npy_shape(path, &bytes)?;
    let npy = npyz::NpyFile::new(&bytes[..])
        .map_err(|e| malformed(path, format!("not a valid .npy file: {e}")))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let order = npy.order();
    let dtype = match npy.dtype() {
        npyz::DType::Plain(ts) => ts.to_string(),
        other => {
            return Err(malformed(
                path,
                format!("unsupported dtype {other:?}; expected f4 or f8"),
            ))
        }
    };
    let data: Vec<f64> = if dtype.ends_with("f8") {
        npy.into_vec::<f64>()
            .map_err(|e| malformed(path, e.to_string()))?
    } else if dtype.ends_with("f4") {
        npy.into_vec::<f32>()
            .map_err(|e| malformed(path, e.to_string()))?
            .into_iter()
            .map(f64::from)
            .collect()
    } else {
        return Err(malformed(
            path,
            format!("unsupported dtype '{dtype}'; expected f4 or f8"),
        ));
    };
    let expected: usize = shape.iter().product();
    if data.len() != expected {
        return Err(malformed(
            path,
            format!("{} values for shape {shape:?}", data.len()),
        ));
    }
    let data = if order == npyz::Order::Fortran && shape.len() > 1 {
        fortran_to_c(&shape, &data)
    } else {
        data
    };
    Ok((shape, data))
}

/// Reads the shape from the header ourselves and checks, without overflow, that the data it
/// promises fit in the file, before the parser computes sizes from it.
fn check_npy_shape(path: &Path, bytes: &[u8]) -> Result<()> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(malformed(path, "not a .npy file (bad magic)"));
    }
    let (hlen, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(malformed(path, format!("unsupported .npy version {v}"))),
    };
    let header = bytes
        .get(start..start.saturating_add(hlen))
        .ok_or_else(|| malformed(path, "truncated header"))?;
    let header = String::from_utf8_lossy(header);
    let shape_txt = header
        .split("'shape':")
        .nth(1)
        .and_then(|r| r.split('(').nth(1))
        .and_then(|r| r.split(')').next())
        .ok_or_else(|| malformed(path, "no shape in the header"))?;
    let mut count: u64 = 1;
    for d in shape_txt
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        let d: u64 = d
            .parse()
            .map_err(|_| malformed(path, format!("bad dimension '{d}'")))?;
        count = count
            .checked_mul(d)
            .ok_or_else(|| malformed(path, "the shape's element count overflows"))?;
    }
    let data = (bytes.len() - start - hlen) as u64;
    if count.checked_mul(4).is_none_or(|b| b > data) {
        return Err(malformed(
            path,
            format!("the header promises {count} elements but the file holds {data} data bytes"),
        ));
    }
    Ok(())
}

fn fortran_to_c(shape: &[usize], data: &[f64]) -> Vec<f64> {
    let n = data.len();
    let mut out = vec![0.0; n];
    let nd = shape.len();
    let mut idx = vec![0usize; nd];
    for (f, v) in data.iter().enumerate() {
        // index from the Fortran offset (first axis fastest)
        let mut r = f;
        for (a, i) in idx.iter_mut().enumerate() {
            *i = r % shape[a];
            r /= shape[a];
        }
        let mut c = 0;
        for a in 0..nd {
            c = c * shape[a] + idx[a];
        }
        out[c] = *v;
    }
    out
}

fn to_matrix_2d(path: &Path, shape: &[usize], data: Vec<f64>) -> Result<DMatrix<f64>> {
    match shape.len() {
        1 => Ok(DMatrix::from_vec(shape[0], 1, data)),
        2 => Ok(DMatrix::from_row_slice(shape[0], shape[1], &data)),
        n => Err(malformed(
            path,
            format!("expected a 2-D array, found {n}-D"),
        )),
    }
}

fn read_csv(path: &Path) -> Result<DMatrix<f64>> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    let mut rows: Vec<Vec<f64>> = Vec::new();
    for (lineno, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(|f| f.trim()).collect();
        let parsed: std::result::Result<Vec<f64>, _> =
            fields.iter().map(|f| f.parse::<f64>()).collect();
        match parsed {
            Ok(v) => {
                if let Some(first) = rows.first() {
                    if first.len() != v.len() {
                        return Err(malformed(
                            path,
                            format!(
                                "line {} has {} fields, expected {}",
                                lineno + 1,
                                v.len(),
                                first.len()
                            ),
                        ));
                    }
                }
                rows.push(v);
            }
            // one header line before the numbers is allowed
            Err(_) if rows.is_empty() && lineno == 0 => continue,
            Err(e) => return Err(malformed(path, format!("line {}: {e}", lineno + 1))),
        }
    }
    if rows.is_empty() {
        return Err(malformed(path, "no numeric rows"));
    }
    let (p, k) = (rows.len(), rows[0].len());
    Ok(DMatrix::from_fn(p, k, |i, j| rows[i][j]))
}

/// A file in the same directory as `path` to write into before renaming it over `path`.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, e));
    }
    Ok(())
}

fn npy_bytes(shape: &[usize], c_order_data: impl Iterator<Item = f64>, dtype: NpyDtype) -> Vec<u8> {
    let descr = match dtype {
        NpyDtype::F64 => "<f8",
        NpyDtype::F32 => "<f4",
    };
    let shape_txt = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // magic (6) + version (2) + header length (2) + header, padded with spaces to 64 bytes, ending in \n
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + shape.iter().product::<usize>() * 8);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in c_order_data {
        match dtype {
            NpyDtype::F64 => out.extend_from_slice(&v.to_le_bytes()),
            NpyDtype::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
        }
    }
    out
}

fn csv_bytes(m: &DMatrix<f64>) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..m.nrows() {
        let row: Vec<String> = (0..m.ncols()).map(|j| format!("{:?}", m[(i, j)])).collect();
        s.push_str(&row.join(","));
        s.push('\n');
    }
    s.into_bytes()
}

/// Writes a matrix as `.npy` (C order, `dtype`) or `.csv` (shortest round-trip decimal
/// text), chosen by the extension; atomically.
pub fn write_matrix(path: impl AsRef<Path>, m: &DMatrix<f64>, dtype: NpyDtype) -> Result<()> {
    let path = path.as_ref();
    let bytes = match kind_of(path)? {
        Kind::Npy => {
            let (p, k) = m.shape();
            npy_bytes(
                &[p, k],
                (0..p).flat_map(|i| (0..k).map(move |j| m[(i, j)])),
                dtype,
            )
        }
        Kind::Csv => csv_bytes(m),
    };
    write_atomic(path, &bytes)
}

/// Writes `B` matrices of one shape as a 3-D `.npy` array `[B, p, k]`; atomically.
///
/// ```
/// use nsa_flow::io::{read_batch, write_batch, NpyDtype};
/// # let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("batch.npy");
/// let ms = vec![nalgebra::DMatrix::from_element(3, 2, 1.0), nalgebra::DMatrix::from_element(3, 2, 2.0)];
/// write_batch(&path, &ms, NpyDtype::F32).unwrap();
/// assert_eq!(read_batch(&path).unwrap(), ms);
/// ```
pub fn write_batch(path: impl AsRef<Path>, ms: &[DMatrix<f64>], dtype: NpyDtype) -> Result<()> {
    let path = path.as_ref();
    if !matches!(kind_of(path)?, Kind::Npy) {
        return Err(NsaError::InvalidParameter {
            name: "file name",
            reason: format!("{}: a batch is written as .npy", path.display()),
        });
    }
    let (p, k) = ms.first().map(|m| m.shape()).unwrap_or((0, 0));
    if let Some(bad) = ms.iter().find(|m| m.shape() != (p, k)) {
        return Err(NsaError::ShapeMismatch {
            what: "batch member",
            expected_rows: p,
            expected_cols: k,
            got_rows: bad.nrows(),
            got_cols: bad.ncols(),
        });
    }
    let data = ms
        .iter()
        .flat_map(|m| (0..p).flat_map(move |i| (0..k).map(move |j| m[(i, j)])));
    write_atomic(path, &npy_bytes(&[ms.len(), p, k], data, dtype))
}

/// Writes text atomically (summaries, traces).
pub fn write_text(path: impl AsRef<Path>, text: &str) -> Result<()> {
    write_atomic(path.as_ref(), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_and_csv_round_trip_both_dtypes() {
        let dir = tempfile::tempdir().unwrap();
        let m = DMatrix::from_fn(5, 3, |i, j| (i as f64 - 2.0) * 0.1 + j as f64 / 3.0);
        for (name, dtype, tol) in [
            ("a.npy", NpyDtype::F64, 0.0),
            ("b.npy", NpyDtype::F32, 1e-7),
            ("c.csv", NpyDtype::F64, 0.0),
        ] {
            let p = dir.path().join(name);
            write_matrix(&p, &m, dtype).unwrap();
            let r = read_matrix(&p).unwrap();
            assert!((r - &m).amax() <= tol, "{name}");
        }
        let b = vec![m.clone(), m.scale(2.0)];
        let p = dir.path().join("batch.npy");
        write_batch(&p, &b, NpyDtype::F64).unwrap();
        assert_eq!(read_batch(&p).unwrap(), b);
    }

    /// A version-1 .npy file with this header dictionary and raw data bytes.
    fn raw_npy(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut h = dict.to_string();
        let total = 10 + h.len() + 1;
        h.push_str(&" ".repeat((64 - total % 64) % 64));
        h.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
        bytes.extend_from_slice(h.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    #[test]
    fn fortran_order_is_read_correctly() {
        let dir = tempfile::tempdir().unwrap();
        // a 2×3 Fortran-order array: column-major data 1..6
        let data: Vec<u8> = (1..=6).flat_map(|v| (v as f64).to_le_bytes()).collect();
        let bytes = raw_npy(
            "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }",
            &data,
        );
        let p = dir.path().join("f.npy");
        std::fs::write(&p, bytes).unwrap();
        let m = read_matrix(&p).unwrap();
        assert_eq!(
            m,
            DMatrix::from_vec(2, 3, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        );
    }

    #[test]
    fn a_huge_shape_in_the_header_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        for shape in ["(4611686018427387904, 4)", "(100, 100)"] {
            let dict = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}");
            let bytes = raw_npy(&dict, &[0u8; 64]);
            let p = dir.path().join("huge.npy");
            std::fs::write(&p, bytes).unwrap();
            assert!(
                matches!(read_matrix(&p), Err(NsaError::MalformedFile { .. })),
                "{shape}"
            );
        }
    }

    #[test]
    fn malformed_inputs_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.npy");
        std::fs::write(&p, b"not numpy").unwrap();
        assert!(matches!(
            read_matrix(&p),
            Err(NsaError::MalformedFile { .. })
        ));
        let p = dir.path().join("ragged.csv");
        std::fs::write(&p, "1,2\n3\n").unwrap();
        assert!(matches!(
            read_matrix(&p),
            Err(NsaError::MalformedFile { .. })
        ));
        let p = dir.path().join("text.csv");
        std::fs::write(&p, "a,b\nc,d\n").unwrap();
        assert!(matches!(
            read_matrix(&p),
            Err(NsaError::MalformedFile { .. })
        ));
        assert!(matches!(
            read_matrix(dir.path().join("missing.npy")),
            Err(NsaError::Io { .. })
        ));
        assert!(matches!(
            read_matrix(dir.path().join("x.txt")),
            Err(NsaError::InvalidParameter { .. })
        ));
    }
}
