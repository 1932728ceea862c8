//! wraft's passive voter as Cortex-M4 firmware (QEMU `mps2-an386`; docs/embedded.md).
//!
//! Two UARTs, one wired to each Linux host's bridge, both served by one
//! [`PassiveVoter`]; its state on NOR flash (here a semihosted file, `wraft-voter.flash` in
//! QEMU's working directory). It never sends anything it was not asked for, and answers only
//! frames sealed with the cluster key on its flash: without one it refuses to start.
#![no_std]
#![no_main]

extern crate alloc;

mod flash;
mod uart;

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::{entry, exception};
use cortex_m_semihosting::{debug, hprintln};
use embedded_alloc::LlffHeap as Heap;
use wraft_core::link::auth::VoterAuth;
use wraft_core::voter::{FlashStore, PassiveVoter, VoterPort, load_key};

#[global_allocator]
static HEAP: Heap = Heap::empty();
/// A decoded request (at most 16 runs: decoding refuses more before allocating), the state's
/// copy while it is handled (at most 16 runs), the answer and its frame: about 2 KiB at
/// most, with room for fragmentation.
const HEAP_SIZE: usize = 8 * 1024;

/// Milliseconds since boot, counted by SysTick.
static MILLIS: AtomicU32 = AtomicU32::new(0);
/// The processor clock of the MPS2 FPGA images.
const CORE_HZ: u32 = 25_000_000;

#[exception]
fn SysTick() {
    MILLIS.fetch_add(1, Ordering::Relaxed);
}

#[entry]
fn main() -> ! {
    {
        use core::mem::MaybeUninit;
        static mut HEAP_MEM: [MaybeUninit<u8>; HEAP_SIZE] = [MaybeUninit::uninit(); HEAP_SIZE];
        // SAFETY: runs once, before any allocation; HEAP_MEM is used by nothing else.
        unsafe { HEAP.init(core::ptr::addr_of_mut!(HEAP_MEM) as usize, HEAP_SIZE) }
    }
    let Some(mut core) = cortex_m::Peripherals::take() else {
        fail(&"core peripherals already taken")
    };
    core.SYST.set_clock_source(SystClkSource::Core);
    core.SYST.set_reload(CORE_HZ / 1000 - 1);
    core.SYST.clear_current();
    core.SYST.enable_counter();
    core.SYST.enable_interrupt();

    let Some(flash) = flash::HostFileFlash::open(b"wraft-voter.flash\0") else {
        fail(&"cannot open wraft-voter.flash (is QEMU run with semihosting on?)")
    };
    let (ring, mut key_sector) = flash.split();
    // Fail closed: a voter without the cluster key would have to answer anyone.
    let key = match load_key(&mut key_sector, 0) {
        Ok(key) => key,
        Err(e) => fail(&e),
    };
    // Opening counts this boot durably before anything is served: the boot count is half
    // of every session's nonce.
    let (store, state) = match FlashStore::open(ring) {
        Ok(opened) => opened,
        Err(e) => fail(&e),
    };
    let mut auth = VoterAuth::new(&key, state.boots);
    #[cfg(feature = "mac-timing")]
    mac_timing();
    hprintln!(
        "wraft-voter: boot {} vote T{}-N{}{} last {:?} committed {:?}",
        state.boots,
        state.vote.leader.term,
        state.vote.leader.node,
        if state.vote.committed {
            " (committed)"
        } else {
            ""
        },
        state.last().map(|l| l.index),
        state.committed.map(|c| c.index),
    );
    let mut voter = PassiveVoter::new(state, store);
    let mut ports = [
        VoterPort::new(uart::Uart::new(uart::UART0)),
        VoterPort::new(uart::Uart::new(uart::UART1)),
    ];
    // SAFETY: the handler (DefaultHandler below) only acknowledges the UARTs' RX interrupts;
    // no critical section relies on these lines being masked.
    unsafe {
        cortex_m::peripheral::NVIC::unmask(uart::RxIrq::Uart0);
        cortex_m::peripheral::NVIC::unmask(uart::RxIrq::Uart1);
    }
    // Milliseconds since boot as a u64 (the u32 tick count wraps after 49 days).
    let (mut now, mut seen) = (0u64, MILLIS.load(Ordering::Relaxed));
    let mut clock = move || {
        let tick = MILLIS.load(Ordering::Relaxed);
        now += u64::from(tick.wrapping_sub(seen));
        seen = tick;
        now
    };
    loop {
        for port in &mut ports {
            // The UART's error type is Infallible.
            let _ = port.poll(&mut voter, &mut auth, &mut clock);
        }
        // Sleep until a byte or the next tick. With interrupts masked, a byte that arrives
        // between the check and `wfi` still wakes it (the interrupt is pending).
        cortex_m::interrupt::free(|_| {
            let idle = [uart::UART0, uart::UART1]
                .into_iter()
                .all(|base| !uart::Uart::at(base).rx_ready());
            if idle {
                cortex_m::asm::wfi();
            }
        });
    }
}

/// A UART's RX interrupt: acknowledge it; the main loop reads the byte.
#[exception]
unsafe fn DefaultHandler(_irqn: i16) {
    for base in [uart::UART0, uart::UART1] {
        uart::Uart::at(base).clear_rx_interrupt();
    }
}

/// Prints how long sealing a heartbeat's answer takes (one tag over a typical frame), from
/// SysTick over many: `cargo build --release --features mac-timing` (docs/embedded.md).
#[cfg(feature = "mac-timing")]
fn mac_timing() {
    let key = wraft_core::link::mac::MacKey::new(&[7; 32]);
    let msg = [0x5Au8; 40];
    const N: u32 = 2000;
    let start = MILLIS.load(Ordering::Relaxed);
    let mut acc = 0u8;
    for _ in 0..N {
        acc ^= key.tag(b'A', core::hint::black_box(&msg))[0];
    }
    let ms = MILLIS.load(Ordering::Relaxed).wrapping_sub(start);
    hprintln!(
        "wraft-voter: {} tags of 40 bytes in {} ms ({} us each) [{}]",
        N,
        ms,
        ms * 1000 / N,
        acc
    );
}

fn fail(why: &dyn core::fmt::Display) -> ! {
    hprintln!("wraft-voter: {}", why);
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}

/// A fault (bad memory access, undefined instruction): say where, then stop, so the host
/// sees the voter gone rather than a core silently spinning.
#[exception]
unsafe fn HardFault(frame: &cortex_m_rt::ExceptionFrame) -> ! {
    fail(&format_args!("hard fault at pc {:#010x}", frame.pc()))
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    hprintln!("wraft-voter: panic: {}", info);
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
