//! nan-bits: a test guest that makes NaNs and stores their bits.
//!
//! wasm leaves the bits of a NaN that arithmetic produces to the CPU (x86 and ARM answer
//! `0.0 / 0.0` with different signs, and pass input payloads on differently), so wraft's
//! engine canonicalizes them (`cranelift_nan_canonicalization`). This guest computes floats
//! from operands it is given as bits (so the compiler cannot fold them, and signalling NaNs
//! and payloads arrive intact): `0/0`, `inf - inf`, `sqrt(-1)`, arithmetic on signalling,
//! negative and payload-carrying NaNs, in f32 and f64, scalar and SIMD (`f32x4`, `f64x2`),
//! and stores each result's bits under the name of the wasm instruction that made it. The
//! host's tests require the same bytes on every backend and CPU, each the canonical NaN where
//! arithmetic made a NaN (`host/node/tests/all/nan_model.rs`).
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use wraft_guest::{Context, Error, Fsm};

/// What a `Compute` works on, as bits (`f32::to_bits`, `f64::to_bits`). Binary operations
/// combine lane `i` of `a` with lane `i` of `b`; unary ones take `a`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operands {
    /// Four f32 values.
    pub a32: [u32; 4],
    /// Four f32 values.
    pub b32: [u32; 4],
    /// Two f64 values.
    pub a64: [u64; 2],
    /// Two f64 values.
    pub b64: [u64; 2],
}

/// Commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Runs every operation on `operands` and stores each result under `prefix` followed by
    /// the operation's wasm instruction name (`f32.div`, `f64x2.sqrt`, ...): the result's
    /// lanes' bits, little-endian, lane 0 first. Outputs how many results it stored.
    Compute {
        /// Key prefix of this command's results.
        prefix: Vec<u8>,
        /// The operands.
        operands: Operands,
    },
}

/// Queries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// Every result stored under `prefix`: (instruction name, bits), in key order.
    Results {
        /// The prefix a `Compute` was given.
        prefix: Vec<u8>,
    },
}

/// The FSM.
#[derive(Debug)]
pub struct NanBits;

impl Fsm for NanBits {
    type Command = Command;
    type Output = u32;
    type Query = Query;
    type QueryOutput = Vec<(Vec<u8>, Vec<u8>)>;

    fn apply(ctx: &mut Context<'_>, command: Command) -> Result<u32, Error> {
        let Command::Compute { prefix, operands } = command;
        let results = compute(&operands);
        for (name, bits) in &results {
            ctx.put(&[&prefix[..], name.as_bytes()].concat(), bits);
        }
        Ok(results.len() as u32)
    }

    fn query(ctx: &Context<'_>, query: Query) -> Result<Self::QueryOutput, Error> {
        let Query::Results { prefix } = query;
        Ok(ctx
            .scan_prefix(&prefix)
            .into_iter()
            .map(|(k, v)| (k[prefix.len()..].to_vec(), v))
            .collect())
    }
}

wraft_guest::export_fsm!(NanBits);

/// Every operation's result: (wasm instruction name, lanes' bits). Natively (where
/// `core::arch::wasm32` is absent) only the scalar operations run.
pub fn compute(o: &Operands) -> Vec<(&'static str, Vec<u8>)> {
    #[cfg(target_arch = "wasm32")]
    {
        let mut out = scalar(o);
        simd::compute(o, &mut out);
        out
    }
    #[cfg(not(target_arch = "wasm32"))]
    scalar(o)
}

fn bits32(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values
        .into_iter()
        .flat_map(|v| v.to_bits().to_le_bytes())
        .collect()
}

fn bits64(values: impl IntoIterator<Item = f64>) -> Vec<u8> {
    values
        .into_iter()
        .flat_map(|v| v.to_bits().to_le_bytes())
        .collect()
}

/// The scalar instructions, one lane at a time: arithmetic (`+ - * /`), the sign operations
/// (`-x`, `abs`, `copysign`), the conversions (`as`), square root and rounding.
fn scalar(o: &Operands) -> Vec<(&'static str, Vec<u8>)> {
    let (a, b) = (o.a32.map(f32::from_bits), o.b32.map(f32::from_bits));
    let (c, d) = (o.a64.map(f64::from_bits), o.b64.map(f64::from_bits));
    let f32s = |f: fn(f32, f32) -> f32| bits32((0..4).map(|i| f(a[i], b[i])));
    let f64s = |f: fn(f64, f64) -> f64| bits64((0..2).map(|i| f(c[i], d[i])));
    Vec::from([
        ("f32.sqrt", f32s(|x, _| libm::sqrtf(x))),
        ("f32.ceil", f32s(|x, _| libm::ceilf(x))),
        ("f32.floor", f32s(|x, _| libm::floorf(x))),
        ("f32.trunc", f32s(|x, _| libm::truncf(x))),
        ("f32.nearest", f32s(|x, _| libm::rintf(x))),
        ("f64.sqrt", f64s(|x, _| libm::sqrt(x))),
        ("f64.ceil", f64s(|x, _| libm::ceil(x))),
        ("f64.floor", f64s(|x, _| libm::floor(x))),
        ("f64.trunc", f64s(|x, _| libm::trunc(x))),
        ("f64.nearest", f64s(|x, _| libm::rint(x))),
        ("f32.add", f32s(|x, y| x + y)),
        ("f32.sub", f32s(|x, y| x - y)),
        ("f32.mul", f32s(|x, y| x * y)),
        ("f32.div", f32s(|x, y| x / y)),
        ("f32.neg", f32s(|x, _| -x)),
        ("f32.abs", f32s(|x, _| x.abs())),
        ("f32.copysign", f32s(f32::copysign)),
        ("f64.add", f64s(|x, y| x + y)),
        ("f64.sub", f64s(|x, y| x - y)),
        ("f64.mul", f64s(|x, y| x * y)),
        ("f64.div", f64s(|x, y| x / y)),
        ("f64.neg", f64s(|x, _| -x)),
        ("f64.abs", f64s(|x, _| x.abs())),
        ("f64.copysign", f64s(f64::copysign)),
        ("f64.promote_f32", bits64(a.map(f64::from))),
        ("f32.demote_f64", bits32(c.map(|x| x as f32))),
    ])
}

/// Square root and rounding: `core` has none on stable Rust (`f32::sqrt` is `std`'s, and a
/// guest is `no_std`). On wasm32-unknown-unknown compiler-builtins supplies C's libm names,
/// and LLVM makes these calls the wasm instructions (`rint` rounds to nearest, ties to even:
/// `nearest`); the host's test checks that the module holds them. Natively, `std`'s.
mod libm {
    #[cfg(target_arch = "wasm32")]
    unsafe extern "C" {
        pub safe fn sqrtf(x: f32) -> f32;
        pub safe fn ceilf(x: f32) -> f32;
        pub safe fn floorf(x: f32) -> f32;
        pub safe fn truncf(x: f32) -> f32;
        pub safe fn rintf(x: f32) -> f32;
        pub safe fn sqrt(x: f64) -> f64;
        pub safe fn ceil(x: f64) -> f64;
        pub safe fn floor(x: f64) -> f64;
        pub safe fn trunc(x: f64) -> f64;
        pub safe fn rint(x: f64) -> f64;
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub use native::*;

    #[cfg(not(target_arch = "wasm32"))]
    mod native {
        pub fn sqrtf(x: f32) -> f32 {
            x.sqrt()
        }
        pub fn ceilf(x: f32) -> f32 {
            x.ceil()
        }
        pub fn floorf(x: f32) -> f32 {
            x.floor()
        }
        pub fn truncf(x: f32) -> f32 {
            x.trunc()
        }
        pub fn rintf(x: f32) -> f32 {
            x.round_ties_even()
        }
        pub fn sqrt(x: f64) -> f64 {
            x.sqrt()
        }
        pub fn ceil(x: f64) -> f64 {
            x.ceil()
        }
        pub fn floor(x: f64) -> f64 {
            x.floor()
        }
        pub fn trunc(x: f64) -> f64 {
            x.trunc()
        }
        pub fn rint(x: f64) -> f64 {
            x.round_ties_even()
        }
    }
}

/// The SIMD instructions. The guest profile does not enable simd128 for the whole crate;
/// these functions do, and the engine accepts SIMD on every backend. LLVM makes `pmin` and
/// `pmax` as what they are, a lane compare and a bitselect.
#[cfg(target_arch = "wasm32")]
mod simd {
    use alloc::vec::Vec;
    use core::arch::wasm32::*;

    use super::Operands;

    #[target_feature(enable = "simd128")]
    fn bytes(v: v128) -> Vec<u8> {
        [
            u32x4_extract_lane::<0>(v),
            u32x4_extract_lane::<1>(v),
            u32x4_extract_lane::<2>(v),
            u32x4_extract_lane::<3>(v),
        ]
        .iter()
        .flat_map(|l| l.to_le_bytes())
        .collect()
    }

    #[target_feature(enable = "simd128")]
    pub(super) fn compute(o: &Operands, out: &mut Vec<(&'static str, Vec<u8>)>) {
        let (a, b) = (
            u32x4(o.a32[0], o.a32[1], o.a32[2], o.a32[3]),
            u32x4(o.b32[0], o.b32[1], o.b32[2], o.b32[3]),
        );
        let (c, d) = (u64x2(o.a64[0], o.a64[1]), u64x2(o.b64[0], o.b64[1]));
        out.extend([
            ("f32x4.add", bytes(f32x4_add(a, b))),
            ("f32x4.sub", bytes(f32x4_sub(a, b))),
            ("f32x4.mul", bytes(f32x4_mul(a, b))),
            ("f32x4.div", bytes(f32x4_div(a, b))),
            ("f32x4.min", bytes(f32x4_min(a, b))),
            ("f32x4.max", bytes(f32x4_max(a, b))),
            ("f32x4.pmin", bytes(f32x4_pmin(a, b))),
            ("f32x4.pmax", bytes(f32x4_pmax(a, b))),
            ("f32x4.sqrt", bytes(f32x4_sqrt(a))),
            ("f32x4.ceil", bytes(f32x4_ceil(a))),
            ("f32x4.floor", bytes(f32x4_floor(a))),
            ("f32x4.trunc", bytes(f32x4_trunc(a))),
            ("f32x4.nearest", bytes(f32x4_nearest(a))),
            ("f32x4.neg", bytes(f32x4_neg(a))),
            ("f32x4.abs", bytes(f32x4_abs(a))),
            ("f64x2.add", bytes(f64x2_add(c, d))),
            ("f64x2.sub", bytes(f64x2_sub(c, d))),
            ("f64x2.mul", bytes(f64x2_mul(c, d))),
            ("f64x2.div", bytes(f64x2_div(c, d))),
            ("f64x2.min", bytes(f64x2_min(c, d))),
            ("f64x2.max", bytes(f64x2_max(c, d))),
            ("f64x2.pmin", bytes(f64x2_pmin(c, d))),
            ("f64x2.pmax", bytes(f64x2_pmax(c, d))),
            ("f64x2.sqrt", bytes(f64x2_sqrt(c))),
            ("f64x2.ceil", bytes(f64x2_ceil(c))),
            ("f64x2.floor", bytes(f64x2_floor(c))),
            ("f64x2.trunc", bytes(f64x2_trunc(c))),
            ("f64x2.nearest", bytes(f64x2_nearest(c))),
            ("f64x2.neg", bytes(f64x2_neg(c))),
            ("f64x2.abs", bytes(f64x2_abs(c))),
            ("f64x2.promote_low_f32x4", bytes(f64x2_promote_low_f32x4(a))),
            ("f32x4.demote_f64x2_zero", bytes(f32x4_demote_f64x2_zero(c))),
        ]);
    }
}
