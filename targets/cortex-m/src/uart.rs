//! The CMSDK APB UART of ARM's MPS2 boards (QEMU's mps2-an386 emulates five), polled.

use core::convert::Infallible;
use core::ptr::{read_volatile, write_volatile};

/// UART0 and UART1: one wired to each Linux host (QEMU: the first two `-serial` options).
pub const UART0: usize = 0x4000_4000;
/// See [`UART0`].
pub const UART1: usize = 0x4000_5000;

/// Their RX interrupts on the MPS2 boards (TX is the next number).
#[derive(Debug, Clone, Copy)]
pub enum RxIrq {
    /// UART0 RX.
    Uart0 = 0,
    /// UART1 RX.
    Uart1 = 2,
}

// SAFETY: the numbers are the board's interrupt numbers for these lines.
unsafe impl cortex_m::interrupt::InterruptNumber for RxIrq {
    fn number(self) -> u16 {
        self as u16
    }
}

const DATA: usize = 0x00;
const STATE: usize = 0x04;
const CTRL: usize = 0x08;
const INTSTATUS: usize = 0x0C;
const BAUDDIV: usize = 0x10;
const STATE_TX_FULL: u32 = 1 << 0;
const STATE_RX_FULL: u32 = 1 << 1;
/// TX and RX on, and the RX interrupt (so a byte wakes the core from `wfi`).
const CTRL_ENABLE: u32 = 0b1011;
const INT_RX: u32 = 1 << 1;
/// 25 MHz peripheral clock / 115 200 baud.
const DIVISOR: u32 = 25_000_000 / 115_200;

/// One UART at its register block's base address.
#[derive(Debug)]
pub struct Uart {
    base: usize,
}

impl Uart {
    /// Enables the UART at `base` (one of the constants above) at 115 200 baud, 8N1.
    pub fn new(base: usize) -> Self {
        let uart = Self { base };
        uart.set(BAUDDIV, DIVISOR);
        uart.set(CTRL, CTRL_ENABLE);
        uart
    }

    /// Whether a byte waits to be read.
    pub fn rx_ready(&self) -> bool {
        self.get(STATE) & STATE_RX_FULL != 0
    }

    /// Acknowledges the RX interrupt (the byte stays until read).
    pub fn clear_rx_interrupt(&self) {
        self.set(INTSTATUS, INT_RX);
    }

    /// The UART at `base` as it is (no reconfiguration).
    pub fn at(base: usize) -> Self {
        Self { base }
    }

    fn get(&self, reg: usize) -> u32 {
        // SAFETY: `base` is one of the board's UART register blocks (the constants above),
        // mapped for the program's whole life; the registers are 32-bit and aligned.
        unsafe { read_volatile((self.base + reg) as *const u32) }
    }

    fn set(&self, reg: usize, value: u32) {
        // SAFETY: as in `get`.
        unsafe { write_volatile((self.base + reg) as *mut u32, value) }
    }
}

impl embedded_io::ErrorType for Uart {
    type Error = Infallible;
}

impl embedded_io::ReadReady for Uart {
    fn read_ready(&mut self) -> Result<bool, Infallible> {
        Ok(self.rx_ready())
    }
}

impl embedded_io::Read for Uart {
    /// Blocks for the first byte, then takes what else is already there.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        let mut n = 0;
        while n < buf.len() {
            if self.get(STATE) & STATE_RX_FULL == 0 {
                if n > 0 {
                    break;
                }
                continue;
            }
            buf[n] = self.get(DATA) as u8;
            n += 1;
        }
        Ok(n)
    }
}

impl embedded_io::Write for Uart {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        for &byte in buf {
            while self.get(STATE) & STATE_TX_FULL != 0 {}
            self.set(DATA, u32::from(byte));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}
