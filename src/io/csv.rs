//! Numeric CSV: comma-separated numbers, one row per line. A UTF-8 byte-order mark is
//! stripped; `\n`, `\r\n` and a lone `\r` all end a line; blank lines and lines starting with
//! `#` are skipped. The first remaining line is a header only when [`CsvHeader`] says so: by
//! default when none of its cells parses as a number, so a data row with one bad cell is an
//! error, never silently dropped.

use crate::error::NsaError;
use crate::memory;

/// Whether the first row of a CSV is a header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CsvHeader {
    /// A header when none of its cells parses as a number (the default).
    #[default]
    Auto,
    /// The first row is a header: skipped whatever it holds.
    Yes,
    /// There is no header: the first row is data like any other.
    No,
}

impl CsvHeader {
    /// The name `FromStr` accepts.
    pub fn as_str(self) -> &'static str {
        match self {
            CsvHeader::Auto => "auto",
            CsvHeader::Yes => "yes",
            CsvHeader::No => "no",
        }
    }
}

impl std::str::FromStr for CsvHeader {
    type Err = NsaError;
    fn from_str(s: &str) -> Result<Self, NsaError> {
        match s {
            "auto" => Ok(CsvHeader::Auto),
            "yes" => Ok(CsvHeader::Yes),
            "no" => Ok(CsvHeader::No),
            _ => Err(NsaError::UnknownName {
                kind: "CSV header setting",
                name: s.to_string(),
                expected: "auto, yes, no".into(),
            }),
        }
    }
}

/// Lines with their 1-based numbers, ending at `\r\n`, `\n` or `\r`.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut rest = text;
    let mut n = 0usize;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        n += 1;
        let end = rest.find(['\n', '\r']).unwrap_or(rest.len());
        let line = &rest[..end];
        let skip = if rest[end..].starts_with("\r\n") {
            2
        } else {
            usize::from(end < rest.len())
        };
        rest = &rest[end + skip..];
        Some((n, line))
    })
}

/// The values of a CSV text, row-major, with the row and column counts. Errors are the reason
/// only (the reader adds the path).
pub(crate) fn parse(text: &str, header: CsvHeader) -> Result<(usize, usize, Vec<f64>), String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut values: Vec<f64> = Vec::new();
    let mut cols: Option<usize> = None;
    let mut rows = 0usize;
    let mut first = true;
    for (lineno, line) in lines(text) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let is_first = std::mem::replace(&mut first, false);
        if is_first && header == CsvHeader::Yes {
            continue;
        }
        let start = values.len();
        let mut bad: Option<(usize, &str)> = None;
        let mut parsed_any = false;
        for (j, cell) in line.split(',').enumerate() {
            let cell = cell.trim();
            match cell.parse::<f64>() {
                Ok(v) => {
                    parsed_any = true;
                    if values.len() == values.capacity() {
                        values
                            .try_reserve(values.capacity().max(1024))
                            .map_err(|_| format!("out of memory after {} values", values.len()))?;
                    }
                    values.push(v);
                }
                Err(_) => {
                    if bad.is_none() {
                        bad = Some((j, cell));
                    }
                }
            }
        }
        if let Some((j, cell)) = bad {
            if is_first && header == CsvHeader::Auto && !parsed_any {
                values.truncate(start);
                continue; // a header: no cell is a number
            }
            let hint = if is_first && header == CsvHeader::Auto {
                " (a header row has no numeric cell; give --csv-header yes to skip this row)"
            } else {
                ""
            };
            return Err(format!(
                "line {lineno}, column {}: {cell:?} is not a number{hint}",
                j + 1
            ));
        }
        let n = values.len() - start;
        match cols {
            None => cols = Some(n),
            Some(c) if c != n => return Err(format!("line {lineno} has {n} fields, expected {c}")),
            Some(_) => {}
        }
        rows += 1;
    }
    let cols = cols.ok_or("no numeric rows")?;
    memory::elements("the CSV's values", &[rows, cols]).map_err(|e| e.to_string())?;
    Ok((rows, cols, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_endings_bom_and_headers() {
        for text in [
            "1,2\n3,4\n",
            "1,2\r\n3,4\r\n",
            "1,2\r3,4\r",
            "\u{feff}1,2\n3,4",
            "# c\n\n1, 2\n3 ,4\n",
        ] {
            assert_eq!(
                parse(text, CsvHeader::Auto).unwrap(),
                (2, 2, vec![1.0, 2.0, 3.0, 4.0]),
                "{text:?}"
            );
        }
        assert_eq!(
            parse("a,b\n1,2\n", CsvHeader::Auto).unwrap(),
            (1, 2, vec![1.0, 2.0])
        );
        assert_eq!(
            parse("1,2\n3,4\n", CsvHeader::Yes).unwrap(),
            (1, 2, vec![3.0, 4.0])
        );
        assert!(parse("a,b\n1,2\n", CsvHeader::No)
            .unwrap_err()
            .contains("line 1"));
        for bad in [
            "1,x\n3,4\n",
            "0x1,2\n3,4\n",
            "1,2,\n3,4\n",
            "1_000,2\n3,4\n",
        ] {
            let e = parse(bad, CsvHeader::Auto).unwrap_err();
            assert!(e.contains("line 1"), "{bad:?}: {e}");
        }
        assert!(parse("1,2\n3\n", CsvHeader::Auto)
            .unwrap_err()
            .contains("line 2"));
        assert_eq!(
            parse("a\r\n", CsvHeader::Auto).unwrap_err(),
            "no numeric rows"
        );
        assert_eq!(parse("", CsvHeader::Auto).unwrap_err(), "no numeric rows");
    }
}
