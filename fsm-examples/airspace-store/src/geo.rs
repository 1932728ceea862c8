//! 4D volumes (a footprint in lat/lng, an altitude range, a time range), their validation, and
//! the intersection test every query and deconfliction check uses.
//!
//! Geometry is planar: polygons are intersected in lat/lng degrees (intersection is preserved
//! by the equirectangular scaling, so no projection is needed), and circles in metres around
//! their centre (longitude scaled by the cosine of the latitude). That is accurate for the
//! volumes the validation allows (at most [`MAX_EXTENT_DEG`] across, away from the poles and
//! the antimeridian). All arithmetic is IEEE-754 on finite inputs, so it gives the same answer
//! on every node; `libm` supplies a software cosine that does too.

use alloc::format;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use wraft_guest::Error;

/// Largest polygon.
pub const MAX_VERTICES: usize = 100;
/// Largest footprint, in degrees of latitude and of longitude (about 111 km of latitude).
pub const MAX_EXTENT_DEG: f64 = 1.0;
/// Largest circle radius.
pub const MAX_RADIUS_M: f64 = 50_000.0;
/// Altitude bounds (metres, WGS-84).
pub const MIN_ALTITUDE_M: f64 = -500.0;
/// Altitude bounds (metres, WGS-84).
pub const MAX_ALTITUDE_M: f64 = 30_000.0;
/// Longest time range a stored volume may span.
pub const MAX_DURATION_MS: u64 = 24 * 3600 * 1000;
const METRES_PER_DEG: f64 = 111_320.0;

/// A point, in degrees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatLng {
    /// Latitude, -90..=90.
    pub lat: f64,
    /// Longitude, -180..=180.
    pub lng: f64,
}

/// The horizontal shape of a volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Footprint {
    /// A simple polygon (3 to [`MAX_VERTICES`] vertices; the ring closes itself).
    Polygon(Vec<LatLng>),
    /// A circle.
    Circle {
        /// Centre.
        center: LatLng,
        /// Radius in metres.
        radius_m: f64,
    },
}

/// A 4D volume: footprint, altitude range `[lo, hi]`, time range `[start, end)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    /// Horizontal shape.
    pub footprint: Footprint,
    /// Lowest altitude, metres.
    pub altitude_lo_m: f64,
    /// Highest altitude, metres.
    pub altitude_hi_m: f64,
    /// Start, ms since the epoch (inclusive).
    pub start_ms: u64,
    /// End, ms since the epoch (exclusive).
    pub end_ms: u64,
}

/// A lat/lng bounding box (closed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BBox {
    /// South edge.
    pub lat_lo: f64,
    /// North edge.
    pub lat_hi: f64,
    /// West edge.
    pub lng_lo: f64,
    /// East edge.
    pub lng_hi: f64,
}

impl BBox {
    fn overlaps(&self, o: &BBox) -> bool {
        self.lat_lo <= o.lat_hi
            && o.lat_lo <= self.lat_hi
            && self.lng_lo <= o.lng_hi
            && o.lng_lo <= self.lng_hi
    }
}

impl Footprint {
    /// An axis-aligned square with its south-west corner at (`lat`, `lng`), `side` degrees
    /// each way.
    pub fn square(lat: f64, lng: f64, side: f64) -> Footprint {
        let (n, e) = (lat + side, lng + side);
        Footprint::Polygon(alloc::vec![
            LatLng { lat, lng },
            LatLng { lat, lng: e },
            LatLng { lat: n, lng: e },
            LatLng { lat: n, lng },
        ])
    }

    /// The bounding box.
    pub fn bbox(&self) -> BBox {
        match self {
            Footprint::Polygon(v) => v.iter().fold(
                BBox {
                    lat_lo: f64::INFINITY,
                    lat_hi: f64::NEG_INFINITY,
                    lng_lo: f64::INFINITY,
                    lng_hi: f64::NEG_INFINITY,
                },
                |b, p| BBox {
                    lat_lo: b.lat_lo.min(p.lat),
                    lat_hi: b.lat_hi.max(p.lat),
                    lng_lo: b.lng_lo.min(p.lng),
                    lng_hi: b.lng_hi.max(p.lng),
                },
            ),
            Footprint::Circle { center, radius_m } => {
                let dlat = radius_m / METRES_PER_DEG;
                let dlng = radius_m / (METRES_PER_DEG * libm::cos(center.lat.to_radians()));
                BBox {
                    lat_lo: center.lat - dlat,
                    lat_hi: center.lat + dlat,
                    lng_lo: center.lng - dlng,
                    lng_hi: center.lng + dlng,
                }
            }
        }
    }

    fn check(&self) -> Result<(), Error> {
        match self {
            Footprint::Polygon(v) => {
                if v.len() < 3 || v.len() > MAX_VERTICES {
                    return Err(Error::new(format!(
                        "a polygon needs 3 to {MAX_VERTICES} vertices, got {}",
                        v.len()
                    )));
                }
                v.iter().try_for_each(check_point)?;
            }
            Footprint::Circle { center, radius_m } => {
                check_point(center)?;
                if !(radius_m.is_finite() && *radius_m > 0.0 && *radius_m <= MAX_RADIUS_M) {
                    return Err(Error::new(format!(
                        "circle radius must be in (0, {MAX_RADIUS_M}] m, got {radius_m}"
                    )));
                }
            }
        }
        let b = self.bbox();
        if !(b.lat_lo >= -90.0 && b.lat_hi <= 90.0 && b.lng_lo >= -180.0 && b.lng_hi <= 180.0) {
            return Err("footprint crosses a pole or the antimeridian".into());
        }
        if b.lat_hi - b.lat_lo > MAX_EXTENT_DEG || b.lng_hi - b.lng_lo > MAX_EXTENT_DEG {
            return Err(Error::new(format!(
                "footprint too large: {:.4}° x {:.4}° (lat x lng), the limit is {MAX_EXTENT_DEG}° each way",
                b.lat_hi - b.lat_lo,
                b.lng_hi - b.lng_lo
            )));
        }
        Ok(())
    }
}

fn check_point(p: &LatLng) -> Result<(), Error> {
    if !(p.lat.is_finite() && (-90.0..=90.0).contains(&p.lat)) {
        return Err(Error::new(format!("latitude {} is not in -90..=90", p.lat)));
    }
    if !(p.lng.is_finite() && (-180.0..=180.0).contains(&p.lng)) {
        return Err(Error::new(format!(
            "longitude {} is not in -180..=180",
            p.lng
        )));
    }
    Ok(())
}

impl Volume {
    /// Checks the shape: coordinates, extent, altitude and time ranges in order.
    pub fn check_shape(&self) -> Result<(), Error> {
        self.footprint.check()?;
        let (lo, hi) = (self.altitude_lo_m, self.altitude_hi_m);
        if !(lo.is_finite() && hi.is_finite()) {
            return Err("altitudes must be finite".into());
        }
        if lo > hi {
            return Err(Error::new(format!(
                "altitude range is inverted: {lo} m > {hi} m"
            )));
        }
        if lo < MIN_ALTITUDE_M || hi > MAX_ALTITUDE_M {
            return Err(Error::new(format!(
                "altitudes must be within {MIN_ALTITUDE_M}..={MAX_ALTITUDE_M} m"
            )));
        }
        if self.start_ms >= self.end_ms {
            return Err(Error::new(format!(
                "time range is empty or inverted: start {} >= end {}",
                self.start_ms, self.end_ms
            )));
        }
        Ok(())
    }

    /// Checks a volume to be stored at time `now_ms`: its shape, a duration of at most
    /// [`MAX_DURATION_MS`], and an end in the future.
    pub fn check_for_storage(&self, now_ms: u64) -> Result<(), Error> {
        self.check_shape()?;
        if self.end_ms - self.start_ms > MAX_DURATION_MS {
            return Err(Error::new(format!(
                "time range too long: {} ms, the limit is {MAX_DURATION_MS} ms",
                self.end_ms - self.start_ms
            )));
        }
        if self.end_ms <= now_ms {
            return Err(Error::new(format!(
                "volume already ended at {} (now {now_ms})",
                self.end_ms
            )));
        }
        Ok(())
    }

    /// Whether the two volumes share a point in space and time.
    pub fn intersects(&self, o: &Volume) -> bool {
        self.start_ms < o.end_ms
            && o.start_ms < self.end_ms
            && self.altitude_lo_m <= o.altitude_hi_m
            && o.altitude_lo_m <= self.altitude_hi_m
            && self.footprint.bbox().overlaps(&o.footprint.bbox())
            && footprints_intersect(&self.footprint, &o.footprint)
    }
}

#[derive(Clone, Copy)]
struct P {
    x: f64,
    y: f64,
}

fn footprints_intersect(a: &Footprint, b: &Footprint) -> bool {
    match (a, b) {
        (Footprint::Polygon(pa), Footprint::Polygon(pb)) => {
            let deg =
                |v: &[LatLng]| -> Vec<P> { v.iter().map(|p| P { x: p.lng, y: p.lat }).collect() };
            polygons_intersect(&deg(pa), &deg(pb))
        }
        (Footprint::Circle { center, radius_m }, Footprint::Polygon(poly))
        | (Footprint::Polygon(poly), Footprint::Circle { center, radius_m }) => {
            let k = libm::cos(center.lat.to_radians()) * METRES_PER_DEG;
            let ring: Vec<P> = poly
                .iter()
                .map(|p| P {
                    x: (p.lng - center.lng) * k,
                    y: (p.lat - center.lat) * METRES_PER_DEG,
                })
                .collect();
            let origin = P { x: 0.0, y: 0.0 };
            contains(&ring, origin)
                || edges(&ring).any(|(s, e)| dist2_to_segment(origin, s, e) <= radius_m * radius_m)
        }
        (
            Footprint::Circle {
                center: ca,
                radius_m: ra,
            },
            Footprint::Circle {
                center: cb,
                radius_m: rb,
            },
        ) => {
            let k = libm::cos(((ca.lat + cb.lat) / 2.0).to_radians()) * METRES_PER_DEG;
            let dx = (ca.lng - cb.lng) * k;
            let dy = (ca.lat - cb.lat) * METRES_PER_DEG;
            dx * dx + dy * dy <= (ra + rb) * (ra + rb)
        }
    }
}

fn edges(ring: &[P]) -> impl Iterator<Item = (P, P)> + '_ {
    (0..ring.len()).map(move |i| (ring[i], ring[(i + 1) % ring.len()]))
}

fn polygons_intersect(a: &[P], b: &[P]) -> bool {
    edges(a).any(|(p1, p2)| edges(b).any(|(q1, q2)| segments_intersect(p1, p2, q1, q2)))
        || contains(b, a[0])
        || contains(a, b[0])
}

fn orient(p: P, q: P, r: P) -> f64 {
    (q.x - p.x) * (r.y - p.y) - (q.y - p.y) * (r.x - p.x)
}

fn on_segment(p: P, q: P, r: P) -> bool {
    r.x >= p.x.min(q.x) && r.x <= p.x.max(q.x) && r.y >= p.y.min(q.y) && r.y <= p.y.max(q.y)
}

/// Closed segments `p1p2` and `q1q2` share a point (touching counts).
fn segments_intersect(p1: P, p2: P, q1: P, q2: P) -> bool {
    let d1 = orient(q1, q2, p1);
    let d2 = orient(q1, q2, p2);
    let d3 = orient(p1, p2, q1);
    let d4 = orient(p1, p2, q2);
    if ((d1 > 0.0 && d2 < 0.0) || (d1 < 0.0 && d2 > 0.0))
        && ((d3 > 0.0 && d4 < 0.0) || (d3 < 0.0 && d4 > 0.0))
    {
        return true;
    }
    (d1 == 0.0 && on_segment(q1, q2, p1))
        || (d2 == 0.0 && on_segment(q1, q2, p2))
        || (d3 == 0.0 && on_segment(p1, p2, q1))
        || (d4 == 0.0 && on_segment(p1, p2, q2))
}

/// Point in polygon by the crossing rule (a point on the boundary may go either way; the
/// edge tests catch those).
fn contains(ring: &[P], p: P) -> bool {
    let mut inside = false;
    for (a, b) in edges(ring) {
        if (a.y > p.y) != (b.y > p.y) && p.x < (b.x - a.x) * (p.y - a.y) / (b.y - a.y) + a.x {
            inside = !inside;
        }
    }
    inside
}

fn dist2_to_segment(p: P, a: P, b: P) -> f64 {
    let (dx, dy) = (b.x - a.x, b.y - a.y);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p.x - a.x) * dx + (p.y - a.y) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (cx, cy) = (a.x + t * dx - p.x, a.y + t * dy - p.y);
    cx * cx + cy * cy
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    use Footprint as F;

    fn square(lat: f64, lng: f64, side: f64) -> Footprint {
        F::square(lat, lng, side)
    }

    fn vol(footprint: Footprint) -> Volume {
        Volume {
            footprint,
            altitude_lo_m: 0.0,
            altitude_hi_m: 120.0,
            start_ms: 1000,
            end_ms: 2000,
        }
    }

    #[test]
    fn polygons_overlap_touch_contain_and_miss() {
        let a = vol(square(47.0, 8.0, 0.01));
        assert!(a.intersects(&vol(square(47.005, 8.005, 0.01))));
        assert!(a.intersects(&vol(square(47.01, 8.0, 0.01))), "shared edge");
        assert!(
            a.intersects(&vol(square(47.002, 8.002, 0.001))),
            "contained"
        );
        assert!(vol(square(47.002, 8.002, 0.001)).intersects(&a), "contains");
        assert!(!a.intersects(&vol(square(47.02, 8.0, 0.01))));
        // An L-shaped polygon whose bounding box overlaps but whose area does not.
        let l = vol(Footprint::Polygon(vec![
            LatLng {
                lat: 47.0,
                lng: 8.02,
            },
            LatLng {
                lat: 47.0,
                lng: 8.03,
            },
            LatLng {
                lat: 47.03,
                lng: 8.03,
            },
            LatLng {
                lat: 47.03,
                lng: 7.99,
            },
            LatLng {
                lat: 47.02,
                lng: 7.99,
            },
            LatLng {
                lat: 47.02,
                lng: 8.02,
            },
        ]));
        assert!(!a.intersects(&l));
    }

    #[test]
    fn circles_use_metres() {
        let c = |lat: f64, lng: f64, r: f64| {
            vol(Footprint::Circle {
                center: LatLng { lat, lng },
                radius_m: r,
            })
        };
        // 0.01° of latitude is about 1113 m.
        assert!(c(47.0, 8.0, 600.0).intersects(&c(47.01, 8.0, 600.0)));
        assert!(!c(47.0, 8.0, 500.0).intersects(&c(47.01, 8.0, 500.0)));
        // Circle against a square 1113 m north of its centre.
        let sq = vol(square(47.01, 7.99, 0.02));
        assert!(c(47.0, 8.0, 1200.0).intersects(&sq));
        assert!(!c(47.0, 8.0, 1000.0).intersects(&sq));
    }

    #[test]
    fn altitude_and_time_must_both_overlap() {
        let a = vol(square(47.0, 8.0, 0.01));
        let mut b = a.clone();
        b.altitude_lo_m = 121.0;
        b.altitude_hi_m = 200.0;
        assert!(!a.intersects(&b));
        let mut c = a.clone();
        c.start_ms = 2000;
        c.end_ms = 3000;
        assert!(!a.intersects(&c), "time ranges are half-open");
    }

    #[test]
    fn validation_explains_what_is_wrong() {
        let msg = |v: Volume| v.check_for_storage(0).expect_err("invalid").to_string();
        assert!(msg(vol(square(91.0, 8.0, 0.01))).contains("latitude 91"));
        assert!(msg(vol(square(47.0, 8.0, 2.0))).contains("too large"));
        assert!(
            msg(vol(Footprint::Polygon(vec![
                LatLng { lat: 1.0, lng: 1.0 };
                2
            ])))
            .contains("3 to 100")
        );
        assert!(
            msg(vol(Footprint::Polygon(vec![
                LatLng { lat: 1.0, lng: 1.0 };
                101
            ])))
            .contains("got 101")
        );
        assert!(
            msg(vol(Footprint::Circle {
                center: LatLng {
                    lat: 1.0,
                    lng: 179.999
                },
                radius_m: 1000.0
            }))
            .contains("antimeridian")
        );
        assert!(
            msg(vol(Footprint::Circle {
                center: LatLng { lat: 1.0, lng: 1.0 },
                radius_m: f64::NAN
            }))
            .contains("radius")
        );
        let mut inverted = vol(square(47.0, 8.0, 0.01));
        inverted.altitude_lo_m = 200.0;
        assert!(msg(inverted).contains("inverted"));
        let mut empty = vol(square(47.0, 8.0, 0.01));
        empty.end_ms = empty.start_ms;
        assert!(msg(empty).contains("time range"));
        let ended = vol(square(47.0, 8.0, 0.01));
        assert!(
            ended
                .check_for_storage(5000)
                .expect_err("ended")
                .to_string()
                .contains("already ended")
        );
    }
}
