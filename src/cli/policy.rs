//! The model's execution policy from the environment: the CLI's switches for comparisons, which
//! are not worth command-line flags.

use gitcap::model::int8::Activations;
use gitcap::model::Policy;

/// The default policy, changed by
///
/// - `GITCAP_NO_AVX512` (set, not `0`): f32 products stay on candle's kernels, for comparisons and
///   for CPUs whose AVX-512 is slower than their AVX2;
/// - `GITCAP_INT8`: how q8_0 products of 8 rows or more are computed, to compare with the browser
///   (whose forms give the same bits as the portable one) or with candle: `off` (candle's q8_0
///   kernels, what CPUs without AVX-512 VNNI run), `portable` (the integer kernel in plain
///   integer arithmetic: the SIMD128 page's results), `relaxed` (the same with activations at
///   ±63: the relaxed SIMD page's results). Unset: the fastest form for this CPU.
///
/// An error names a value it does not know.
pub fn from_env() -> Result<Policy, String> {
    let mut policy = Policy::default();
    if std::env::var_os("GITCAP_NO_AVX512").is_some_and(|v| v != "0") {
        policy = policy.with_avx512(false);
    }
    let Some(value) = std::env::var_os("GITCAP_INT8") else {
        return Ok(policy);
    };
    Ok(match value.to_str() {
        Some("off") => policy.with_int8_min_rows(usize::MAX),
        Some(form @ ("portable" | "relaxed")) => policy
            .with_portable_int8(true)
            .with_int8_min_rows(8)
            .with_int8_activations(Activations {
                levels: if form == "relaxed" { 63 } else { 127 },
                per_row: false,
            }),
        _ => {
            return Err(format!(
                "GITCAP_INT8={} is not one of off, portable, relaxed",
                value.to_string_lossy()
            ))
        }
    })
}
