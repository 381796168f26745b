//! `fib`: computes `fib(n)` for `?n=N` with the naive doubly recursive definition
//! (`fib(0) = 0`, `fib(1) = 1`, `fib(n) = fib(n-1) + fib(n-2)`) and answers `200` with the
//! decimal number and a newline, e.g. `?n=30` -> `832040\n`.
//!
//! CPU-bound with call depth `n` and about `1.6^n` calls (n=30: ~2.7 M calls; every +1 costs
//! ~1.6x more). `n` is required and at most 93 (the largest whose result fits in a u64);
//! a missing or bad value gets `400`.

use guest_util::{required_u64_param, BadRequest};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

/// The largest `n` with `fib(n) <= u64::MAX`.
const N_MAX: u64 = 93;

/// The naive recursion, on purpose: this function is a CPU and call-stack workload.
#[inline(never)]
fn fib(n: u32) -> u64 {
    if n < 2 {
        u64::from(n)
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

fn run(query: &str) -> Result<String, BadRequest> {
    let n = required_u64_param(query, "n", N_MAX)?;
    // Lossless: n <= 93.
    let n = n as u32;
    Ok(format!("{}\n", fib(std::hint::black_box(n))))
}

struct Fib;

impl wasip2::exports::http::incoming_handler::Guest for Fib {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let query = guest_util::query_of(&request);
        guest_util::respond_result(out, run(&query));
    }
}

wasip2::http::proxy::export!(Fib);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let known = [(0, 0), (1, 1), (2, 1), (10, 55), (20, 6765), (30, 832_040)];
        for (n, expected) in known {
            assert_eq!(fib(n), expected);
        }
        assert_eq!(run("n=25"), Ok("75025\n".to_string()));
        assert!(run("n=94").is_err());
        assert!(run("").is_err());
    }
}
