//! `grow`: touches `?mb=N` MiB of linear memory, optionally holds it while burning CPU for
//! `?hold_ms=M` ms, then reads every byte back and answers `200` with
//! `checksum=<16 hex digits> mb=N\n`.
//!
//! It allocates one `Vec<u8>` of `N * 1048576` bytes and writes byte `i` (from 0) as
//! `(i * 31 + i / 4096) mod 256` - every page is written, and each 4 KiB page differs from its
//! neighbours. During `hold_ms` it spins on registers only (checking the wasi monotonic clock)
//! without touching the buffer, so a host can park the instance and swap its memory out and
//! back in. The checksum is FNV-1a 64 over all bytes in order (offset basis
//! `0xcbf29ce484222325`, prime `0x100000001b3`: `h = (h ^ byte) * prime`, wrapping), i.e.
//! [`grow_checksum`]; a swap-in that lost or misplaced a page gives a different value.
//! Known values: `mb=0` -> `cbf29ce484222325`, `mb=1` -> `dee857ef7f532325`,
//! `mb=16` -> `00d58b9437322325`, `mb=64` -> `4ca7d7a350622325`, `mb=256` -> `a15f87dfb5222325`.
//!
//! `mb` is required, at most 4095; `hold_ms` is optional (default 0), at most 600000. Bad values
//! get `400`; if the allocation fails (the host refused `memory.grow`) the answer is `507` with
//! `could not allocate N MiB\n` rather than a trap.

use guest_util::{required_u64_param, u64_param, BadRequest, NS_PER_MS};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

const MIB_BYTES: u64 = 1 << 20;
const MB_MAX: u64 = 4095;
const HOLD_MS_MAX: u64 = 600_000;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Byte `i` of the pattern: `(i * 31 + i / 4096) mod 256`.
#[inline(always)]
pub fn pattern_byte(i: usize) -> u8 {
    // Only the low 8 bits are kept, so wrapping arithmetic gives the same byte on any width.
    i.wrapping_mul(31).wrapping_add(i >> 12) as u8
}

/// FNV-1a 64 over `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// The expected checksum for `mb` MiB, computed without keeping the buffer.
pub fn grow_checksum(mb: u64) -> u64 {
    let len = usize::try_from(mb * MIB_BYTES).expect("mb fits the address space");
    (0..len).fold(FNV_OFFSET, |h, i| {
        (h ^ u64::from(pattern_byte(i))).wrapping_mul(FNV_PRIME)
    })
}

/// Burns CPU until `ms` ms of monotonic time have passed, touching registers only.
fn hold(ms: u64) {
    let deadline = guest_util::now_ns() + ms * NS_PER_MS;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while guest_util::now_ns() < deadline {
        for _ in 0..1024 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        x = std::hint::black_box(x);
    }
}

/// The outcome of a request: a `200` body, a `400`, or an allocation failure (`507`).
enum Outcome {
    Ok(String),
    Bad(BadRequest),
    NoMemory(u64),
}

fn run(query: &str) -> Outcome {
    let params = required_u64_param(query, "mb", MB_MAX)
        .and_then(|mb| Ok((mb, u64_param(query, "hold_ms", HOLD_MS_MAX)?.unwrap_or(0))));
    let (mb, hold_ms) = match params {
        Ok(params) => params,
        Err(bad) => return Outcome::Bad(bad),
    };
    let Ok(len) = usize::try_from(mb * MIB_BYTES) else {
        return Outcome::NoMemory(mb);
    };
    let mut buf: Vec<u8> = Vec::new();
    if buf.try_reserve_exact(len).is_err() {
        return Outcome::NoMemory(mb);
    }
    buf.extend((0..len).map(pattern_byte));
    // Make sure the writes happen before the hold and are not folded into the read-back.
    std::hint::black_box(&mut buf);
    if hold_ms > 0 {
        hold(hold_ms);
    }
    let checksum = fnv1a64(std::hint::black_box(&buf));
    Outcome::Ok(format!("checksum={checksum:016x} mb={mb}\n"))
}

struct Grow;

impl wasip2::exports::http::incoming_handler::Guest for Grow {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let query = guest_util::query_of(&request);
        match run(&query) {
            Outcome::Ok(text) => guest_util::respond_text(out, 200, &text),
            Outcome::Bad(bad) => guest_util::respond_bad_request(out, bad),
            Outcome::NoMemory(mb) => {
                guest_util::respond_text(out, 507, &format!("could not allocate {mb} MiB\n"))
            }
        }
    }
}

wasip2::http::proxy::export!(Grow);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_matches_definition() {
        for i in [
            0usize,
            1,
            255,
            4095,
            4096,
            4097,
            1 << 20,
            (1 << 20) + 12_345,
        ] {
            let expected = ((i as u64 * 31 + i as u64 / 4096) % 256) as u8;
            assert_eq!(pattern_byte(i), expected, "{i}");
        }
        // Wrapping on a 32-bit usize keeps the low byte: check a u32 overflow case by hand.
        let i: u64 = 0xffff_fff0;
        let wrapped = (i as u32).wrapping_mul(31).wrapping_add((i as u32) >> 12) as u8;
        assert_eq!(wrapped, ((i * 31 + i / 4096) % 256) as u8);
    }

    #[test]
    fn known_checksums() {
        assert_eq!(grow_checksum(0), FNV_OFFSET);
        assert_eq!(grow_checksum(1), 0xdee8_57ef_7f53_2325);
        assert_eq!(grow_checksum(16), 0x00d5_8b94_3732_2325);
        match run("mb=1") {
            Outcome::Ok(body) => assert_eq!(body, "checksum=dee857ef7f532325 mb=1\n"),
            _ => panic!("mb=1 should succeed"),
        }
    }

    #[test]
    fn a_lost_page_changes_the_checksum() {
        let mut buf: Vec<u8> = (0..(MIB_BYTES as usize)).map(pattern_byte).collect();
        assert_eq!(fnv1a64(&buf), grow_checksum(1));
        buf[8192..12288].fill(0);
        assert_ne!(fnv1a64(&buf), grow_checksum(1));
    }

    #[test]
    fn bad_queries() {
        assert!(matches!(run(""), Outcome::Bad(_)));
        assert!(matches!(run("mb=4096"), Outcome::Bad(_)));
        assert!(matches!(run("mb=1&hold_ms=x"), Outcome::Bad(_)));
    }
}
