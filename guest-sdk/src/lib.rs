//! wraft-guest: write a wraft state machine (FSM) as plain typed Rust.
//!
//! ```ignore
//! use wraft_guest::{Context, Error, Fsm};
//!
//! pub struct Counter;
//! impl Fsm for Counter {
//!     type Command = u64;           // add this much
//!     type Output = u64;            // the new total
//!     type Query = ();
//!     type QueryOutput = u64;
//!     fn apply(ctx: &mut Context<'_>, add: u64) -> Result<u64, Error> {
//!         let total = ctx.get_as::<u64>(b"total")?.unwrap_or(0) + add;
//!         ctx.put_as(b"total", &total)?;
//!         Ok(total)
//!     }
//!     fn query(ctx: &Context<'_>, _: ()) -> Result<u64, Error> {
//!         Ok(ctx.get_as::<u64>(b"total")?.unwrap_or(0))
//!     }
//! }
//! wraft_guest::export_fsm!(Counter);
//! ```
//!
//! State lives in the host's key-value store, never in statics: every call runs in a fresh
//! wasm instance. Compile with `--target wasm32-unknown-unknown`; the same code runs natively
//! against [`testing::TestFsm`] for unit tests. See docs/fsm-guide.md.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

mod context;
mod error;
pub mod hex;
pub mod testing;

#[cfg(target_arch = "wasm32")]
mod bump;
#[cfg(target_arch = "wasm32")]
mod wasm;

#[doc(hidden)]
pub mod __rt;

pub use context::{Context, Host, decode};
pub use error::Error;
pub use hex::{Hex32, HexBytes};
pub use serde;
pub use wraft_core::abi::EntryContext;

use serde::{Serialize, de::DeserializeOwned};

/// A replicated state machine. Implement it on a unit struct and export it with
/// [`export_fsm!`].
pub trait Fsm {
    /// What `apply` takes: one command from the log.
    type Command: Serialize + DeserializeOwned;
    /// What `apply` returns to the proposer.
    type Output: Serialize + DeserializeOwned;
    /// What `query` takes.
    type Query: Serialize + DeserializeOwned;
    /// What `query` returns.
    type QueryOutput: Serialize + DeserializeOwned;

    /// The FSM's schema version, passed as `from_version` to a successor's `migrate`.
    const VERSION: u32 = 1;

    /// Applies one committed command. Returning `Err` rejects it: its writes are discarded and
    /// the error is the entry's response on every replica.
    fn apply(ctx: &mut Context<'_>, command: Self::Command) -> Result<Self::Output, Error>;

    /// Answers a read-only query against the current state.
    fn query(ctx: &Context<'_>, query: Self::Query) -> Result<Self::QueryOutput, Error>;

    /// Runs once when the FSM instance is created, in the same transaction.
    fn init(_ctx: &mut Context<'_>) -> Result<(), Error> {
        Ok(())
    }

    /// Runs when an FSM instance is upgraded to this module, in the upgrade's transaction;
    /// `from_version` is the previous module's [`Fsm::VERSION`]. `Err` refuses the upgrade.
    fn migrate(_ctx: &mut Context<'_>, _from_version: u32) -> Result<(), Error> {
        Ok(())
    }
}

/// Exports an [`Fsm`] implementation as the wraft ABI entry points. Expands to nothing
/// when not compiling for wasm32, so the crate also builds (and tests) natively.
#[macro_export]
macro_rules! export_fsm {
    ($fsm:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            #[unsafe(no_mangle)]
            pub extern "C" fn wraft_abi_version() -> i32 {
                $crate::__rt::abi_version()
            }
            #[unsafe(no_mangle)]
            pub extern "C" fn wraft_fsm_version() -> i32 {
                <$fsm as $crate::Fsm>::VERSION as i32
            }
            #[unsafe(no_mangle)]
            pub extern "C" fn wraft_alloc(len: i32) -> i32 {
                $crate::__rt::alloc(len)
            }
            #[unsafe(no_mangle)]
            pub extern "C" fn wraft_apply(ptr: i32, len: i32) -> i32 {
                $crate::__rt::apply::<$fsm>(ptr, len)
            }
            #[unsafe(no_mangle)]
            pub extern "C" fn wraft_query(ptr: i32, len: i32) -> i32 {
                $crate::__rt::query::<$fsm>(ptr, len)
            }
            #[unsafe(no_mangle)]
            pub extern "C" fn wraft_init() -> i32 {
                $crate::__rt::init::<$fsm>()
            }
            #[unsafe(no_mangle)]
            pub extern "C" fn wraft_migrate(from_version: i32) -> i32 {
                $crate::__rt::migrate::<$fsm>(from_version)
            }
            $crate::__export_json!($fsm);
        };
    };
}

#[cfg(feature = "json")]
#[doc(hidden)]
#[macro_export]
macro_rules! __export_json {
    ($fsm:ty) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn wraft_command_from_json(ptr: i32, len: i32) -> i32 {
            $crate::__rt::from_json::<<$fsm as $crate::Fsm>::Command>(ptr, len)
        }
        #[unsafe(no_mangle)]
        pub extern "C" fn wraft_output_to_json(ptr: i32, len: i32) -> i32 {
            $crate::__rt::to_json::<<$fsm as $crate::Fsm>::Output>(ptr, len)
        }
        #[unsafe(no_mangle)]
        pub extern "C" fn wraft_query_from_json(ptr: i32, len: i32) -> i32 {
            $crate::__rt::from_json::<<$fsm as $crate::Fsm>::Query>(ptr, len)
        }
        #[unsafe(no_mangle)]
        pub extern "C" fn wraft_query_output_to_json(ptr: i32, len: i32) -> i32 {
            $crate::__rt::to_json::<<$fsm as $crate::Fsm>::QueryOutput>(ptr, len)
        }
    };
}

#[cfg(not(feature = "json"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __export_json {
    ($fsm:ty) => {};
}
