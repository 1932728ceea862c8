//! A deterministic call depth. wasmtime bounds recursion by native stack, so the depth at
//! which a guest traps depends on the CPU, the backend and even the build of wraft: one
//! replica could fail a command another applies. Every module is therefore rewritten before
//! it is compiled, as wasm-instrument's stack limiter does: each function adds its cost to a
//! global counter on entry (trapping past [`DEPTH_LIMIT`]) and takes it off on exit. A
//! function's cost grows with the stack it can use (parameters, locals and its deepest
//! operand stack), so the counter bounds native stack too: the limit is reached, the same
//! way on every node, long before wasmtime's own stack limit (tests sweep the depth on both
//! backends to show it).
//!
//! Hand-written on wasmparser and wasm-encoder's re-encoder (which wasmtime itself builds
//! on): wasm-instrument, the crate that does this for Substrate, rewrites through
//! parity-wasm, which reads none of the post-MVP features Rust's wasm32 target emits.

use wasm_encoder::reencode::{self, Reencode};
use wasm_encoder::{BlockType, ConstExpr, ExportKind, GlobalType, Instruction, ValType};
use wasmtime::wasmparser::{self, Operator, Parser, Payload, ValidPayload, Validator};

use super::ModuleError;

/// The counter's bound, in units of [`function_cost`]: what every call chain may hold at
/// once. A call chain of small functions (cost ~10) gets ~5,000 frames.
pub const DEPTH_LIMIT: u32 = 50_000;
/// Units every frame costs beyond its values (return address, saved registers).
pub const FRAME_UNITS: u32 = 8;
/// The export the counter is read through after a trap, to tell a depth trap from others.
pub const DEPTH_EXPORT: &str = "__wraft_call_depth";
/// Bumped whenever the rewriting changes, so compiled artifacts of an older rewrite are
/// never loaded from the cache.
pub const REWRITE_VERSION: u32 = 1;

/// A function's cost: [`FRAME_UNITS`] plus one unit per parameter, local and slot of its
/// deepest operand stack.
fn function_cost(params: u32, locals: u32, max_operands: u32) -> u32 {
    FRAME_UNITS
        .saturating_add(params)
        .saturating_add(locals)
        .saturating_add(max_operands)
}

/// What the rewrite needs to know of each defined function.
struct Function {
    cost: u32,
    /// Its result type, if it has one (functions with more are refused).
    result: Option<wasmparser::ValType>,
}

/// Validates `bytes` and measures its functions; also returns how many globals it has (the
/// counter's index).
fn analyze(bytes: &[u8]) -> Result<(Vec<Function>, u32), ModuleError> {
    let invalid = |e: wasmparser::BinaryReaderError| ModuleError::Compile(e.to_string());
    let mut validator = Validator::new_with_features(wasmparser::WasmFeatures::default());
    let mut signatures: Vec<(u32, Option<wasmparser::ValType>)> = Vec::new();
    let mut defined_types = Vec::new();
    let mut globals = 0;
    let mut functions = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(invalid)?;
        match &payload {
            Payload::TypeSection(s) => {
                for group in s.clone() {
                    for ty in group.map_err(invalid)?.into_types() {
                        let signature = match ty.composite_type.inner {
                            wasmparser::CompositeInnerType::Func(f) => {
                                if f.results().len() > 1 {
                                    return Err(ModuleError::Shape {
                                        what: "results of one function type".into(),
                                        found: f.results().len() as u64,
                                        limit: 1,
                                    });
                                }
                                (f.params().len() as u32, f.results().first().copied())
                            }
                            _ => (0, None),
                        };
                        signatures.push(signature);
                    }
                }
            }
            Payload::FunctionSection(s) => {
                for ty in s.clone() {
                    defined_types.push(ty.map_err(invalid)?);
                }
            }
            Payload::ImportSection(s) => {
                for import in s.clone().into_imports() {
                    if let wasmparser::TypeRef::Global(_) = import.map_err(invalid)?.ty {
                        globals += 1;
                    }
                }
            }
            Payload::GlobalSection(s) => globals += s.count(),
            _ => {}
        }
        if let ValidPayload::Func(to_validate, body) =
            validator.payload(&payload).map_err(invalid)?
        {
            let index = functions.len();
            let ty = *defined_types
                .get(index)
                .ok_or_else(|| ModuleError::Compile("a body without a function".into()))?;
            let &(params, result) = signatures
                .get(ty as usize)
                .ok_or_else(|| ModuleError::Compile("a function of an unknown type".into()))?;
            let mut f = to_validate.into_validator(Default::default());
            let mut locals = 0u32;
            for group in body.get_locals_reader().map_err(invalid)? {
                let (count, ty) = group.map_err(invalid)?;
                f.define_locals(body.range().start, count, ty)
                    .map_err(invalid)?;
                locals = locals.saturating_add(count);
            }
            let mut ops = body.get_operators_reader().map_err(invalid)?;
            let mut deepest = 0;
            while !ops.eof() {
                let (op, offset) = ops.read_with_offset().map_err(invalid)?;
                f.op(offset, &op).map_err(invalid)?;
                deepest = deepest.max(f.operand_stack_height());
            }
            functions.push(Function {
                cost: function_cost(params, locals, deepest),
                result,
            });
        }
    }
    Ok((functions, globals))
}

/// The rewrite of one module.
struct Rewrite {
    functions: Vec<Function>,
    next: usize,
    /// Index of the counter among the module's globals (after its own).
    counter: u32,
    global_section_seen: bool,
}

impl Rewrite {
    fn counter_global() -> (GlobalType, ConstExpr) {
        let ty = GlobalType {
            val_type: ValType::I32,
            mutable: true,
            shared: false,
        };
        (ty, ConstExpr::i32_const(0))
    }
}

impl Reencode for Rewrite {
    type Error = ModuleError;

    fn parse_global_section(
        &mut self,
        globals: &mut wasm_encoder::GlobalSection,
        section: wasmparser::GlobalSectionReader<'_>,
    ) -> Result<(), reencode::Error<ModuleError>> {
        reencode::utils::parse_global_section(self, globals, section)?;
        let (ty, init) = Self::counter_global();
        globals.global(ty, &init);
        self.global_section_seen = true;
        Ok(())
    }

    fn intersperse_section_hook(
        &mut self,
        module: &mut wasm_encoder::Module,
        _after: Option<wasm_encoder::SectionId>,
        before: Option<wasm_encoder::SectionId>,
    ) -> Result<(), reencode::Error<ModuleError>> {
        use wasm_encoder::SectionId as S;
        // A module without globals gets a section for the counter, in its place.
        let past_globals = matches!(
            before,
            Some(S::Export | S::Start | S::Element | S::DataCount | S::Code | S::Data) | None
        );
        if past_globals && !self.global_section_seen {
            let mut globals = wasm_encoder::GlobalSection::new();
            let (ty, init) = Self::counter_global();
            globals.global(ty, &init);
            module.section(&globals);
            self.global_section_seen = true;
        }
        Ok(())
    }

    fn parse_export_section(
        &mut self,
        exports: &mut wasm_encoder::ExportSection,
        section: wasmparser::ExportSectionReader<'_>,
    ) -> Result<(), reencode::Error<ModuleError>> {
        reencode::utils::parse_export_section(self, exports, section)?;
        exports.export(DEPTH_EXPORT, ExportKind::Global, self.counter);
        Ok(())
    }

    fn parse_function_body(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        body: wasmparser::FunctionBody<'_>,
    ) -> Result<(), reencode::Error<ModuleError>> {
        let Function { cost, result } = self
            .functions
            .get(self.next)
            .map(|f| Function {
                cost: f.cost,
                result: f.result,
            })
            .ok_or_else(|| {
                reencode::Error::UserError(ModuleError::Compile(
                    "more bodies than functions".into(),
                ))
            })?;
        self.next += 1;
        let mut f = self.new_function_with_parsed_locals(&body)?;
        let counter = self.counter;
        // Prologue: count this frame in, trap past the limit.
        f.instruction(&Instruction::GlobalGet(counter));
        f.instruction(&Instruction::I32Const(cost as i32));
        f.instruction(&Instruction::I32Add);
        f.instruction(&Instruction::GlobalSet(counter));
        f.instruction(&Instruction::GlobalGet(counter));
        f.instruction(&Instruction::I32Const(DEPTH_LIMIT as i32));
        f.instruction(&Instruction::I32GtU);
        f.instruction(&Instruction::If(BlockType::Empty));
        f.instruction(&Instruction::Unreachable);
        f.instruction(&Instruction::End);
        // The body runs in a block of the function's result type: branches to the
        // function's label and `return`s land after it, where the frame is counted out.
        let block = match result {
            Some(ty) => BlockType::Result(self.val_type(ty)?),
            None => BlockType::Empty,
        };
        f.instruction(&Instruction::Block(block));
        let mut depth = 0u32;
        let mut ops = body.get_operators_reader()?;
        while !ops.eof() {
            let op = ops.read()?;
            match op {
                Operator::Block { .. }
                | Operator::Loop { .. }
                | Operator::If { .. }
                | Operator::TryTable { .. } => depth += 1,
                Operator::End if depth == 0 => {
                    // The function's own end: close the block, count the frame out.
                    f.instruction(&Instruction::End);
                    f.instruction(&Instruction::GlobalGet(counter));
                    f.instruction(&Instruction::I32Const(cost as i32));
                    f.instruction(&Instruction::I32Sub);
                    f.instruction(&Instruction::GlobalSet(counter));
                    f.instruction(&Instruction::End);
                    continue;
                }
                Operator::End => depth -= 1,
                Operator::Return => {
                    f.instruction(&Instruction::Br(depth));
                    continue;
                }
                Operator::ReturnCall { .. }
                | Operator::ReturnCallIndirect { .. }
                | Operator::ReturnCallRef { .. } => {
                    return Err(reencode::Error::UserError(ModuleError::Compile(
                        "tail calls are not supported".into(),
                    )));
                }
                _ => {}
            }
            f.instruction(&self.instruction(op)?);
        }
        code.function(&f);
        Ok(())
    }
}

/// `bytes` with the call-depth counter woven in (validated on the way).
pub fn instrument(bytes: &[u8]) -> Result<Vec<u8>, ModuleError> {
    let (functions, globals) = analyze(bytes)?;
    let mut rewrite = Rewrite {
        functions,
        next: 0,
        counter: globals,
        global_section_seen: false,
    };
    let mut module = wasm_encoder::Module::new();
    rewrite
        .parse_core_module(&mut module, Parser::new(0), bytes)
        .map_err(|e| match e {
            reencode::Error::UserError(e) => e,
            other => ModuleError::Compile(other.to_string()),
        })?;
    Ok(module.finish())
}

/// Whether a trapped call's counter shows it went past the limit.
pub fn exceeded(counter: i32) -> bool {
    counter as u32 > DEPTH_LIMIT
}
