//! The model's execution policy from the environment: the CLI's switches for comparisons, which
//! are not worth command-line flags.

use std::ffi::OsStr;

use gitcap::model::int8::Activations;
use gitcap::model::{Policy, WideKernel};

/// The default policy, changed by
///
/// - `GITCAP_WIDE`: the form of the wide f32 kernel, for comparisons: `off` (candle's kernels),
///   `avx2` (the AVX2 form, also on CPUs with AVX-512). Unset: the widest form this CPU runs;
/// - `GITCAP_INT8`: how q8_0 products are computed, to compare with the browser (whose forms give
///   the same bits as the portable one) or with candle: `off` (what CPUs without AVX-512 VNNI
///   run: candle's q8_0 kernels, or the weight expanded to f32 for many rows where candle has no
///   VNNI tiles), `portable` (every q8_0 product, decoding's single rows too, in the
///   integer kernel's plain integer arithmetic: the results of the SIMD128 page, and of the
///   relaxed SIMD page where the engine's dot multiplies full bytes exactly, as V8 on x86 with
///   AVX-VNNI does), `relaxed` (the same with the image encoder's activations at ±63, the text
///   decoder keeping ±127: the relaxed SIMD page's results where the engine's dot is exact for
///   7-bit operands only; the page's backend line says "x at ±63"). Unset: the fastest form for
///   this CPU (products of 8 rows or more).
///
/// An error names a value it does not know.
pub fn from_env() -> Result<Policy, String> {
    from_values(
        std::env::var_os("GITCAP_WIDE").as_deref(),
        std::env::var_os("GITCAP_INT8").as_deref(),
    )
}

/// `from_env` for these values of `GITCAP_WIDE` and `GITCAP_INT8`.
fn from_values(wide: Option<&OsStr>, int8: Option<&OsStr>) -> Result<Policy, String> {
    let mut policy = Policy::default();
    if let Some(value) = wide {
        let kernel = match value.to_str() {
            Some("off") => WideKernel::Off,
            Some("avx2") => WideKernel::Avx2,
            _ => {
                return Err(format!(
                    "GITCAP_WIDE={} is not one of off, avx2",
                    value.to_string_lossy()
                ))
            }
        };
        policy = policy.with_wide_kernel(kernel);
    }
    let Some(value) = int8 else {
        return Ok(policy);
    };
    Ok(match value.to_str() {
        Some("off") => policy.with_int8_min_rows(usize::MAX),
        Some(form @ ("portable" | "relaxed")) => policy
            .with_portable_int8(true)
            .with_int8_min_rows(1)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(wide: Option<&str>, int8: Option<&str>) -> Result<Policy, String> {
        from_values(wide.map(OsStr::new), int8.map(OsStr::new))
    }

    #[test]
    fn unset_is_the_default() {
        let p = policy(None, None).unwrap();
        let d = Policy::default();
        assert_eq!(p.wide_kernel(), d.wide_kernel());
        assert_eq!(p.portable_int8(), d.portable_int8());
        assert_eq!(p.int8_min_rows(), d.int8_min_rows());
        assert_eq!(p.int8_activations(), d.int8_activations());
    }

    #[test]
    fn wide_names_a_form_or_off() {
        let wide = |v| policy(Some(v), None).map(|p| p.wide_kernel());
        assert_eq!(wide("off"), Ok(WideKernel::Off));
        assert_eq!(wide("avx2"), Ok(WideKernel::Avx2));
        assert_eq!(Policy::default().wide_kernel(), WideKernel::Widest);
        let err = wide("1").unwrap_err();
        assert!(
            err.contains("GITCAP_WIDE=1") && err.contains("off, avx2"),
            "{err}"
        );
    }

    #[test]
    fn int8_forms() {
        let off = policy(None, Some("off")).unwrap();
        assert_eq!(off.int8_min_rows(), Some(usize::MAX));
        for (form, levels) in [("portable", 127), ("relaxed", 63)] {
            let p = policy(None, Some(form)).unwrap();
            assert!(p.portable_int8(), "{form}");
            assert_eq!(p.int8_min_rows(), Some(1), "{form}");
            assert_eq!(p.int8_activations().levels, levels, "{form}");
        }
        let err = policy(None, Some("fast")).unwrap_err();
        assert!(err.contains("GITCAP_INT8=fast"), "{err}");
    }
}
