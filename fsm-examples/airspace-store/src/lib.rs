//! airspace-store: the airspace records of a UTM Discovery and Synchronization Service (the
//! InterUSS DSS): identification service areas, subscriptions and operational intents, each
//! with 4D volumes, an owner and an opaque version (OVN).
//!
//! - Strategic deconfliction: creating or updating an operational intent that intersects
//!   other live intents in 4D must present their current OVNs in `key`; otherwise nothing is
//!   written and the answer lists the conflicts ([`Outcome::Conflict`]).
//! - A change to an ISA or intent returns the subscriptions whose area it touches (before or
//!   after the change), each with its incremented notification index, so the caller can
//!   notify them.
//! - Area queries go through a grid index stored in the FSM's own keys ([`index`]), never a
//!   scan of every record.
//! - Expiry uses the entry's timestamp, the same on every replica: a record whose volumes
//!   have all ended is invisible, and every apply removes up to [`EXPIRE_PER_APPLY`] of them.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

pub mod geo;
pub mod index;
mod model;
pub mod store;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use wraft_guest::{Context, Error, Fsm};

pub use geo::{Footprint, LatLng, Volume};
pub use model::{
    Answer, Command, Conflict, Details, IntentState, Kind, Notification, Outcome, Query, Record,
    Stats,
};

/// Most volumes in one operational intent.
pub const MAX_VOLUMES: usize = 16;
/// Expired records every apply removes at most (bounds the work of one entry).
pub const EXPIRE_PER_APPLY: u32 = 16;
/// Most records one `Expire` command removes.
pub const MAX_EXPIRE: u32 = 10_000;
const MAX_ID: usize = 64;
const MAX_URL: usize = 512;
const MAX_KEY: usize = 256;

/// The FSM.
#[derive(Debug)]
pub struct AirspaceStore;

fn check_text(what: &str, v: &str, max: usize) -> Result<(), Error> {
    if v.is_empty() || v.len() > max || v.chars().any(char::is_control) {
        return Err(Error::new(format!(
            "{what} must be 1 to {max} bytes without control characters"
        )));
    }
    Ok(())
}

/// A write of one record, whatever its kind.
struct Put {
    kind: Kind,
    id: String,
    owner: String,
    volumes: Vec<Volume>,
    details: Details,
    ovn: Option<String>,
    /// Intents only: OVNs of the intersecting intents the writer has seen.
    key: Option<Vec<String>>,
}

fn put(ctx: &mut Context<'_>, stats: &mut Stats, now: u64, p: Put) -> Result<Outcome, Error> {
    check_text("id", &p.id, MAX_ID)?;
    check_text("owner", &p.owner, MAX_ID)?;
    match &p.details {
        Details::Isa { flights_url: url }
        | Details::Subscription {
            callback_url: url, ..
        }
        | Details::Intent { base_url: url, .. } => check_text("url", url, MAX_URL)?,
    }
    if p.volumes.is_empty() || p.volumes.len() > MAX_VOLUMES {
        return Err(Error::new(format!(
            "an operational intent needs 1 to {MAX_VOLUMES} volumes, got {}",
            p.volumes.len()
        )));
    }
    for (i, v) in p.volumes.iter().enumerate() {
        v.check_for_storage(now)
            .map_err(|e| Error::new(format!("volume {i}: {e}")))?;
    }
    if p.key.as_ref().is_some_and(|k| k.len() > MAX_KEY) {
        return Err(Error::new(format!("key holds more than {MAX_KEY} OVNs")));
    }

    let mut existing = store::load(ctx, p.kind, &p.id)?;
    if let Some(old) = existing.take_if(|r| !r.live(now)) {
        store::remove(ctx, stats, &old);
    }
    let version = match (&existing, &p.ovn) {
        (None, None) => 1,
        (Some(old), Some(ovn)) if old.ovn == *ovn => {
            if old.owner != p.owner {
                return Err(Error::new(format!("{} is owned by {}", p.id, old.owner)));
            }
            old.version + 1
        }
        (Some(old), Some(ovn)) => {
            return Err(Error::new(format!(
                "OVN {ovn} is stale: {} is at OVN {}",
                p.id, old.ovn
            )));
        }
        (Some(_), None) => {
            return Err(Error::new(format!(
                "{} already exists: present its OVN to update it",
                p.id
            )));
        }
        (None, Some(_)) => return Err(Error::new(format!("{} not found", p.id))),
    };

    if let Some(key) = &p.key {
        let missing = conflicts(ctx, stats, now, &p.id, &p.volumes, key)?;
        if !missing.is_empty() {
            return Ok(Outcome::Conflict { missing });
        }
    }

    let mut areas = p.volumes.clone();
    let mut details = p.details;
    if let Some(old) = &existing {
        areas.extend(old.volumes.iter().cloned());
        if let (
            Details::Subscription {
                notification_index: old_index,
                ..
            },
            Details::Subscription {
                notification_index, ..
            },
        ) = (&old.details, &mut details)
        {
            *notification_index = *old_index;
        }
        store::remove(ctx, stats, old);
    }
    let notify = notify(ctx, stats, now, p.kind, &areas)?;
    let rec = Record {
        kind: p.kind,
        id: p.id,
        owner: p.owner,
        volumes: p.volumes,
        details,
        ovn: format!("{:016x}", ctx.random_u64()),
        version,
    };
    store::insert(ctx, stats, &rec)?;
    Ok(Outcome::Stored {
        id: rec.id,
        ovn: rec.ovn,
        version,
        notify,
    })
}

/// Live intents (other than `id`) intersecting `volumes` whose OVN is not in `key`.
fn conflicts(
    ctx: &Context<'_>,
    stats: &Stats,
    now: u64,
    id: &str,
    volumes: &[Volume],
    key: &[String],
) -> Result<Vec<Conflict>, Error> {
    let mut hits = BTreeMap::new();
    for v in volumes {
        hits.append(&mut store::search(ctx, stats, Kind::Intent, v, now)?);
    }
    Ok(hits
        .into_values()
        .filter(|r| r.id != id && !key.contains(&r.ovn))
        .map(|r| Conflict {
            base_url: match r.details {
                Details::Intent { base_url, .. } => base_url,
                _ => String::new(),
            },
            id: r.id,
            owner: r.owner,
            ovn: r.ovn,
        })
        .collect())
}

/// Bumps and returns the subscriptions that asked to hear about changes of `kind` in `areas`.
fn notify(
    ctx: &mut Context<'_>,
    stats: &Stats,
    now: u64,
    kind: Kind,
    areas: &[Volume],
) -> Result<Vec<Notification>, Error> {
    if kind == Kind::Subscription {
        return Ok(Vec::new());
    }
    let mut subs = BTreeMap::new();
    for v in areas {
        subs.append(&mut store::search(ctx, stats, Kind::Subscription, v, now)?);
    }
    let mut out = Vec::new();
    for mut sub in subs.into_values() {
        if let Details::Subscription {
            callback_url,
            notify_for_isas,
            notify_for_intents,
            notification_index,
        } = &mut sub.details
        {
            let wanted = match kind {
                Kind::Isa => *notify_for_isas,
                _ => *notify_for_intents,
            };
            if !wanted {
                continue;
            }
            *notification_index += 1;
            out.push(Notification {
                subscription_id: sub.id.clone(),
                callback_url: callback_url.clone(),
                notification_index: *notification_index,
            });
        }
        store::rewrite(ctx, &sub)?;
    }
    Ok(out)
}

fn delete(
    ctx: &mut Context<'_>,
    stats: &mut Stats,
    now: u64,
    kind: Kind,
    id: String,
    ovn: String,
) -> Result<Outcome, Error> {
    let rec = match store::load(ctx, kind, &id)? {
        Some(rec) if rec.live(now) => rec,
        _ => return Err(Error::new(format!("{id} not found"))),
    };
    if rec.ovn != ovn {
        return Err(Error::new(format!(
            "OVN {ovn} is stale: {id} is at OVN {}",
            rec.ovn
        )));
    }
    let notify = notify(ctx, stats, now, kind, &rec.volumes)?;
    store::remove(ctx, stats, &rec);
    Ok(Outcome::Deleted { id, notify })
}

impl Fsm for AirspaceStore {
    type Command = Command;
    type Output = Outcome;
    type Query = Query;
    type QueryOutput = Answer;

    fn apply(ctx: &mut Context<'_>, command: Command) -> Result<Outcome, Error> {
        let now = ctx.entry().timestamp_ms;
        let mut stats = store::stats(ctx)?;
        let sweep = match command {
            Command::Expire { max } => max.min(MAX_EXPIRE),
            _ => EXPIRE_PER_APPLY,
        };
        let removed = store::expire(ctx, &mut stats, now, sweep)?;
        let out = match command {
            Command::PutIsa {
                id,
                owner,
                volume,
                flights_url,
                ovn,
            } => Put {
                kind: Kind::Isa,
                id,
                owner,
                volumes: alloc::vec![volume],
                details: Details::Isa { flights_url },
                ovn,
                key: None,
            },
            Command::PutSubscription {
                id,
                owner,
                volume,
                callback_url,
                notify_for_isas,
                notify_for_intents,
                ovn,
            } => Put {
                kind: Kind::Subscription,
                id,
                owner,
                volumes: alloc::vec![volume],
                details: Details::Subscription {
                    callback_url,
                    notify_for_isas,
                    notify_for_intents,
                    notification_index: 0,
                },
                ovn,
                key: None,
            },
            Command::PutIntent {
                id,
                owner,
                volumes,
                state,
                base_url,
                key,
                ovn,
            } => Put {
                kind: Kind::Intent,
                id,
                owner,
                volumes,
                details: Details::Intent { state, base_url },
                ovn,
                key: Some(key),
            },
            Command::Delete { kind, id, ovn } => {
                let out = delete(ctx, &mut stats, now, kind, id, ovn)?;
                store::put_stats(ctx, &stats)?;
                return Ok(out);
            }
            Command::Expire { .. } => {
                store::put_stats(ctx, &stats)?;
                return Ok(Outcome::Expired { removed });
            }
        };
        let out = put(ctx, &mut stats, now, out)?;
        store::put_stats(ctx, &stats)?;
        Ok(out)
    }

    fn query(ctx: &Context<'_>, query: Query) -> Result<Answer, Error> {
        let now = ctx.entry().timestamp_ms;
        Ok(match query {
            Query::Get { kind, id } => Answer::Records(
                store::load(ctx, kind, &id)?
                    .filter(|r| r.live(now))
                    .into_iter()
                    .collect(),
            ),
            Query::Search { kinds, area } => {
                area.check_shape()?;
                let stats = store::stats(ctx)?;
                let kinds = if kinds.is_empty() {
                    Kind::ALL.to_vec()
                } else {
                    kinds
                };
                let mut out = Vec::new();
                for kind in Kind::ALL.into_iter().filter(|k| kinds.contains(k)) {
                    out.extend(store::search(ctx, &stats, kind, &area, now)?.into_values());
                }
                Answer::Records(out)
            }
            Query::Stats => Answer::Stats(alloc::boxed::Box::new(store::stats(ctx)?)),
        })
    }
}

wraft_guest::export_fsm!(AirspaceStore);

#[cfg(test)]
mod tests;
