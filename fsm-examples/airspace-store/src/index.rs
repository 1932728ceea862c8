//! The spatial index: a hierarchy of lat/lng grids stored in the FSM's keys.
//!
//! Level `L` cuts the globe into square cells `360° / 2^L` wide (level 8: about 1.4°, level
//! 15: about 0.011°, 1.2 km of latitude). A volume is indexed at the finest level where its
//! bounding box touches at most 2x2 cells, so every volume has at most four index keys per
//! volume and small volumes sit in small cells. A search visits, at every level that holds
//! anything, the rows of cells its own bounding box touches, one key-range scan per row.
//!
//! Cells are computed in integer units of 1e-7 degree, with the box widened by one unit on
//! each side, so the cells of a box always cover every point of it: two boxes that overlap
//! share a cell at every level, which is what makes the index exact (no false negatives).

use alloc::collections::BTreeSet;
use alloc::vec::Vec;
use core::ops::RangeInclusive;

use crate::geo::BBox;

/// The grid levels, coarsest first.
pub const LEVELS: RangeInclusive<u8> = 8..=15;
/// Number of levels.
pub const LEVEL_COUNT: usize = 8;

/// The cells of one row a box touches at one level: `(level, row, first column, last column)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowSpan {
    /// Grid level.
    pub level: u8,
    /// Row (latitude band).
    pub row: u32,
    /// First column.
    pub col_lo: u32,
    /// Last column (inclusive).
    pub col_hi: u32,
}

fn width_e7(level: u8) -> u64 {
    3_600_000_000u64 >> level
}

/// Degrees to shifted, non-negative 1e-7 units (truncation; callers widen by one unit).
fn units(deg: f64, shift: i64) -> i64 {
    (deg * 1e7) as i64 + shift
}

/// Cell ranges `(rows, cols)` of `b` at `level`.
fn span(b: &BBox, level: u8) -> (RangeInclusive<u32>, RangeInclusive<u32>) {
    let w = width_e7(level) as i64;
    let cell = |deg: f64, shift: i64, pad: i64| ((units(deg, shift) + pad).max(0) / w) as u32;
    (
        cell(b.lat_lo, 900_000_000, -1)..=cell(b.lat_hi, 900_000_000, 1),
        cell(b.lng_lo, 1_800_000_000, -1)..=cell(b.lng_hi, 1_800_000_000, 1),
    )
}

/// The level a box is indexed at: the finest whose cells it touches at most 2x2 of.
pub fn level_for(b: &BBox) -> u8 {
    for level in LEVELS.rev() {
        let (rows, cols) = span(b, level);
        if rows.end() - rows.start() <= 1 && cols.end() - cols.start() <= 1 {
            return level;
        }
    }
    *LEVELS.start()
}

/// The index cells `(level, row, col)` of a box.
pub fn cells(b: &BBox, out: &mut BTreeSet<(u8, u32, u32)>) {
    let level = level_for(b);
    let (rows, cols) = span(b, level);
    for row in rows {
        for col in cols.clone() {
            out.insert((level, row, col));
        }
    }
}

/// The row spans a search for `b` visits at `level`.
pub fn search_rows(b: &BBox, level: u8) -> Vec<RowSpan> {
    let (rows, cols) = span(b, level);
    rows.map(|row| RowSpan {
        level,
        row,
        col_lo: *cols.start(),
        col_hi: *cols.end(),
    })
    .collect()
}

/// Slot of `level` in per-level counters.
pub fn slot(level: u8) -> usize {
    (level - LEVELS.start()) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bbox(lat: f64, lng: f64, size: f64) -> BBox {
        BBox {
            lat_lo: lat,
            lat_hi: lat + size,
            lng_lo: lng,
            lng_hi: lng + size,
        }
    }

    #[test]
    fn small_boxes_go_to_fine_levels_and_large_to_coarse() {
        assert_eq!(level_for(&bbox(47.001, 8.001, 0.001)), 15);
        assert_eq!(level_for(&bbox(47.0, 8.0, 0.9)), 8);
        let mut c = BTreeSet::new();
        cells(&bbox(47.0, 8.0, 0.9), &mut c);
        assert!(c.len() <= 4 && !c.is_empty());
    }

    #[test]
    fn overlapping_boxes_share_a_cell_at_every_level() {
        let a = bbox(47.0, 8.0, 0.3);
        let b = bbox(47.3, 8.3, 0.0001); // touches a's corner
        let mut cb = BTreeSet::new();
        cells(&b, &mut cb);
        let (level, row, col) = *cb.first().expect("cell");
        let hit = search_rows(&a, level)
            .iter()
            .any(|s| s.row == row && (s.col_lo..=s.col_hi).contains(&col));
        assert!(hit);
        // Southern and western hemispheres too.
        let c = bbox(-33.9, -151.2, 0.01);
        let mut cc = BTreeSet::new();
        cells(&c, &mut cc);
        let (level, row, col) = *cc.first().expect("cell");
        assert!(
            search_rows(&c, level)
                .iter()
                .any(|s| s.row == row && (s.col_lo..=s.col_hi).contains(&col))
        );
    }
}
