//! The uniform every kernel reads (`struct Params` of shaders/prelude.wgsl, assembled into
//! every shader), and the per-problem `struct Lane`, as the host writes them.

use crate::params::Precision;
use bytemuck::{Pod, Zeroable};

/// A coefficient taken from the uniform's literals only (no device scalar added).
pub const LITERAL: u32 = u32::MAX;

/// `struct Params`: 20 words (twelve integers, `src` and `fold`), 80 bytes in both precisions. The
/// coefficients are per problem, in `struct Lane` ([`encode_lane`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct ParamsHeader {
    /// Rows.
    pub p: u32,
    /// Columns (of A; `ka` for Gram products).
    pub k: u32,
    /// Entries `p·k` (elementwise and reduction kernels).
    pub n: u32,
    /// Kernel-specific mode.
    pub mode: u32,
    /// Second column count (`kb`), a flag or a count.
    pub k2: u32,
    /// Offsets into the small or aux buffer, in elements.
    pub off0: u32,
    /// See `off0`.
    pub off1: u32,
    /// See `off0`.
    pub off2: u32,
    /// See `off0`.
    pub off3: u32,
    /// A scalar slot in the small buffer.
    pub slot: u32,
    /// Workgroups along x (the 2-D grid's row length), or a count of partials.
    pub groups_x: u32,
    /// Rows per chunk, steps per dispatch or a count of partials.
    pub chunk: u32,
    /// Sources of coefficients 0..3: [`LITERAL`] or an index into the small buffer whose
    /// value is added to the literal.
    pub src: [u32; 4],
    /// Where Gram chunk partials a launch adds itself start in aux ([`LITERAL`] for none),
    /// and their count (partial_sums_multi: `[pair 0, pair 1, chunks, ·]`).
    pub fold: [u32; 4],
}

impl ParamsHeader {
    /// A header with every coefficient literal.
    pub fn new() -> Self {
        ParamsHeader {
            src: [LITERAL; 4],
            fold: [LITERAL; 4],
            ..Default::default()
        }
    }
}

/// Size of the uniform `struct Params` (the coefficients are per problem, in `struct Lane`).
pub const PARAMS_SIZE: usize = std::mem::size_of::<ParamsHeader>();
// the WGSL struct is 20 words; tests/shaders.rs checks naga's layout member by member
const _: () = assert!(PARAMS_SIZE == 80);

/// Launch headers at a fixed stride, the host copy of one uniform buffer that binds them one
/// at a time: the solver backend's ring (rewritten each submit) and the fit's table (written
/// once) share this layout.
#[derive(Clone, Debug, Default)]
pub(crate) struct HeaderTable {
    bytes: Vec<u8>,
}

impl HeaderTable {
    /// Bytes between headers: 256, the largest `min_uniform_buffer_offset_alignment` WebGPU
    /// allows, so every adapter accepts each header's offset.
    pub const STRIDE: u64 = 256;

    /// A table of `slots` cleared headers.
    pub fn with_slots(slots: usize) -> Self {
        HeaderTable {
            bytes: vec![0; slots * Self::STRIDE as usize],
        }
    }

    /// The byte offset of header `slot` (what a bind group or a dynamic offset names).
    pub fn offset(slot: usize) -> u32 {
        (slot as u64 * Self::STRIDE) as u32
    }

    /// Writes header `slot`, growing the table when it is past the end.
    pub fn put(&mut self, slot: usize, h: &ParamsHeader) {
        let at = slot * Self::STRIDE as usize;
        if self.bytes.len() < at + Self::STRIDE as usize {
            self.bytes.resize(at + Self::STRIDE as usize, 0);
        }
        self.bytes[at..at + PARAMS_SIZE].copy_from_slice(bytemuck::bytes_of(h));
    }

    /// Appends `h` after the last slot and answers its offset (a table written once).
    pub fn push(&mut self, h: &ParamsHeader) -> u32 {
        let slot = self.slots();
        self.put(slot, h);
        Self::offset(slot)
    }

    /// How many header slots the table holds.
    pub fn slots(&self) -> usize {
        self.bytes.len() / Self::STRIDE as usize
    }

    /// Header `slot` as written (a cleared header past the end).
    pub fn get(&self, slot: usize) -> ParamsHeader {
        let at = slot * Self::STRIDE as usize;
        self.bytes
            .get(at..at + PARAMS_SIZE)
            .map(bytemuck::pod_read_unaligned)
            .unwrap_or_default()
    }

    /// The bytes of the first `slots` headers (what a submit writes to the device).
    pub fn bytes(&self, slots: usize) -> &[u8] {
        &self.bytes[..(slots * Self::STRIDE as usize).min(self.bytes.len())]
    }

    /// The table's size in bytes (its buffer's size).
    pub fn len_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// Size of the uniform for an element type (the same for both: it holds no element).
pub fn params_size(_precision: Precision) -> usize {
    PARAMS_SIZE
}

/// Size (and array stride) of `struct Lane { base: array<vec4<u32>, 2>, c: array<vec4<T>, 2> }`:
/// 32 bytes of data starts, then 8 coefficients (the struct aligns to 16 in f32, 32 in f64).
pub fn lane_size(precision: Precision) -> usize {
    32 + 8 * precision.bytes()
}

/// Writes one problem's `struct Lane` (cleared first): where each binding's data starts, in
/// elements of the element type, and the 8 coefficients.
///
/// ```
/// use nsa_flow::gpu::{encode_lane, lane_size};
/// use nsa_flow::Precision;
/// let mut out = Vec::new();
/// encode_lane(&[0; 8], &[1.0; 8], Precision::F64, &mut out);
/// assert_eq!(out.len(), lane_size(Precision::F64));
/// ```
pub fn encode_lane(bases: &[u32; 8], coefs: &[f64; 8], precision: Precision, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(bytemuck::bytes_of(bases));
    match precision {
        Precision::F32 => {
            for c in coefs {
                out.extend_from_slice(&(*c as f32).to_le_bytes());
            }
        }
        Precision::F64 => {
            for c in coefs {
                out.extend_from_slice(&c.to_le_bytes());
            }
        }
    }
}

/// Appends `values` as the device's elements of `precision`, little-endian (what every
/// upload writes; [`crate::gpu::GpuContext`]'s readback decodes the same way).
pub(crate) fn encode_elements(
    values: impl IntoIterator<Item = f64>,
    precision: Precision,
    out: &mut Vec<u8>,
) {
    match precision {
        Precision::F32 => {
            for x in values {
                out.extend_from_slice(&(x as f32).to_le_bytes());
            }
        }
        Precision::F64 => {
            for x in values {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
}

/// Member names with byte offsets, and the struct size, of the uniform as the host lays it
/// out (what a test compares with naga's layout of the assembled shaders).
#[derive(Clone, Debug, PartialEq)]
pub struct ParamsLayout {
    /// `(name, offset)` of each member, in order.
    pub members: Vec<(String, u32)>,
    /// Size in bytes.
    pub size: u32,
}

impl ParamsLayout {
    /// The layout of `struct Params` for an element type.
    pub fn of(precision: Precision) -> Self {
        let names = [
            "p", "k", "n", "mode", "k2", "off0", "off1", "off2", "off3", "slot", "groups_x",
            "chunk",
        ];
        let mut members: Vec<(String, u32)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), 4 * i as u32))
            .collect();
        members.push(("src".into(), std::mem::offset_of!(ParamsHeader, src) as u32));
        members.push((
            "fold".into(),
            std::mem::offset_of!(ParamsHeader, fold) as u32,
        ));
        ParamsLayout {
            members,
            size: params_size(precision) as u32,
        }
    }

    /// The layout of `struct Lane` (one problem's data starts and coefficients).
    pub fn lane(precision: Precision) -> Self {
        ParamsLayout {
            members: vec![("base".into(), 0), ("c".into(), 32)],
            size: lane_size(precision) as u32,
        }
    }

    /// The layout of the bandwidth probe's uniform (`BandwidthParams`).
    pub fn bandwidth() -> Self {
        ParamsLayout {
            members: vec![
                ("n4".into(), 0),
                ("groups_x".into(), 4),
                ("pad0".into(), 8),
                ("pad1".into(), 12),
            ],
            size: std::mem::size_of::<BandwidthParams>() as u32,
        }
    }
}

/// The uniform of `bandwidth.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BandwidthParams {
    /// vec4 words to copy.
    pub n4: u32,
    /// Workgroups along x.
    pub groups_x: u32,
    /// Padding to 16 bytes.
    pub pad0: u32,
    /// Padding to 16 bytes.
    pub pad1: u32,
}

#[cfg(test)]
mod header_table_tests {
    use super::*;

    #[test]
    fn headers_round_trip_at_the_fixed_stride() {
        let mut t = HeaderTable::with_slots(2);
        assert_eq!(t.len_bytes(), 2 * HeaderTable::STRIDE);
        let mut h = ParamsHeader::new();
        h.p = 1031;
        h.k = 17;
        // past the end: the table grows to hold the slot
        t.put(3, &h);
        assert_eq!(t.len_bytes(), 4 * HeaderTable::STRIDE);
        assert_eq!(t.get(3).p, 1031);
        assert_eq!(t.get(3).k, 17);
        assert_eq!(t.get(3).src, [LITERAL; 4]);
        // the slots between stay cleared, and a slot past the end reads as cleared
        assert_eq!(t.get(2).p, 0);
        assert_eq!(t.get(9).k, 0);
        assert_eq!(HeaderTable::offset(3), 768);
        assert_eq!(t.bytes(2).len(), 512);
        assert_eq!(t.bytes(99).len(), 1024);
        let at = HeaderTable::offset(3) as usize;
        assert_eq!(&t.bytes(4)[at..at + PARAMS_SIZE], bytemuck::bytes_of(&h));
        // a table written once: each push lands after the last slot
        assert_eq!(t.slots(), 4);
        assert_eq!(t.push(&h), 1024);
        assert_eq!(t.slots(), 5);
        assert_eq!(t.get(4).k, 17);
    }
}
