//! Error metrics between a reference tensor `W` and a candidate `Q` of the same shape.
//!
//! # Definitions (all sums over every element, in `f64`)
//! With `e = W − Q`, `n` the element count:
//!
//! | metric    | definition                         |
//! |-----------|------------------------------------|
//! | `mse`     | `Σe² / n`                          |
//! | `rmse`    | `sqrt(mse)`                        |
//! | `max_abs` | `max |e|`                          |
//! | `rel_fro` | `sqrt(Σe²) / sqrt(ΣW²)` (‖W−Q‖/‖W‖) |
//! | `sqnr_db` | `10·log10(ΣW² / Σe²)`              |
//! | `cosine`  | `ΣWQ / (sqrt(ΣW²)·sqrt(ΣQ²))`      |
//!
//! Each element is widened to `f64` before it is subtracted or squared, so `e` and the squares
//! are exact; only the additions round. That is what numpy computes on `float64` copies of the
//! same arrays (numpy sums pairwise, we sum in fixed chunks, so the last bits may differ; the
//! cross-check compares with a relative tolerance of 1e-9).
//!
//! # Edge cases (each one a named test)
//! - **Identical** (`Σe² = 0`, which includes two all-zero tensors): `sqnr_db = +inf`,
//!   `cosine = 1`, `rel_fro = 0`, `mse = rmse = max_abs = 0`. This is a definition for the
//!   zero/zero case, where the formulas say 0/0: two equal tensors agree perfectly.
//! - **Zero reference, nonzero candidate** (`ΣW² = 0 < Σe²`): `sqnr_db = −inf`,
//!   `rel_fro = +inf`, `cosine = 0` (a zero vector shares no direction with anything; numpy
//!   would say 0/0 = NaN, the test states the convention).
//! - **Zero candidate, nonzero reference**: `cosine = 0`, `sqnr_db = 0` (all signal is error),
//!   `rel_fro = 1`; these follow from the formulas.
//! - **NaN or ±inf in either tensor**: the sums are what IEEE arithmetic makes of them, exactly
//!   like numpy: a NaN anywhere (or `inf − inf`) makes `mse`, `rmse`, `max_abs`, `rel_fro`,
//!   `sqnr_db` and `cosine` NaN. Nothing is silently skipped; `nonfinite_ref` /
//!   `nonfinite_cand` count the offending elements so a report can say why. Bitwise-identical
//!   tensors that contain NaN are therefore *not* "identical" in the sense above.
//! - **Empty tensors** (`n = 0`): identical by the first rule, with `mse = rmse = 0`.
//!
//! # Determinism
//! A tensor is cut into chunks whose boundaries depend only on the two dtypes and the shape
//! (never on the thread count); each chunk is summed front to back into a [`Partial`], and
//! partials are combined in chunk order ([`Partial::merge`]). The result is bit-identical for
//! any number of threads.

use serde::{Deserialize, Serialize};

/// Running sums over a run of elements. Merging is associative only up to rounding, so callers
/// merge in a fixed order.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Partial {
    pub n: u64,
    /// `ΣW²`
    pub sum_ref2: f64,
    /// `ΣQ²`
    pub sum_cand2: f64,
    /// `ΣWQ`
    pub sum_cross: f64,
    /// `Σ(W−Q)²`
    pub sum_err2: f64,
    /// `max |W−Q|` over non-NaN differences.
    pub max_abs: f64,
    /// Whether some difference was NaN (then `max_abs` is NaN, as numpy's `max` says).
    pub nan_diff: bool,
    pub nonfinite_ref: u64,
    pub nonfinite_cand: u64,
}

impl Partial {
    /// Sums one run of paired elements, front to back.
    pub fn of(reference: &[f32], candidate: &[f32]) -> Partial {
        debug_assert_eq!(reference.len(), candidate.len());
        let mut p = Partial { n: reference.len() as u64, ..Partial::default() };
        for (&w, &q) in reference.iter().zip(candidate) {
            let (w, q) = (w as f64, q as f64);
            let e = w - q;
            p.sum_ref2 += w * w;
            p.sum_cand2 += q * q;
            p.sum_cross += w * q;
            p.sum_err2 += e * e;
            let a = e.abs();
            if a.is_nan() {
                p.nan_diff = true;
            } else if a > p.max_abs {
                p.max_abs = a;
            }
            p.nonfinite_ref += u64::from(!w.is_finite());
            p.nonfinite_cand += u64::from(!q.is_finite());
        }
        p
    }

    /// `self` followed by `next`.
    pub fn merge(self, next: Partial) -> Partial {
        Partial {
            n: self.n + next.n,
            sum_ref2: self.sum_ref2 + next.sum_ref2,
            sum_cand2: self.sum_cand2 + next.sum_cand2,
            sum_cross: self.sum_cross + next.sum_cross,
            sum_err2: self.sum_err2 + next.sum_err2,
            max_abs: self.max_abs.max(next.max_abs),
            nan_diff: self.nan_diff || next.nan_diff,
            nonfinite_ref: self.nonfinite_ref + next.nonfinite_ref,
            nonfinite_cand: self.nonfinite_cand + next.nonfinite_cand,
        }
    }

    /// The metrics the sums describe (see the module documentation for every edge case).
    pub fn finish(&self) -> Metrics {
        let n = self.n;
        let (s_w, s_q, s_wq, s_e) = (self.sum_ref2, self.sum_cand2, self.sum_cross, self.sum_err2);
        let max_abs = if self.nan_diff { f64::NAN } else { self.max_abs };
        let mse = if n == 0 { 0.0 } else { s_e / n as f64 };
        let (rel_fro, sqnr_db, cosine) = if s_e == 0.0 {
            // Identical (Σe² is exactly zero only when every difference is).
            (0.0, f64::INFINITY, 1.0)
        } else if s_w == 0.0 && s_e.is_finite() {
            (f64::INFINITY, f64::NEG_INFINITY, 0.0)
        } else {
            let cosine =
                if s_q == 0.0 && s_w.is_finite() { 0.0 } else { s_wq / (s_w.sqrt() * s_q.sqrt()) };
            (s_e.sqrt() / s_w.sqrt(), 10.0 * (s_w / s_e).log10(), cosine)
        };
        Metrics {
            mse,
            rmse: mse.sqrt(),
            max_abs,
            rel_fro,
            sqnr_db,
            cosine,
            nonfinite_ref: self.nonfinite_ref,
            nonfinite_cand: self.nonfinite_cand,
        }
    }
}

/// Error metrics of one tensor pair. Non-finite values serialize as the JSON strings `"inf"`,
/// `"-inf"` and `"nan"` (plain JSON has no such numbers, and `null` would not tell +inf — the
/// identical case — from NaN); Python reads them back with `float(x)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    #[serde(with = "nonfinite")]
    pub mse: f64,
    #[serde(with = "nonfinite")]
    pub rmse: f64,
    #[serde(with = "nonfinite")]
    pub max_abs: f64,
    #[serde(with = "nonfinite")]
    pub rel_fro: f64,
    #[serde(with = "nonfinite")]
    pub sqnr_db: f64,
    #[serde(with = "nonfinite")]
    pub cosine: f64,
    /// NaN and ±inf elements in the reference.
    pub nonfinite_ref: u64,
    /// NaN and ±inf elements in the candidate.
    pub nonfinite_cand: u64,
}

/// Serde for an `f64` that may be non-finite: finite values as numbers, the rest as strings.
pub mod nonfinite {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else if x.is_nan() {
            s.serialize_str("nan")
        } else if *x > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Num {
            F(f64),
            S(String),
        }
        match Num::deserialize(d)? {
            Num::F(x) => Ok(x),
            Num::S(s) => match s.as_str() {
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                "nan" => Ok(f64::NAN),
                other => Err(serde::de::Error::custom(format!("not a number: {other:?}"))),
            },
        }
    }

    /// The same for `Option<f64>` (`None` → `null`).
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(x: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            match x {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
            #[derive(Deserialize)]
            struct Wrap(#[serde(with = "super")] f64);
            Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(w: &[f32], q: &[f32]) -> Metrics {
        Partial::of(w, q).finish()
    }

    #[test]
    fn known_values() {
        let m = metrics(&[3.0, 4.0], &[3.0, 3.0]);
        assert_eq!(m.mse, 0.5);
        assert_eq!(m.max_abs, 1.0);
        assert_eq!(m.rel_fro, 1.0 / 5.0);
        assert!((m.sqnr_db - 10.0 * 25f64.log10()).abs() < 1e-12);
        assert!((m.cosine - 21.0 / (5.0 * 18f64.sqrt())).abs() < 1e-15);
    }

    #[test]
    fn identical_tensors_give_infinite_sqnr_and_cosine_one() {
        let w = [1.5f32, -2.0, 0.0, 7.25];
        let m = metrics(&w, &w);
        assert_eq!(
            (m.sqnr_db, m.cosine, m.rel_fro, m.mse, m.max_abs),
            (f64::INFINITY, 1.0, 0.0, 0.0, 0.0)
        );
    }

    #[test]
    fn two_zero_tensors_are_identical() {
        let m = metrics(&[0.0, -0.0], &[0.0, 0.0]);
        assert_eq!((m.sqnr_db, m.cosine, m.rel_fro), (f64::INFINITY, 1.0, 0.0));
    }

    #[test]
    fn zero_reference_nonzero_candidate() {
        let m = metrics(&[0.0, 0.0], &[1.0, 0.0]);
        assert_eq!((m.sqnr_db, m.rel_fro, m.cosine), (f64::NEG_INFINITY, f64::INFINITY, 0.0));
        assert_eq!(m.mse, 0.5);
    }

    #[test]
    fn zero_candidate_nonzero_reference() {
        let m = metrics(&[2.0, 0.0], &[0.0, 0.0]);
        assert_eq!((m.sqnr_db, m.rel_fro, m.cosine), (0.0, 1.0, 0.0));
    }

    #[test]
    fn nan_propagates_like_numpy_and_is_counted() {
        let m = metrics(&[1.0, f32::NAN, 2.0], &[1.0, 1.0, 2.5]);
        assert!(m.mse.is_nan() && m.max_abs.is_nan() && m.sqnr_db.is_nan() && m.cosine.is_nan());
        assert!(m.rel_fro.is_nan());
        assert_eq!((m.nonfinite_ref, m.nonfinite_cand), (1, 0));
        // The same NaN on both sides is still NaN, not "identical".
        let m = metrics(&[f32::NAN], &[f32::NAN]);
        assert!(m.sqnr_db.is_nan());
        assert_eq!((m.nonfinite_ref, m.nonfinite_cand), (1, 1));
    }

    #[test]
    fn infinite_candidate_gives_infinite_error() {
        let m = metrics(&[1.0, 2.0], &[f32::INFINITY, 2.0]);
        assert_eq!(m.mse, f64::INFINITY);
        assert_eq!(m.sqnr_db, f64::NEG_INFINITY);
        assert_eq!(m.max_abs, f64::INFINITY);
        assert_eq!(m.nonfinite_cand, 1);
    }

    #[test]
    fn empty_tensor_is_identical() {
        let m = metrics(&[], &[]);
        assert_eq!((m.mse, m.sqnr_db, m.cosine), (0.0, f64::INFINITY, 1.0));
    }

    #[test]
    fn merge_in_order_equals_one_pass_on_exact_sums() {
        let w: Vec<f32> = (0..100).map(|i| i as f32 * 0.5).collect();
        let q: Vec<f32> = w.iter().map(|x| x + 0.25).collect();
        let whole = Partial::of(&w, &q);
        let parts = Partial::of(&w[..37], &q[..37]).merge(Partial::of(&w[37..], &q[37..]));
        // These sums are exact in f64, so chunking cannot change them.
        assert_eq!(whole, parts);
    }

    #[test]
    fn nonfinite_values_serialize_as_strings() {
        let m = metrics(&[1.0], &[1.0]);
        let v = serde_json::to_value(m).unwrap();
        assert_eq!(v["sqnr_db"], "inf");
        assert_eq!(v["cosine"], 1.0);
        let back: Metrics = serde_json::from_value(v).unwrap();
        assert_eq!(back.sqnr_db, f64::INFINITY);
        let nan = metrics(&[f32::NAN], &[0.0]);
        assert_eq!(serde_json::to_value(nan).unwrap()["mse"], "nan");
        assert_eq!(serde_json::to_value(metrics(&[0.0], &[1.0])).unwrap()["sqnr_db"], "-inf");
    }
}
