//! What the nan-bits guest must store, on every backend and CPU: wasm's float semantics with
//! every NaN that arithmetic makes (`add`, `div`, `sqrt`, `min`, rounding, conversions, ...)
//! replaced by the canonical NaN, as `cranelift_nan_canonicalization` does, while the sign
//! operations (`neg`, `abs`, `copysign`) and the pseudo-minimum and maximum (`pmin`, `pmax`:
//! selects) pass their operand's bits through, payloads and signalling bits included.

use nan_bits::Operands;

/// Results one `Compute` stores: 26 scalar, 32 SIMD.
pub const RESULTS: usize = 58;

/// The canonical f32 NaN: positive, quiet, no payload.
pub const CANONICAL_F32: u32 = 0x7fc0_0000;
/// The canonical f64 NaN.
pub const CANONICAL_F64: u64 = 0x7ff8_0000_0000_0000;

/// Signalling NaNs, NaNs with payloads and with the sign set.
const SNAN32: u32 = 0x7f80_0001;
const SNAN64: u64 = 0x7ff0_0000_0000_0001;

/// The `Compute` commands the tests send: (key prefix, operands). Between them they make
/// NaNs every way the guest can: `0/0`, `inf - inf`, `inf/inf`, `0 * inf`, `sqrt(-1)`, and
/// arithmetic, rounding and conversions on signalling, negative and payload-carrying NaNs.
pub fn commands() -> Vec<(&'static str, Operands)> {
    let f32s = |v: [f32; 4]| v.map(f32::to_bits);
    let f64s = |v: [f64; 2]| v.map(f64::to_bits);
    let inf = f32::INFINITY;
    vec![
        (
            "invalid/",
            Operands {
                a32: f32s([-1.0, inf, 0.0, 0.0]),
                b32: f32s([2.0, inf, 0.0, inf]),
                a64: f64s([-1.0, f64::INFINITY]),
                b64: f64s([0.0, f64::NEG_INFINITY]),
            },
        ),
        (
            "zeros/",
            Operands {
                a32: f32s([-0.0, 0.0, -inf, -0.0]),
                b32: f32s([0.0, -0.0, inf, -inf]),
                a64: f64s([0.0, -0.0]),
                b64: f64s([0.0, 0.0]),
            },
        ),
        (
            "signalling/",
            Operands {
                a32: [SNAN32, 0xff80_0001, 0x7fbf_ffff, 0x7fc0_0001],
                b32: f32s([1.0, 1.0, 0.0, -2.5]),
                a64: [SNAN64, 0xfff8_0000_0000_0123],
                b64: f64s([1.0, -0.0]),
            },
        ),
        (
            "two-nans/",
            Operands {
                a32: [0x7fc1_2345, 0xffc0_0000, 0x7f80_0002, SNAN32],
                b32: [0xffd0_0001, 0x7fc5_4321, 0xff90_0000, 1.5f32.to_bits()],
                a64: [0x7ff4_0000_0000_0000, 0xfff0_0000_0000_0001],
                b64: [0x7ff8_0000_0000_0001, 0xfffc_0000_0000_0000],
            },
        ),
        (
            "ordinary/",
            Operands {
                a32: f32s([-2.5, 3.0e38, 1.0e-45, 0.1]),
                b32: f32s([2.5, 10.0, 0.5, 0.2]),
                a64: f64s([0.1, -1.0e308]),
                b64: f64s([0.2, 10.0]),
            },
        ),
    ]
}

macro_rules! lane_op {
    ($name:ident, $f:ty, $bits:ty, $canon:expr) => {
        /// Lane `op` of (x, y) under wasm's semantics with canonical NaNs.
        fn $name(op: &str, x: $f, y: $f) -> $bits {
            const SIGN: $bits = 1 << (<$bits>::BITS - 1);
            let canon = |v: $f| if v.is_nan() { $canon } else { v.to_bits() };
            let (xb, yb) = (x.to_bits(), y.to_bits());
            let any_nan = x.is_nan() || y.is_nan();
            match op {
                "add" => canon(x + y),
                "sub" => canon(x - y),
                "mul" => canon(x * y),
                "div" => canon(x / y),
                "sqrt" => canon(x.sqrt()),
                "ceil" => canon(x.ceil()),
                "floor" => canon(x.floor()),
                "trunc" => canon(x.trunc()),
                "nearest" => canon(x.round_ties_even()),
                // NaN if either is; -0 below +0.
                "min" if any_nan => $canon,
                "max" if any_nan => $canon,
                "min" if x == y => xb | yb,
                "max" if x == y => xb & yb,
                "min" => canon(x.min(y)),
                "max" => canon(x.max(y)),
                // Selects: one operand's bits, whatever they are.
                "pmin" => {
                    if y < x {
                        yb
                    } else {
                        xb
                    }
                }
                "pmax" => {
                    if x < y {
                        yb
                    } else {
                        xb
                    }
                }
                "neg" => xb ^ SIGN,
                "abs" => xb & !SIGN,
                "copysign" => (xb & !SIGN) | (yb & SIGN),
                _ => panic!("no model for {op}"),
            }
        }
    };
}
lane_op!(lane32, f32, u32, CANONICAL_F32);
lane_op!(lane64, f64, u64, CANONICAL_F64);

/// Whether `name` (a stored result's key) makes its NaNs by arithmetic, so that any NaN it
/// stored must be the canonical one.
pub fn canonicalizes(name: &str) -> bool {
    !["neg", "abs", "copysign", "pmin", "pmax"]
        .iter()
        .any(|op| name.ends_with(&format!(".{op}")))
}

/// The bytes the guest must store under `name` for `o`: lanes' bits, little-endian.
pub fn expected(name: &str, o: &Operands) -> Vec<u8> {
    let (a, b) = (o.a32.map(f32::from_bits), o.b32.map(f32::from_bits));
    let (c, d) = (o.a64.map(f64::from_bits), o.b64.map(f64::from_bits));
    let to32 = |x: f64| {
        if x.is_nan() {
            CANONICAL_F32
        } else {
            (x as f32).to_bits()
        }
    };
    let to64 = |x: f32| {
        if x.is_nan() {
            CANONICAL_F64
        } else {
            f64::from(x).to_bits()
        }
    };
    let le32 = |v: Vec<u32>| v.iter().flat_map(|l| l.to_le_bytes()).collect();
    let le64 = |v: Vec<u64>| v.iter().flat_map(|l| l.to_le_bytes()).collect();
    let (ty, op) = name.split_once('.').expect("names are type.instruction");
    match (ty, op) {
        ("f64", "promote_f32") => le64(a.iter().map(|&x| to64(x)).collect()),
        ("f64x2", "promote_low_f32x4") => le64(a[..2].iter().map(|&x| to64(x)).collect()),
        ("f32", "demote_f64") => le32(c.iter().map(|&x| to32(x)).collect()),
        ("f32x4", "demote_f64x2_zero") => le32(vec![to32(c[0]), to32(c[1]), 0, 0]),
        ("f32" | "f32x4", _) => le32((0..4).map(|i| lane32(op, a[i], b[i])).collect()),
        ("f64" | "f64x2", _) => le64((0..2).map(|i| lane64(op, c[i], d[i])).collect()),
        _ => panic!("no model for {name}"),
    }
}

/// NaNs among the lanes of `name`'s result `bits`, and how many of them are canonical.
pub fn nans(name: &str, bits: &[u8]) -> (usize, usize) {
    let (mut all, mut canonical) = (0, 0);
    if name.starts_with("f64") {
        for lane in bits.chunks_exact(8) {
            let v = u64::from_le_bytes(lane.try_into().expect("8 bytes"));
            all += usize::from(f64::from_bits(v).is_nan());
            canonical += usize::from(v == CANONICAL_F64);
        }
    } else {
        for lane in bits.chunks_exact(4) {
            let v = u32::from_le_bytes(lane.try_into().expect("4 bytes"));
            all += usize::from(f32::from_bits(v).is_nan());
            canonical += usize::from(v == CANONICAL_F32);
        }
    }
    (all, canonical)
}

/// `bits` as lanes in hex, for failure messages.
pub fn show(name: &str, bits: &[u8]) -> String {
    let lanes: Vec<String> = if name.starts_with("f64") {
        bits.chunks_exact(8)
            .map(|l| {
                format!(
                    "{:016x}",
                    u64::from_le_bytes(l.try_into().expect("8 bytes"))
                )
            })
            .collect()
    } else {
        bits.chunks_exact(4)
            .map(|l| format!("{:08x}", u32::from_le_bytes(l.try_into().expect("4 bytes"))))
            .collect()
    };
    format!("[{}]", lanes.join(" "))
}

/// Every instruction in `module`'s code, in lower case without separators (`f32x4pmin`), to
/// check that the guest's results come from the instructions they are named after (not
/// folded away by the compiler, nor made another way).
pub fn instructions(module: &[u8]) -> std::collections::HashSet<String> {
    use wasmtime::wasmparser::{Parser, Payload};
    let mut found = std::collections::HashSet::new();
    for payload in Parser::new(0).parse_all(module) {
        if let Payload::CodeSectionEntry(body) = payload.expect("the guest parses") {
            let mut ops = body.get_operators_reader().expect("a body");
            while !ops.eof() {
                let op = format!("{:?}", ops.read().expect("an operator"));
                found.insert(squash(&op));
            }
        }
    }
    found
}

/// The instructions the guest's result `name` comes from, squashed: the one it is named
/// after, except `pmin` and `pmax`, which LLVM makes as what they are (a lane compare and a
/// bitselect).
pub fn made_by(name: &str) -> Vec<String> {
    match name.split_once('.') {
        Some((ty, "pmin" | "pmax")) => vec![squash(&format!("{ty}.lt")), squash("v128.bitselect")],
        _ => vec![squash(name)],
    }
}

/// `f32x4.pmin` and `F32x4PMin { .. }` alike as `f32x4pmin`.
pub fn squash(name: &str) -> String {
    name.chars()
        .take_while(|c| !c.is_whitespace())
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_lowercase()
}
