//! Rounding that matches Python's `round(x, n)` on a double.
//!
//! Python rounds the exact binary value of `x` to `n` decimals, ties to even, and returns the
//! nearest double. Rust's `format!("{:.n$}")` performs exactly that decimal rounding, so the
//! round trip through the formatted string gives the same double Python would.

/// `round(x, n)` as Python computes it for a float.
pub fn round(x: f64, ndigits: usize) -> f64 {
    if !x.is_finite() {
        return x;
    }
    format!("{:.*}", ndigits, x).parse().unwrap_or(x)
}

#[cfg(test)]
mod tests {
    use super::round;

    #[test]
    fn matches_python_round() {
        // Values checked against CPython 3.11.
        assert_eq!(round(1.25, 1), 1.2);
        assert_eq!(round(2.675, 2), 2.67);
        assert_eq!(round(0.125, 2), 0.12);
        assert_eq!(round(0.375, 2), 0.38);
        assert_eq!(round(2.5, 0), 2.0);
        assert_eq!(round(3.5, 0), 4.0);
        assert_eq!(round(1.005, 2), 1.0);
        assert_eq!(round(0.45, 1), 0.5);
        assert_eq!(round(-1.25, 1), -1.2);
    }
}

/// Python's `str(x)` / `repr(x)` for a float: `3.0`, `0.1`, `1e+16`, `1.5e-05`.
pub fn py_str(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let a = x.abs();
    if a == 0.0 || (1e-4..1e16).contains(&a) {
        let s = format!("{x:?}");
        return if s.contains('.') || s.contains('e') {
            s
        } else {
            format!("{s}.0")
        };
    }
    // Scientific: Rust prints `1e16` / `1.5e-5`; Python prints `1e+16` / `1.5e-05`.
    let s = format!("{x:e}");
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let (sign, digits) = match exp.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("+", exp),
    };
    format!("{mant}e{sign}{digits:0>2}")
}

#[cfg(test)]
mod py_str_tests {
    use super::py_str;

    #[test]
    fn matches_python_repr() {
        assert_eq!(py_str(3.0), "3.0");
        assert_eq!(py_str(0.1), "0.1");
        assert_eq!(py_str(2.67), "2.67");
        assert_eq!(py_str(-0.5), "-0.5");
        assert_eq!(py_str(1e16), "1e+16");
        assert_eq!(py_str(1e15), "1000000000000000.0");
        assert_eq!(py_str(1.5e-5), "1.5e-05");
        assert_eq!(py_str(0.0001), "0.0001");
        assert_eq!(py_str(0.0), "0.0");
    }
}
