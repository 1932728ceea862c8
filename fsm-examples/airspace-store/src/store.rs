//! How records live in the FSM's keyspace, and the searches over them.
//!
//! Keys (all multi-byte integers big-endian, so key order is numeric order):
//! - `r <kind> <id>` -> postcard [`Record`]
//! - `x <kind> <level> <row u32> <col u32> <id>` -> empty (spatial index, see [`crate::index`])
//! - `e <end_ms u64> <kind> <id>` -> empty (expiry queue, oldest first)
//! - `s` -> postcard [`Stats`]

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use wraft_guest::{Context, Error};

use crate::geo::Volume;
use crate::index::{self, LEVELS};
use crate::model::{Kind, Record, Stats};

const STATS: &[u8] = b"s";
const PAGE: u32 = 1024;

fn record_key(kind: Kind, id: &str) -> Vec<u8> {
    [&[b'r', kind.byte()][..], id.as_bytes()].concat()
}

fn index_key(kind: Kind, (level, row, col): (u8, u32, u32), id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(11 + id.len());
    k.extend_from_slice(&[b'x', kind.byte(), level]);
    k.extend_from_slice(&row.to_be_bytes());
    k.extend_from_slice(&col.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

const INDEX_HEADER: usize = 11;

fn expiry_key(end_ms: u64, kind: Kind, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + id.len());
    k.push(b'e');
    k.extend_from_slice(&end_ms.to_be_bytes());
    k.push(kind.byte());
    k.extend_from_slice(id.as_bytes());
    k
}

/// The counters.
pub fn stats(ctx: &Context<'_>) -> Result<Stats, Error> {
    Ok(ctx.get_as::<Stats>(STATS)?.unwrap_or_default())
}

/// Stores the counters.
pub fn put_stats(ctx: &mut Context<'_>, stats: &Stats) -> Result<(), Error> {
    ctx.put_as(STATS, stats)
}

/// The stored record (live or not).
pub fn load(ctx: &Context<'_>, kind: Kind, id: &str) -> Result<Option<Record>, Error> {
    ctx.get_as::<Record>(&record_key(kind, id))
}

fn cells_of(rec: &Record) -> BTreeSet<(u8, u32, u32)> {
    let mut cells = BTreeSet::new();
    for v in &rec.volumes {
        index::cells(&v.footprint.bbox(), &mut cells);
    }
    cells
}

/// Writes a new record with its index and expiry keys.
pub fn insert(ctx: &mut Context<'_>, stats: &mut Stats, rec: &Record) -> Result<(), Error> {
    let k = rec.kind.byte() as usize;
    for cell in cells_of(rec) {
        ctx.put(&index_key(rec.kind, cell, &rec.id), &[]);
        stats.cells[k][index::slot(cell.0)] += 1;
    }
    ctx.put(&expiry_key(rec.end_ms(), rec.kind, &rec.id), &[]);
    ctx.put_as(&record_key(rec.kind, &rec.id), rec)?;
    stats.records[k] += 1;
    Ok(())
}

/// Rewrites a record whose volumes did not change (no re-indexing).
pub fn rewrite(ctx: &mut Context<'_>, rec: &Record) -> Result<(), Error> {
    ctx.put_as(&record_key(rec.kind, &rec.id), rec)
}

/// Removes a record with its index and expiry keys.
pub fn remove(ctx: &mut Context<'_>, stats: &mut Stats, rec: &Record) {
    let k = rec.kind.byte() as usize;
    for cell in cells_of(rec) {
        ctx.delete(&index_key(rec.kind, cell, &rec.id));
        stats.cells[k][index::slot(cell.0)] -= 1;
    }
    ctx.delete(&expiry_key(rec.end_ms(), rec.kind, &rec.id));
    ctx.delete(&record_key(rec.kind, &rec.id));
    stats.records[k] -= 1;
}

/// Removes up to `max` records whose time has passed at `now_ms`, oldest first.
pub fn expire(
    ctx: &mut Context<'_>,
    stats: &mut Stats,
    now_ms: u64,
    max: u32,
) -> Result<u32, Error> {
    if max == 0 {
        return Ok(0);
    }
    // Live means end > now, so everything with end <= now has expired.
    let end = [&[b'e'][..], &now_ms.saturating_add(1).to_be_bytes()].concat();
    let due = ctx.scan(b"e", Some(&end), max);
    let mut removed = 0;
    for (key, _) in due {
        let Some(kind) = key.get(9).copied().and_then(Kind::from_byte) else {
            continue;
        };
        let id = core::str::from_utf8(&key[10..]).map_err(|_| Error::new("bad expiry key"))?;
        if let Some(rec) = load(ctx, kind, id)? {
            remove(ctx, stats, &rec);
            removed += 1;
        } else {
            ctx.delete(&key);
        }
    }
    stats.expired += u64::from(removed);
    Ok(removed)
}

/// Live records of `kind` intersecting `area`, by id, found through the spatial index.
pub fn search(
    ctx: &Context<'_>,
    stats: &Stats,
    kind: Kind,
    area: &Volume,
    now_ms: u64,
) -> Result<BTreeMap<alloc::string::String, Record>, Error> {
    let bbox = area.footprint.bbox();
    let mut candidates: BTreeSet<Vec<u8>> = BTreeSet::new();
    for level in LEVELS {
        if stats.cells[kind.byte() as usize][index::slot(level)] == 0 {
            continue;
        }
        for span in index::search_rows(&bbox, level) {
            let mut from = index_key(kind, (level, span.row, span.col_lo), "");
            let to = index_key(kind, (level, span.row, span.col_hi + 1), "");
            loop {
                let page = ctx.scan(&from, Some(&to), PAGE);
                let Some((last, _)) = page.last() else { break };
                from = [&last[..], &[0]].concat();
                for (key, _) in page {
                    candidates.insert(key[INDEX_HEADER..].to_vec());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    for id in candidates {
        let id = alloc::string::String::from_utf8(id).map_err(|_| Error::new("bad index key"))?;
        if let Some(rec) = load(ctx, kind, &id)?
            && rec.live(now_ms)
            && rec.volumes.iter().any(|v| v.intersects(area))
        {
            out.insert(id, rec);
        }
    }
    Ok(out)
}

/// What [`search`] must return, by reading every record (tests compare the two).
pub fn search_by_scan(
    ctx: &Context<'_>,
    kind: Kind,
    area: &Volume,
    now_ms: u64,
) -> Result<BTreeMap<alloc::string::String, Record>, Error> {
    let mut out = BTreeMap::new();
    for (_, value) in ctx.scan_prefix(&[b'r', kind.byte()]) {
        let rec: Record = wraft_guest::decode(&value)?;
        if rec.live(now_ms) && rec.volumes.iter().any(|v| v.intersects(area)) {
            out.insert(rec.id.clone(), rec);
        }
    }
    Ok(out)
}
