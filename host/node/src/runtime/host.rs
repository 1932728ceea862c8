//! The host imports (the `wraft` import module) and the per-call state they work on.

use wasmtime::{Caller, Linker, Memory, ResourceLimiter};
use wraft_core::ApplyError;
use wraft_core::abi::{self, CONTEXT_LEN, EntryContext, fuel};
use wraft_core::rng::EntryRng;

use super::HostAbort;
use super::keyspace::Keyspace;

/// Longest log message kept from a guest (longer ones are cut; the rest still costs fuel).
const MAX_LOG_LEN: usize = 4096;
/// Longest abort (panic) message kept from a guest.
const MAX_ABORT_LEN: usize = 1024;

/// Everything one call's store holds.
pub(crate) struct CallState {
    pub(crate) keyspace: Keyspace,
    pub(crate) ctx: EntryContext,
    pub(crate) rng: EntryRng,
    pub(crate) memory: Option<Memory>,
    /// The call-depth counter (see `depth`), read after a trap.
    pub(crate) depth: Option<wasmtime::Global>,
    /// Pending bytes for `take_result`.
    pub(crate) result: Option<Vec<u8>>,
    pub(crate) output: Vec<u8>,
    pub(crate) max_output: u32,
    pub(crate) memory_pages: u32,
    pub(crate) fsm: String,
    /// Whether host calls cost fuel ([`fuel`]): every call but the apply of a first-format
    /// entry, which replays as it first applied.
    metered: bool,
    /// Log bytes this call wrote to the node's log, and those dropped past the bound.
    logged: usize,
    pub(crate) log_dropped: usize,
    scratch: Vec<u8>,
}

impl CallState {
    pub(crate) fn new(
        keyspace: Keyspace,
        ctx: EntryContext,
        max_output: u32,
        memory_pages: u32,
        fsm: String,
        metered: bool,
    ) -> Self {
        Self {
            keyspace,
            rng: EntryRng::new(ctx.index, ctx.position),
            ctx,
            memory: None,
            depth: None,
            result: None,
            output: Vec::new(),
            max_output,
            memory_pages,
            fsm,
            metered,
            logged: 0,
            log_dropped: 0,
            scratch: Vec::new(),
        }
    }
}

/// The fuel a metered call has left (`u64::MAX` when host calls are free).
fn fuel_left(c: &Caller<'_, CallState>) -> wasmtime::Result<u64> {
    if c.data().metered {
        c.get_fuel()
    } else {
        Ok(u64::MAX)
    }
}

/// Takes `units` of fuel from a metered call, or traps it with `OutOfFuel` (leaving it none)
/// if it has fewer: the same units at the same point on every replica.
fn charge(c: &mut Caller<'_, CallState>, units: u64) -> wasmtime::Result<()> {
    if !c.data().metered {
        return Ok(());
    }
    let left = c.get_fuel()?;
    match left.checked_sub(units) {
        Some(rest) => c.set_fuel(rest),
        None => {
            c.set_fuel(0)?;
            Err(wasmtime::Trap::OutOfFuel.into())
        }
    }
}

/// Units for `n` bytes at `per_byte`, saturating.
fn bytes(n: usize, per_byte: u64) -> u64 {
    (n as u64).saturating_mul(per_byte)
}

impl ResourceLimiter for CallState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_pages as usize * 65536 {
            return Err(abort(ApplyError::MemoryLimit {
                pages: self.memory_pages,
            }));
        }
        Ok(true)
    }

    /// The limits allowed the growth but this host could not back it (a 32-bit board out of
    /// address space or memory). Answering -1 to the guest would make this replica's result
    /// differ from the others', so the call fails as a fault of this node instead.
    /// wasmtime also reports here a growth past the module's declared maximum or the memory
    /// type's 4 GiB, which fails (-1) the same way on every node; only an OS refusal is this
    /// node's own.
    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        let host_refused = error.is::<wasmtime::OutOfMemory>()
            || error.chain().any(|c| c.is::<rustix::io::Errno>());
        if host_refused {
            Err(error.context("this host could not allocate the memory the FSM grew into"))
        } else {
            Ok(())
        }
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= super::engine::TABLE_ELEMENTS)
    }
}

fn abort(e: ApplyError) -> wasmtime::Error {
    wasmtime::Error::new(HostAbort::Apply(e))
}

fn violation(what: &str) -> wasmtime::Error {
    abort(ApplyError::AbiViolation(what.into()))
}

fn host(e: HostAbort) -> wasmtime::Error {
    wasmtime::Error::new(e)
}

/// The guest's memory and the call state, borrowed together.
fn split<'a>(
    caller: &'a mut Caller<'_, CallState>,
) -> wasmtime::Result<(&'a mut [u8], &'a mut CallState)> {
    let memory = caller
        .data()
        .memory
        .ok_or_else(|| violation("memory is not available yet"))?;
    Ok(memory.data_and_store_mut(caller))
}

fn range(ptr: i32, len: i32, mem_len: usize) -> wasmtime::Result<std::ops::Range<usize>> {
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    match p.checked_add(l) {
        Some(end) if end <= mem_len => Ok(p..end),
        _ => Err(violation(&format!(
            "pointer {p:#x}+{l} is outside linear memory"
        ))),
    }
}

fn check_len(what: &str, len: i32, limit: usize) -> wasmtime::Result<()> {
    if len as u32 as usize > limit {
        return Err(abort(ApplyError::TooLarge {
            what: what.into(),
            len: len as u32 as u64,
            limit: limit as u64,
        }));
    }
    Ok(())
}

/// Defines every import of [`abi::IMPORTS`] in `linker`.
pub(crate) fn define_imports(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    let m = abi::IMPORT_MODULE;
    linker.func_wrap(
        m,
        "kv_get",
        |mut c: Caller<'_, CallState>, kp: i32, kl: i32| {
            charge(&mut c, fuel::HOST_CALL)?;
            // The value is copied only if the call can pay for it.
            let affordable = fuel_left(&c)? / fuel::READ_BYTE;
            let (mem, st) = split(&mut c)?;
            let key = &mem[range(kp, kl, mem.len())?];
            let mut value = std::mem::take(&mut st.scratch);
            let found = st.keyspace.get(key, &mut value, affordable).map_err(host)?;
            let Some(len) = found else {
                st.scratch = value;
                return Ok(-1);
            };
            st.result = Some(value);
            charge(&mut c, bytes(len, fuel::READ_BYTE))?;
            Ok(len as i32)
        },
    )?;
    linker.func_wrap(
        m,
        "kv_put",
        |mut c: Caller<'_, CallState>, kp: i32, kl: i32, vp: i32, vl: i32| {
            check_len("key", kl, abi::MAX_KEY_LEN)?;
            check_len("value", vl, abi::MAX_VALUE_LEN)?;
            let stored = kl as u32 as usize + vl as u32 as usize;
            charge(&mut c, fuel::HOST_CALL + bytes(stored, fuel::WRITE_BYTE))?;
            let (mem, st) = split(&mut c)?;
            let key = &mem[range(kp, kl, mem.len())?];
            let value = &mem[range(vp, vl, mem.len())?];
            st.keyspace.put(key, value).map_err(host)
        },
    )?;
    linker.func_wrap(
        m,
        "kv_delete",
        |mut c: Caller<'_, CallState>, kp: i32, kl: i32| {
            check_len("key", kl, abi::MAX_KEY_LEN)?;
            let named = kl as u32 as usize;
            charge(&mut c, fuel::HOST_CALL + bytes(named, fuel::WRITE_BYTE))?;
            let (mem, st) = split(&mut c)?;
            let key = &mem[range(kp, kl, mem.len())?];
            Ok(i32::from(st.keyspace.delete(key).map_err(host)?))
        },
    )?;
    linker.func_wrap(
        m,
        "kv_scan",
        |mut c: Caller<'_, CallState>, sp: i32, sl: i32, ep: i32, el: i32, limit: i32| {
            charge(&mut c, fuel::HOST_CALL)?;
            let (mem, st) = split(&mut c)?;
            let start = &mem[range(sp, sl, mem.len())?];
            let end = &mem[range(ep, el, mem.len())?];
            let limit = (limit.max(0) as u32).min(abi::MAX_SCAN_ITEMS) as usize;
            let (page, items) = st
                .keyspace
                .scan_page(start, end, limit, abi::MAX_SCAN_BYTES)
                .map_err(host)?;
            let len = page.len();
            st.result = Some(page);
            // A page is at most MAX_SCAN_ITEMS pairs and MAX_SCAN_BYTES: built, then paid for.
            let cost = bytes(len, fuel::READ_BYTE).saturating_add(bytes(items, fuel::SCAN_ITEM));
            charge(&mut c, cost)?;
            Ok(len as i32)
        },
    )?;
    linker.func_wrap(
        m,
        "take_result",
        |mut c: Caller<'_, CallState>, dst: i32| {
            let pending = c.data().result.as_ref().map_or(0, Vec::len);
            charge(&mut c, fuel::HOST_CALL + bytes(pending, fuel::READ_BYTE))?;
            let (mem, st) = split(&mut c)?;
            let result = st
                .result
                .take()
                .ok_or_else(|| violation("take_result with no pending result"))?;
            let r = range(dst, result.len() as i32, mem.len())?;
            mem[r].copy_from_slice(&result);
            st.scratch = result;
            Ok(())
        },
    )?;
    linker.func_wrap(
        m,
        "set_output",
        |mut c: Caller<'_, CallState>, p: i32, l: i32| {
            let limit = c.data().max_output;
            if l as u32 > limit {
                return Err(abort(ApplyError::OutputTooLarge {
                    len: u64::from(l as u32),
                    limit,
                }));
            }
            let len = l as u32 as usize;
            charge(&mut c, fuel::HOST_CALL + bytes(len, fuel::OUTPUT_BYTE))?;
            let (mem, st) = split(&mut c)?;
            let bytes = &mem[range(p, l, mem.len())?];
            st.output.clear();
            st.output.extend_from_slice(bytes);
            Ok(())
        },
    )?;
    linker.func_wrap(
        m,
        "entry_context",
        |mut c: Caller<'_, CallState>, dst: i32| {
            charge(&mut c, fuel::HOST_CALL)?;
            let (mem, st) = split(&mut c)?;
            let r = range(dst, CONTEXT_LEN as i32, mem.len())?;
            mem[r].copy_from_slice(&st.ctx.encode());
            Ok(())
        },
    )?;
    linker.func_wrap(m, "random_u64", |mut c: Caller<'_, CallState>| {
        charge(&mut c, fuel::HOST_CALL)?;
        Ok(c.data_mut().rng.next_u64() as i64)
    })?;
    linker.func_wrap(
        m,
        "log_message",
        |mut c: Caller<'_, CallState>, level: i32, p: i32, l: i32| {
            let len = l as u32 as usize;
            charge(&mut c, fuel::HOST_CALL + bytes(len, fuel::LOG_BYTE))?;
            let (mem, st) = split(&mut c)?;
            let message = &mem[range(p, l, mem.len())?];
            let kept = message.len().min(MAX_LOG_LEN);
            // The node's log gets a bounded share of what one call writes.
            if st.logged + kept > abi::MAX_LOG_BYTES_PER_CALL {
                st.log_dropped += message.len();
                return Ok(());
            }
            st.logged += kept;
            let text = String::from_utf8_lossy(&message[..kept]);
            let (fsm, index) = (st.fsm.as_str(), st.ctx.index);
            match level {
                abi::log_level::ERROR => tracing::error!(fsm, index, "{text}"),
                abi::log_level::WARN => tracing::warn!(fsm, index, "{text}"),
                abi::log_level::INFO => tracing::info!(fsm, index, "{text}"),
                _ => tracing::debug!(fsm, index, "{text}"),
            }
            Ok(())
        },
    )?;
    linker.func_wrap(
        m,
        "abort_call",
        |mut c: Caller<'_, CallState>, p: i32, l: i32| -> wasmtime::Result<()> {
            charge(&mut c, fuel::HOST_CALL)?;
            let (mem, _) = split(&mut c)?;
            let bytes = &mem[range(p, l, mem.len())?];
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_ABORT_LEN)]);
            Err(abort(ApplyError::Panicked(text.into_owned())))
        },
    )?;
    Ok(())
}
