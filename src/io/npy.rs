//! The `.npy` format, parsed by hand: one header parser that accepts exactly the dictionary
//! numpy writes (the keys `descr`, `fortran_order` and `shape`, each once, in any order and
//! either quote style), checks every size with checked arithmetic, and hands the decoder the
//! very numbers it checked, so no later step can size a buffer differently.

use crate::memory;

/// Why bytes are not a usable `.npy` array (the reader adds the path).
pub(crate) type FormatError = String;

/// Element types nsa-flow reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Element {
    F32 { big_endian: bool },
    F64 { big_endian: bool },
}

impl Element {
    pub(crate) fn size(self) -> usize {
        match self {
            Element::F32 { .. } => 4,
            Element::F64 { .. } => 8,
        }
    }

    fn decode(self, b: &[u8]) -> f64 {
        match self {
            Element::F32 { big_endian } => {
                let a = [b[0], b[1], b[2], b[3]];
                f64::from(if big_endian {
                    f32::from_be_bytes(a)
                } else {
                    f32::from_le_bytes(a)
                })
            }
            Element::F64 { big_endian } => {
                let a = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
                if big_endian {
                    f64::from_be_bytes(a)
                } else {
                    f64::from_le_bytes(a)
                }
            }
        }
    }
}

/// A checked header: the element type, the order, the shape, its element count and byte
/// size, and where the data start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub element: Element,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
    /// The checked product of `shape`.
    pub len: usize,
    /// `len · element size`, checked.
    pub data_bytes: usize,
    /// Offset of the first data byte.
    pub data_offset: usize,
}

/// The fixed part before the header text: magic, version, header length. Returns the header
/// length and the offset of the header text, or `Ok(None)` when `prefix` is too short to tell.
pub(crate) fn preamble(prefix: &[u8]) -> Result<Option<(usize, usize)>, FormatError> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    let n = prefix.len().min(MAGIC.len());
    if prefix[..n] != MAGIC[..n] {
        return Err("not a .npy file (bad magic)".into());
    }
    if prefix.len() < 8 {
        return Ok(None);
    }
    let (major, minor) = (prefix[6], prefix[7]);
    if minor != 0 || !(1..=3).contains(&major) {
        return Err(format!(
            "unsupported .npy version {major}.{minor} (1.0, 2.0 and 3.0 are read)"
        ));
    }
    let start = if major == 1 { 10 } else { 12 };
    if prefix.len() < start {
        return Ok(None);
    }
    let hlen = if major == 1 {
        u16::from_le_bytes([prefix[8], prefix[9]]) as usize
    } else {
        u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]) as usize
    };
    Ok(Some((hlen, start)))
}

/// Parses the header text (the bytes after the preamble) of a file of `file_len` bytes whose
/// header text starts at `text_offset`.
pub(crate) fn parse_header(
    text: &[u8],
    text_offset: usize,
    file_len: u64,
) -> Result<Header, FormatError> {
    let text = std::str::from_utf8(text).map_err(|e| {
        format!(
            "the header is not text (invalid UTF-8 at byte {})",
            e.valid_up_to()
        )
    })?;
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let dict = p.dict()?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!(
            "unexpected text after the header dictionary at byte {}",
            p.i
        ));
    }
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    for (key, value) in dict {
        let slot: &mut Option<Lit> = match key.as_str() {
            "descr" => &mut descr,
            "fortran_order" => &mut fortran,
            "shape" => &mut shape,
            other => {
                return Err(format!(
                    "unknown key {other:?} in the header (expected descr, fortran_order, shape)"
                ))
            }
        };
        if slot.is_some() {
            return Err(format!("duplicate key '{key}' in the header"));
        }
        *slot = Some(value);
    }
    let element = match descr.ok_or("the header has no 'descr'")? {
        Lit::Str(s) => match s.as_str() {
            "<f8" => Element::F64 { big_endian: false },
            ">f8" => Element::F64 { big_endian: true },
            "<f4" => Element::F32 { big_endian: false },
            ">f4" => Element::F32 { big_endian: true },
            other => {
                return Err(format!(
                "unsupported dtype '{other}': expected float64 or float32 ('<f8', '>f8', '<f4', '>f4')"
            ))
            }
        },
        _ => {
            return Err(
                "unsupported dtype (a structured dtype): expected float64 or float32".into(),
            )
        }
    };
    let fortran_order = match fortran.ok_or("the header has no 'fortran_order'")? {
        Lit::Bool(b) => b,
        _ => return Err("'fortran_order' must be True or False".into()),
    };
    let shape = match shape.ok_or("the header has no 'shape'")? {
        Lit::Tuple(items) => items
            .into_iter()
            .map(|d| match d {
                Lit::Int(n) => Ok(n),
                Lit::NegInt => Err("a dimension of 'shape' is negative".to_string()),
                Lit::BigInt => {
                    Err("a dimension of 'shape' is too large for this machine".to_string())
                }
                _ => Err("the dimensions of 'shape' must be integers".to_string()),
            })
            .collect::<Result<Vec<usize>, _>>()?,
        _ => return Err("'shape' must be a tuple of integers".into()),
    };
    let len = memory::elements("the array of the header", &shape).map_err(|e| e.to_string())?;
    let data_bytes = len
        .checked_mul(element.size())
        .ok_or_else(|| format!("the size of shape {shape:?} overflows the address space"))?;
    let data_offset = text_offset
        .checked_add(text.len())
        .ok_or("the header length overflows")?;
    let available = file_len.saturating_sub(data_offset as u64);
    if (data_bytes as u64) > available {
        return Err(format!(
            "the header promises {len} elements of {} bytes ({data_bytes} bytes) for shape {shape:?}, but the file holds {available} data bytes",
            element.size()
        ));
    }
    Ok(Header {
        element,
        fortran_order,
        shape,
        len,
        data_bytes,
        data_offset,
    })
}

/// Parses a whole `.npy` file held in memory.
pub(crate) fn parse(bytes: &[u8]) -> Result<Header, FormatError> {
    let (hlen, start) = preamble(bytes)?.ok_or("truncated .npy preamble")?;
    let text = bytes
        .get(start..start.saturating_add(hlen))
        .ok_or("the header is truncated (its length runs past the end of the file)")?;
    parse_header(text, start, bytes.len() as u64)
}

/// Decodes `data` (exactly `h.data_bytes` bytes) into `out` in file order.
pub(crate) fn decode_into(h: &Header, data: &[u8], out: &mut Vec<f64>) {
    out.extend(
        data.chunks_exact(h.element.size())
            .map(|c| h.element.decode(c)),
    );
}

/// A Python literal of the subset a `.npy` header uses.
#[derive(Debug)]
enum Lit {
    Str(String),
    Bool(bool),
    None,
    Int(usize),
    /// A negative integer (only its sign matters: it is an error as a dimension).
    NegInt,
    /// An integer too large for `usize`.
    BigInt,
    Tuple(Vec<Lit>),
    List,
    Dict,
}

/// Literals nest at most this deep, so hostile nesting cannot exhaust the stack.
const MAX_DEPTH: usize = 32;

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), FormatError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!(
                "could not parse the header: expected '{}' at byte {}",
                c as char, self.i
            ))
        }
    }

    fn dict(&mut self) -> Result<Vec<(String, Lit)>, FormatError> {
        self.expect(b'{')?;
        let mut out = Vec::new();
        loop {
            if self.peek() == Some(b'}') {
                self.i += 1;
                return Ok(out);
            }
            let key = match self.peek() {
                Some(b'\'' | b'"') => self.string()?,
                _ => {
                    return Err(format!(
                        "could not parse the header: expected a quoted key at byte {}",
                        self.i
                    ))
                }
            };
            self.expect(b':')?;
            let value = self.literal(1)?;
            out.push((key, value));
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {}
                _ => {
                    return Err(format!(
                        "could not parse the header: expected ',' or '}}' at byte {}",
                        self.i
                    ))
                }
            }
        }
    }

    fn string(&mut self) -> Result<String, FormatError> {
        let q = self.s[self.i];
        let start = self.i + 1;
        let end = self.s[start..]
            .iter()
            .position(|&c| c == q || c == b'\\')
            .map(|e| start + e)
            .ok_or("could not parse the header: unterminated string")?;
        if self.s[end] == b'\\' {
            return Err("could not parse the header: escapes in strings are not supported".into());
        }
        self.i = end + 1;
        // the slice lies between ASCII quotes of valid UTF-8, so it is valid UTF-8
        Ok(String::from_utf8_lossy(&self.s[start..end]).into_owned())
    }

    fn sequence(&mut self, close: u8, depth: usize) -> Result<Vec<Lit>, FormatError> {
        self.i += 1;
        let mut items = Vec::new();
        loop {
            if self.peek() == Some(close) {
                self.i += 1;
                return Ok(items);
            }
            items.push(self.literal(depth + 1)?);
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(c) if c == close => {}
                _ => {
                    return Err(format!(
                        "could not parse the header: expected ',' or '{}' at byte {}",
                        close as char, self.i
                    ))
                }
            }
        }
    }

    fn literal(&mut self, depth: usize) -> Result<Lit, FormatError> {
        if depth > MAX_DEPTH {
            return Err("could not parse the header: literals nest too deeply".into());
        }
        match self.peek() {
            Some(b'\'' | b'"') => self.string().map(Lit::Str),
            Some(b'(') => self.sequence(b')', depth).map(Lit::Tuple),
            Some(b'[') => self.sequence(b']', depth).map(|_| Lit::List),
            Some(b'{') => {
                // a nested dict only ever appears as a bad value: parse it to report that
                self.i += 1;
                let mut nested = 1usize;
                while self.i < self.s.len() && nested > 0 {
                    match self.s[self.i] {
                        b'{' => nested += 1,
                        b'}' => nested -= 1,
                        _ => {}
                    }
                    self.i += 1;
                }
                if nested > 0 {
                    return Err("could not parse the header: unterminated '{'".into());
                }
                Ok(Lit::Dict)
            }
            Some(c) if c.is_ascii_digit() || c == b'-' || c == b'+' => self.integer(),
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i].is_ascii_alphanumeric() {
                    self.i += 1;
                }
                match &self.s[start..self.i] {
                    b"True" => Ok(Lit::Bool(true)),
                    b"False" => Ok(Lit::Bool(false)),
                    b"None" => Ok(Lit::None),
                    other => Err(format!(
                        "could not parse the header: unknown name '{}'",
                        String::from_utf8_lossy(other)
                    )),
                }
            }
            _ => Err(format!(
                "could not parse the header: unexpected character at byte {}",
                self.i
            )),
        }
    }

    fn integer(&mut self) -> Result<Lit, FormatError> {
        let neg = match self.s[self.i] {
            b'-' => {
                self.i += 1;
                true
            }
            b'+' => {
                self.i += 1;
                false
            }
            _ => false,
        };
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
            self.i += 1;
        }
        if self.i == start {
            return Err(format!(
                "could not parse the header: expected digits at byte {}",
                self.i
            ));
        }
        let digits = &self.s[start..self.i];
        // Python 2 numpy wrote long integers with an 'L' suffix
        if self.s.get(self.i) == Some(&b'L') {
            self.i += 1;
        }
        if matches!(self.s.get(self.i), Some(b'.' | b'e' | b'E' | b'j' | b'_')) {
            return Err("the dimensions of 'shape' must be integers".into());
        }
        if neg && digits.iter().any(|&d| d != b'0') {
            return Ok(Lit::NegInt);
        }
        let mut n: usize = 0;
        for &d in digits {
            match n
                .checked_mul(10)
                .and_then(|n| n.checked_add((d - b'0') as usize))
            {
                Some(v) => n = v,
                None => return Ok(Lit::BigInt),
            }
        }
        Ok(Lit::Int(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(dict: &str) -> Vec<u8> {
        let mut h = dict.to_string();
        h.push_str(&" ".repeat((64 - (10 + h.len() + 1) % 64) % 64));
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        b
    }

    fn parse_with(dict: &str, data: usize) -> Result<Header, FormatError> {
        let mut b = header(dict);
        b.extend(std::iter::repeat_n(0u8, data));
        parse(&b)
    }

    #[test]
    fn numpy_headers_parse() {
        let h = parse_with(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 2), }",
            48,
        )
        .unwrap();
        assert_eq!(h.shape, vec![3, 2]);
        assert_eq!((h.len, h.data_bytes, h.data_offset), (6, 48, 128));
        let h = parse_with(
            r#"{"shape": (5,), "fortran_order": True, "descr": ">f4"}"#,
            20,
        )
        .unwrap();
        assert_eq!(h.shape, vec![5]);
        assert_eq!(h.element, Element::F32 { big_endian: true });
        assert!(h.fortran_order);
        assert_eq!(
            parse_with(
                "{'descr': '<f8', 'fortran_order': False, 'shape': (3L, 2L)}",
                48
            )
            .unwrap()
            .shape,
            vec![3, 2]
        );
        assert_eq!(
            parse_with("{'descr': '<f8', 'fortran_order': False, 'shape': ()}", 8)
                .unwrap()
                .shape,
            Vec::<usize>::new()
        );
    }

    #[test]
    fn hostile_headers_are_errors() {
        let cases = [
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), 'shape': (3, 4), }",
                "duplicate key 'shape'",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': [3, 4], }",
                "tuple",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), 'extra': 1}",
                "unknown key",
            ),
            (
                "{'descr': '<f2', 'fortran_order': False, 'shape': (3,), }",
                "unsupported dtype",
            ),
            (
                "{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }",
                "unsupported dtype",
            ),
            (
                "{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (3,), }",
                "unsupported dtype",
            ),
            (
                "{'descr': '<f8', 'fortran_order': 0, 'shape': (3,), }",
                "True or False",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (-3,), }",
                "negative",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (3.5,), }",
                "integers",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }",
                "overflows",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (2305843009213693952,), }",
                "overflows",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999999999999999,), }",
                "too large",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (100, 100), }",
                "promises",
            ),
            ("{'descr': '<f8', 'fortran_order': False}", "no 'shape'"),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (3,) 'x'}",
                "could not parse",
            ),
            ("not a dict", "could not parse"),
        ];
        for (dict, needle) in cases {
            let e = parse_with(dict, 64).unwrap_err();
            assert!(e.contains(needle), "{dict}: {e}");
        }
        let deep = format!(
            "{{'descr': '<f8', 'fortran_order': False, 'shape': {}{}}}",
            "(".repeat(30000),
            ")".repeat(30000)
        );
        let mut b = b"\x93NUMPY\x02\x00".to_vec();
        b.extend_from_slice(&(deep.len() as u32).to_le_bytes());
        b.extend_from_slice(deep.as_bytes());
        assert!(parse(&b).unwrap_err().contains("nest"));
        assert!(parse(b"\x93NUMPY\x01").is_err());
        assert!(parse(b"\x93NUMPY\x04\x00\x00\x00")
            .unwrap_err()
            .contains("version"));
        assert!(parse(b"PK\x03\x04").unwrap_err().contains("magic"));
    }
}
