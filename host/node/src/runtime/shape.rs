//! A module's shape, bounded before it is compiled: Cranelift's time and memory grow faster
//! than linearly in some of them (a function's size, its locals, its nesting, its data), and
//! every replica compiles a deployed module, edge boards included. The bounds are checked
//! by reading the module (wasmparser), identically on every host: what one node accepts,
//! every node accepts.

use wasmtime::wasmparser::{self, Operator, Parser, Payload, TypeRef};

use super::ModuleError;
use super::engine::{MAX_MEMORY_PAGES, TABLE_ELEMENTS};

/// The bounds on a module's shape (docs/abi.md, "Module shape").
#[derive(Debug, Clone, Copy)]
pub struct ShapeLimits {
    /// Functions the module defines.
    pub functions: u32,
    /// Bytes of one function's body.
    pub function_bytes: u32,
    /// Bytes of every function body together.
    pub code_bytes: u64,
    /// Locals one function declares (besides its parameters).
    pub locals: u32,
    /// Blocks, loops and ifs open at once in one function.
    pub nesting: u32,
    /// Targets of one `br_table`.
    pub br_table_targets: u32,
    /// Bytes of data segments together.
    pub data_bytes: u64,
    /// Data segments.
    pub data_segments: u32,
    /// Elements of element segments together.
    pub elements: u64,
    /// Globals the module defines.
    pub globals: u32,
    /// Function types.
    pub types: u32,
    /// Exports.
    pub exports: u32,
}

/// The bounds every node applies.
pub const SHAPE: ShapeLimits = ShapeLimits {
    functions: 10_000,
    function_bytes: 128 << 10,
    code_bytes: 512 << 10,
    locals: 2_000,
    nesting: 256,
    br_table_targets: 10_000,
    data_bytes: 4 << 20,
    data_segments: 1_000,
    elements: TABLE_ELEMENTS as u64,
    globals: 1_000,
    types: 1_000,
    exports: 1_000,
};

fn over(what: &str, found: u64, limit: u64) -> Result<(), ModuleError> {
    if found > limit {
        return Err(ModuleError::Shape {
            what: what.into(),
            found,
            limit,
        });
    }
    Ok(())
}

fn malformed(e: wasmparser::BinaryReaderError) -> ModuleError {
    ModuleError::Compile(e.to_string())
}

/// Checks `bytes` against `limits`, and that it has at most one memory and one table, its
/// own (not imported), of sizes every node can give it.
pub fn check(bytes: &[u8], limits: &ShapeLimits) -> Result<(), ModuleError> {
    let (mut functions, mut code_bytes, mut data_bytes, mut elements) = (0u64, 0u64, 0u64, 0u64);
    let (mut memories, mut tables) = (0u32, 0u32);
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(malformed)? {
            Payload::TypeSection(s) => {
                over("function types", s.count().into(), limits.types.into())?
            }
            Payload::ImportSection(s) => {
                // Imported memories and tables are never allowed (only `wraft` functions are).
                for import in s.into_imports() {
                    match import.map_err(malformed)?.ty {
                        TypeRef::Memory(_) => memories += 2,
                        TypeRef::Table(_) => tables += 2,
                        _ => {}
                    }
                }
            }
            Payload::FunctionSection(s) => {
                functions += u64::from(s.count());
                over("functions", functions, limits.functions.into())?;
            }
            Payload::TableSection(s) => {
                for table in s {
                    let table = table.map_err(malformed)?;
                    tables += 1;
                    over("table elements", table.ty.initial, TABLE_ELEMENTS as u64)?;
                }
            }
            Payload::MemorySection(s) => {
                for memory in s {
                    let memory = memory.map_err(malformed)?;
                    memories += 1;
                    over(
                        "initial memory pages",
                        memory.initial,
                        MAX_MEMORY_PAGES.into(),
                    )?;
                }
            }
            Payload::GlobalSection(s) => over("globals", s.count().into(), limits.globals.into())?,
            Payload::ExportSection(s) => over("exports", s.count().into(), limits.exports.into())?,
            Payload::ElementSection(s) => {
                for segment in s {
                    let segment = segment.map_err(malformed)?;
                    elements += u64::from(match segment.items {
                        wasmparser::ElementItems::Functions(f) => f.count(),
                        wasmparser::ElementItems::Expressions(_, e) => e.count(),
                    });
                    over("table elements in segments", elements, limits.elements)?;
                }
            }
            Payload::DataSection(s) => {
                over(
                    "data segments",
                    s.count().into(),
                    limits.data_segments.into(),
                )?;
                for segment in s {
                    data_bytes += segment.map_err(malformed)?.data.len() as u64;
                    over("bytes of data segments", data_bytes, limits.data_bytes)?;
                }
            }
            Payload::CodeSectionEntry(body) => {
                let len = body.range().len() as u64;
                over("bytes of one function", len, limits.function_bytes.into())?;
                code_bytes += len;
                over("bytes of code", code_bytes, limits.code_bytes)?;
                check_body(&body, limits)?;
            }
            _ => {}
        }
    }
    // None is left to the export check, which names the missing `memory`.
    over("memories (defined, not imported)", memories.into(), 1)?;
    over("tables (defined, not imported)", tables.into(), 1)
}

/// A function's locals, nesting and `br_table` sizes.
fn check_body(
    body: &wasmparser::FunctionBody<'_>,
    limits: &ShapeLimits,
) -> Result<(), ModuleError> {
    let mut locals = 0u64;
    for group in body.get_locals_reader().map_err(malformed)? {
        locals += u64::from(group.map_err(malformed)?.0);
        over("locals of one function", locals, limits.locals.into())?;
    }
    let mut depth = 0u64;
    let mut ops = body.get_operators_reader().map_err(malformed)?;
    while !ops.eof() {
        match ops.read().map_err(malformed)? {
            Operator::Block { .. }
            | Operator::Loop { .. }
            | Operator::If { .. }
            | Operator::TryTable { .. } => {
                depth += 1;
                over(
                    "blocks open at once in one function",
                    depth,
                    limits.nesting.into(),
                )?;
            }
            Operator::End => depth = depth.saturating_sub(1),
            Operator::BrTable { targets } => {
                // Its labels and its default.
                over(
                    "targets of one br_table",
                    u64::from(targets.len()) + 1,
                    limits.br_table_targets.into(),
                )?;
            }
            _ => {}
        }
    }
    Ok(())
}
