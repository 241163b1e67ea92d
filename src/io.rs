//! Reading and writing matrices as `.npy` (f32 or f64, either byte order, C or Fortran order)
//! or `.csv`, chosen by the file extension.
//!
//! Reading trusts nothing in the file: inputs must be regular files (a FIFO or a device is
//! refused, not read forever), the `.npy` header is parsed by one strict parser with checked
//! sizes (`io/npy.rs`), only the bytes the header announces are read, and every buffer is
//! checked against the memory budget ([`crate::memory`]) and allocated with `try_reserve`.
//! Writing goes through [`OutputSet`]: all the files of a command land together or none does.

mod csv;
mod npy;
mod output;

pub use csv::CsvHeader;
pub use output::{check_distinct, OutputSet, SameFile};

use crate::error::{NsaError, Result};
use crate::memory;
use nalgebra::DMatrix;
use std::io::Read;
use std::path::Path;

/// Element type of a written `.npy` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpyDtype {
    /// `<f8`.
    F64,
    /// `<f4`.
    F32,
}

/// How files are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Whether the first row of a `.csv` is a header (default: only when none of its cells is
    /// a number).
    pub csv_header: CsvHeader,
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
    read_matrix_with(path, &ReadOptions::default())
}

/// [`read_matrix`] with options (the CSV header rule).
pub fn read_matrix_with(path: impl AsRef<Path>, options: &ReadOptions) -> Result<DMatrix<f64>> {
    let path = path.as_ref();
    match kind_of(path)? {
        Kind::Npy => {
            let (h, data) = read_npy(path)?;
            matrix_of(&h, data).map_err(|r| malformed(path, r))
        }
        Kind::Csv => {
            let text = read_bounded(path, None)?;
            let text = String::from_utf8(text).map_err(|e| {
                malformed(
                    path,
                    format!(
                        "not UTF-8 text (invalid byte at offset {})",
                        e.utf8_error().valid_up_to()
                    ),
                )
            })?;
            csv_matrix(&text, options.csv_header).map_err(|e| with_path(e, path))
        }
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
    let (h, data) = read_npy(path)?;
    batch_of(&h, data).map_err(|r| malformed(path, r))
}

/// A matrix from the bytes of a `.npy` file held in memory (what [`read_matrix`] does after
/// reading the file); errors name the path `<memory>`.
pub fn npy_matrix_from_bytes(bytes: &[u8]) -> Result<DMatrix<f64>> {
    let path = Path::new("<memory>");
    let (h, data) = npy_from_bytes(bytes).map_err(|e| with_path(e, path))?;
    matrix_of(&h, data).map_err(|r| malformed(path, r))
}

/// A batch from the bytes of a `.npy` file held in memory (as [`read_batch`]).
pub fn npy_batch_from_bytes(bytes: &[u8]) -> Result<Vec<DMatrix<f64>>> {
    let path = Path::new("<memory>");
    let (h, data) = npy_from_bytes(bytes).map_err(|e| with_path(e, path))?;
    batch_of(&h, data).map_err(|r| malformed(path, r))
}

/// A matrix from CSV text (as [`read_matrix_with`] reads a `.csv`); errors name `<memory>`.
pub fn csv_matrix_from_str(text: &str, header: CsvHeader) -> Result<DMatrix<f64>> {
    csv_matrix(text, header).map_err(|e| with_path(e, Path::new("<memory>")))
}

/// Puts `path` into a reader error made without one.
fn with_path(e: NsaError, path: &Path) -> NsaError {
    match e {
        NsaError::MalformedFile { reason, .. } => malformed(path, reason),
        other => other,
    }
}

fn csv_matrix(text: &str, header: CsvHeader) -> Result<DMatrix<f64>> {
    let nowhere = Path::new("");
    let (p, k, values) = csv::parse(text, header).map_err(|r| malformed(nowhere, r))?;
    let bytes = memory::bytes_of("the CSV's matrix", &[p, k], 8)?;
    memory::ensure_fits(&format!("a {p}×{k} matrix"), bytes)?;
    let mut col_major = memory::try_with_capacity::<f64>("the CSV's matrix", values.len())?;
    col_major.extend((0..p * k).map(|f| values[(f % p) * k + f / p]));
    Ok(DMatrix::from_vec(p, k, col_major))
}

/// Refuses what is not a regular file before opening it (opening a FIFO blocks until a writer
/// appears; a device can be read forever), then reads at most `limit` bytes (the whole file
/// when `None`, its size known from the metadata).
fn open_regular(path: &Path) -> Result<(std::fs::File, u64)> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(path, &meta));
    }
    let f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    // the path may have been swapped between the two calls: check what was opened
    let meta = f.metadata().map_err(|e| io_err(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(path, &meta));
    }
    Ok((f, meta.len()))
}

fn not_regular(path: &Path, meta: &std::fs::Metadata) -> NsaError {
    let what = if meta.is_dir() {
        "a directory"
    } else {
        "a FIFO, socket or device"
    };
    malformed(
        path,
        format!("not a regular file ({what}): inputs must be regular files"),
    )
}

fn read_bounded(path: &Path, limit: Option<u64>) -> Result<Vec<u8>> {
    let (f, len) = open_regular(path)?;
    let want = limit.map_or(len, |l| l.min(len));
    memory::ensure_fits(&format!("reading {}", path.display()), want)?;
    let want_usize = usize::try_from(want).map_err(|_| NsaError::SizeOverflow {
        what: format!("the file {}", path.display()),
        dims: vec![],
    })?;
    let mut buf = memory::try_with_capacity::<u8>("the file's bytes", want_usize)?;
    f.take(want)
        .read_to_end(&mut buf)
        .map_err(|e| io_err(path, e))?;
    Ok(buf)
}

/// Reads a `.npy` file: the preamble and header first, then exactly the data bytes the
/// checked header announces, decoded straight into an f64 buffer (file order).
fn read_npy(path: &Path) -> Result<(npy::Header, Vec<f64>)> {
    let (f, file_len) = open_regular(path)?;
    let mut r = std::io::BufReader::with_capacity(1 << 16, f);
    let mut pre = [0u8; 12];
    let mut got = 0usize;
    let (hlen, start) = loop {
        if let Some(v) = npy::preamble(&pre[..got]).map_err(|e| malformed(path, e))? {
            break v;
        }
        if got == pre.len() {
            unreachable!("a 12-byte preamble always decides");
        }
        match r
            .read(&mut pre[got..got + 1])
            .map_err(|e| io_err(path, e))?
        {
            0 => {
                return Err(malformed(
                    path,
                    "not a .npy file (shorter than its preamble)",
                ))
            }
            n => got += n,
        }
    };
    if (start as u64).saturating_add(hlen as u64) > file_len {
        return Err(malformed(
            path,
            "the header is truncated (its length runs past the end of the file)",
        ));
    }
    // the header is at most 4 GiB (a u32), and no larger than the file
    let mut text = memory::try_vec::<u8>("the .npy header", hlen, 0)?;
    r.read_exact(&mut text).map_err(|e| io_err(path, e))?;
    let h = npy::parse_header(&text, start, file_len).map_err(|e| malformed(path, e))?;
    drop(text);
    let data = read_values(&h, &mut r).map_err(|e| match e {
        NsaError::Io { source, .. } => io_err(path, source),
        other => other,
    })?;
    Ok((h, data))
}

fn read_values(h: &npy::Header, r: &mut impl Read) -> Result<Vec<f64>> {
    // the values, plus a transposed copy for C-order matrices
    let bytes = memory::bytes_of("the array", &[h.len], 16)?;
    memory::ensure_fits(&format!("an array of shape {:?}", h.shape), bytes)?;
    let mut out = memory::try_with_capacity::<f64>("the array", h.len)?;
    let mut chunk = vec![0u8; (1 << 16) / 8 * 8];
    let mut left = h.data_bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        r.read_exact(&mut chunk[..n])
            .map_err(|source| NsaError::Io {
                path: Default::default(),
                source,
            })?;
        npy::decode_into(h, &chunk[..n], &mut out);
        left -= n;
    }
    Ok(out)
}

fn npy_from_bytes(bytes: &[u8]) -> Result<(npy::Header, Vec<f64>)> {
    let nowhere = Path::new("");
    let h = npy::parse(bytes).map_err(|e| malformed(nowhere, e))?;
    let mut data = &bytes[h.data_offset..h.data_offset + h.data_bytes];
    let values = read_values(&h, &mut data)?;
    Ok((h, values))
}

/// The values of `data` (file order) as a column-major `rows×cols` matrix: `shape` is
/// `[rows, cols]` with row-major (C) file order, or column-major (Fortran) when `fortran`.
fn to_column_major(
    rows: usize,
    cols: usize,
    fortran: bool,
    data: Vec<f64>,
) -> Result<DMatrix<f64>> {
    debug_assert_eq!(data.len(), rows * cols);
    if fortran || rows <= 1 || cols <= 1 {
        return Ok(DMatrix::from_vec(rows, cols, data));
    }
    let mut m = memory::try_with_capacity::<f64>("the matrix", data.len())?;
    m.extend((0..rows * cols).map(|f| data[(f % rows) * cols + f / rows]));
    Ok(DMatrix::from_vec(rows, cols, m))
}

fn matrix_of(h: &npy::Header, data: Vec<f64>) -> std::result::Result<DMatrix<f64>, String> {
    match h.shape[..] {
        [p] => Ok(DMatrix::from_vec(p, 1, data)),
        [p, k] => to_column_major(p, k, h.fortran_order, data).map_err(|e| e.to_string()),
        _ => Err(format!("expected a 2-D array, found {}-D", h.shape.len())),
    }
}

fn batch_of(h: &npy::Header, data: Vec<f64>) -> std::result::Result<Vec<DMatrix<f64>>, String> {
    match h.shape[..] {
        [_, _] => Ok(vec![matrix_of(h, data)?]),
        [b, p, k] => {
            if b == 0 || p == 0 || k == 0 {
                return Err(format!(
                    "the batch is empty (shape ({b}, {p}, {k})): each of B, p and k must be at least 1"
                ));
            }
            let per = p * k; // ≤ h.len, which the header check bounded
            let mut out = memory::try_with_capacity::<DMatrix<f64>>("the batch", b)
                .map_err(|e| e.to_string())?;
            for i in 0..b {
                // C order: member i is the contiguous row-major block i; Fortran order:
                // entry (i, r, c) lies at i + b·(r + p·c)
                let m = if h.fortran_order {
                    let mut v = memory::try_with_capacity::<f64>("a batch member", per)
                        .map_err(|e| e.to_string())?;
                    v.extend((0..per).map(|f| data[i + b * f]));
                    DMatrix::from_vec(p, k, v)
                } else {
                    let block = data[i * per..(i + 1) * per].to_vec();
                    to_column_major(p, k, false, block).map_err(|e| e.to_string())?
                };
                out.push(m);
            }
            Ok(out)
        }
        _ => Err(format!(
            "expected a 2-D or 3-D array, found {}-D",
            h.shape.len()
        )),
    }
}

/// Whether a finite value lies beyond f32's range.
fn beyond_f32(mut values: impl Iterator<Item = f64>) -> bool {
    values.any(|v| v.is_finite() && v.abs() > f64::from(f32::MAX))
}

fn npy_bytes(
    shape: &[usize],
    c_order_data: impl Iterator<Item = f64> + Clone,
    dtype: NpyDtype,
) -> Result<Vec<u8>> {
    let (descr, size) = match dtype {
        NpyDtype::F64 => ("<f8", 8),
        NpyDtype::F32 => ("<f4", 4),
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
    if dtype == NpyDtype::F32 {
        // an f64 beyond f32's range would be written as ±Inf: refuse instead
        if beyond_f32(c_order_data.clone()) {
            return Err(NsaError::NonFiniteComputation {
                what: "matrix written as f32",
                cause: crate::error::NumericCause::F32Range,
            });
        }
    }
    let data = memory::bytes_of("the output array", shape, size)?;
    let total = usize::try_from(data)
        .ok()
        .and_then(|d| d.checked_add(10 + header.len()))
        .ok_or_else(|| NsaError::SizeOverflow {
            what: "the output file".into(),
            dims: shape.to_vec(),
        })?;
    let mut out = memory::try_with_capacity::<u8>("the output file", total)?;
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in c_order_data {
        match dtype {
            NpyDtype::F64 => out.extend_from_slice(&v.to_le_bytes()),
            NpyDtype::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
        }
    }
    Ok(out)
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

/// The bytes [`write_matrix`] writes to `path` (its extension picks the format).
pub fn matrix_bytes(path: &Path, m: &DMatrix<f64>, dtype: NpyDtype) -> Result<Vec<u8>> {
    match kind_of(path)? {
        Kind::Npy => {
            let (p, k) = m.shape();
            npy_bytes(
                &[p, k],
                (0..p).flat_map(|i| (0..k).map(move |j| m[(i, j)])),
                dtype,
            )
        }
        Kind::Csv => Ok(csv_bytes(m)),
    }
}

/// Writes a matrix as `.npy` (C order, `dtype`) or `.csv` (shortest round-trip decimal
/// text), chosen by the extension; atomically.
pub fn write_matrix(path: impl AsRef<Path>, m: &DMatrix<f64>, dtype: NpyDtype) -> Result<()> {
    let path = path.as_ref();
    output::write_atomic(path, matrix_bytes(path, m, dtype)?)
}

/// The bytes [`write_batch`] writes.
pub fn batch_bytes(path: &Path, ms: &[DMatrix<f64>], dtype: NpyDtype) -> Result<Vec<u8>> {
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
    npy_bytes(&[ms.len(), p, k], data, dtype)
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
    output::write_atomic(path, batch_bytes(path, ms, dtype)?)
}

/// Writes text atomically (summaries, traces).
pub fn write_text(path: impl AsRef<Path>, text: &str) -> Result<()> {
    output::write_atomic(path.as_ref(), text.as_bytes().to_vec())
}

/// Writes bytes atomically (figures).
pub fn write_bytes(path: impl AsRef<Path>, bytes: Vec<u8>) -> Result<()> {
    output::write_atomic(path.as_ref(), bytes)
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
