//! Small statistics the policies need, with the arithmetic of the library
//! CloudSim 3.0.3 used (Apache commons-math 3: `SimpleRegression`,
//! `Percentile` in its default "legacy" estimation) so that thresholds
//! computed from the same numbers come out the same, bit for bit where it
//! matters: linear regression, median, MAD, IQR, quantiles, and R^2 of a
//! multiple regression (for the MC selection policy).

// Index loops on purpose: matrix code reads best with explicit indices.
#![allow(clippy::needless_range_loop)]

/// Intercept and slope of an ordinary least-squares line through
/// (1, y0), (2, y1), ..., updated one point at a time as commons-math's
/// `SimpleRegression` does. `None` with fewer than 3 points or no spread.
pub fn linear_fit(y: &[f64]) -> Option<(f64, f64)> {
    let (mut n, mut xbar, mut ybar) = (0.0f64, 0.0, 0.0);
    let (mut sxx, mut sxy, mut sx, mut sy) = (0.0, 0.0, 0.0, 0.0);
    for (i, &yi) in y.iter().enumerate() {
        let x = (i + 1) as f64;
        if n == 0.0 {
            xbar = x;
            ybar = yi;
        } else {
            let fact1 = 1.0 + n;
            let fact2 = n / (1.0 + n);
            let dx = x - xbar;
            let dy = yi - ybar;
            sxx += dx * dx * fact2;
            sxy += dx * dy * fact2;
            xbar += dx / fact1;
            ybar += dy / fact1;
        }
        sx += x;
        sy += yi;
        n += 1.0;
    }
    if n < 3.0 || sxx.abs() < 10.0 * f64::MIN_POSITIVE {
        return None;
    }
    let slope = sxy / sxx;
    let intercept = (sy - slope * sx) / n;
    Some((intercept, slope))
}

/// commons-math `Percentile.evaluate(values, p)` (legacy estimation), p in
/// (0, 100].
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n == 1 {
        return values[0];
    }
    with_copy(values, |s| percentile_of(s, p))
}

/// [`percentile`] of `s`, which it reorders.
fn percentile_of(s: &mut [f64], p: f64) -> f64 {
    let n = s.len();
    let pos = p * (n as f64 + 1.0) / 100.0;
    let fpos = pos.floor();
    let ipos = fpos as usize;
    let dif = pos - fpos;
    if pos < 1.0 {
        return nth(s, 0);
    }
    if pos >= n as f64 {
        return nth(s, n - 1);
    }
    let lower = nth(s, ipos - 1);
    // The next order statistic is the least of the values the selection
    // left above the one it placed.
    let upper = s[ipos..]
        .iter()
        .copied()
        .min_by(f64::total_cmp)
        .unwrap_or(lower);
    lower + dif * (upper - lower)
}

/// Runs `f` on a scratch copy of `values`, on the stack when it is as
/// short as a utilization history (the policies call this in their inner
/// loops).
fn with_copy<R>(values: &[f64], f: impl FnOnce(&mut [f64]) -> R) -> R {
    const STACK: usize = 64;
    if values.len() <= STACK {
        let mut buf = [0.0; STACK];
        let s = &mut buf[..values.len()];
        s.copy_from_slice(values);
        f(s)
    } else {
        f(&mut values.to_vec())
    }
}

/// The `k`-th smallest value (order statistics are unique, so selection
/// gives what sorting would).
fn nth(s: &mut [f64], k: usize) -> f64 {
    *s.select_nth_unstable_by(k, f64::total_cmp).1
}

pub fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

/// Median absolute deviation (CloudSim's `MathUtil.mad`).
pub fn mad(data: &[f64]) -> f64 {
    if data.is_empty() {
        return 0.0;
    }
    let m = median(data);
    with_copy(data, |dev| {
        for x in dev.iter_mut() {
            *x = (m - *x).abs();
        }
        median(dev)
    })
}

/// Interquartile range as CloudSim's `MathUtil.iqr` computes it.
pub fn iqr(data: &[f64]) -> f64 {
    let n = data.len() as f64;
    let q1 = ((0.25 * (n + 1.0) + 0.5).floor() as usize).saturating_sub(1);
    let q3 = ((0.75 * (n + 1.0) + 0.5).floor() as usize).saturating_sub(1);
    if q3 >= data.len() || q1 >= data.len() {
        return 0.0;
    }
    with_copy(data, |s| {
        let upper = nth(s, q3);
        // The selection left the q3 smallest values in front.
        let lower = if q1 < q3 {
            nth(&mut s[..q3], q1)
        } else {
            upper
        };
        upper - lower
    })
}

/// Length of `data` without its trailing zeros, as CloudSim's
/// `countNonZeroBeginning` counts it (an all-zero array counts 1).
pub fn count_non_zero_beginning(data: &[f64]) -> usize {
    let mut i = data.len() as isize - 1;
    while i >= 0 {
        let v = data[i as usize];
        i -= 1;
        if v != 0.0 {
            break;
        }
    }
    (i + 2) as usize
}

/// Coefficient of determination of the least-squares fit of `y` on the
/// rows of `xs` plus an intercept. `None` when there are not more
/// observations than parameters (Flanagan's `Regression` refuses), and NaN
/// when the system is singular or `y` is constant.
pub fn r_squared(xs: &[&[f64]], y: &[f64]) -> Option<f64> {
    let m = y.len();
    let p = xs.len() + 1;
    if m <= p {
        return None;
    }
    // Normal equations A b = c with A = X'X.
    let col = |j: usize, i: usize| if j == 0 { 1.0 } else { xs[j - 1][i] };
    let mut a = vec![vec![0.0; p + 1]; p];
    for r in 0..p {
        for c in 0..p {
            a[r][c] = (0..m).map(|i| col(r, i) * col(c, i)).sum();
        }
        a[r][p] = (0..m).map(|i| col(r, i) * y[i]).sum();
    }
    for k in 0..p {
        let piv = (k..p)
            .max_by(|&i, &j| a[i][k].abs().total_cmp(&a[j][k].abs()))
            .unwrap_or(k);
        a.swap(k, piv);
        if a[k][k].abs() < 1e-12 {
            return Some(f64::NAN);
        }
        for r in 0..p {
            if r != k {
                let f = a[r][k] / a[k][k];
                for c in k..=p {
                    a[r][c] -= f * a[k][c];
                }
            }
        }
    }
    let b: Vec<f64> = (0..p).map(|k| a[k][p] / a[k][k]).collect();
    let mean = y.iter().sum::<f64>() / m as f64;
    let (mut ssr, mut sst) = (0.0, 0.0);
    for i in 0..m {
        let pred: f64 = (0..p).map(|j| b[j] * col(j, i)).sum();
        ssr += (y[i] - pred).powi(2);
        sst += (y[i] - mean).powi(2);
    }
    Some(1.0 - ssr / sst)
}

/// R^2 of regressing each row of `rows` on all the others (plus an
/// intercept), as [`r_squared`] would give row by row, from one Gram
/// matrix. `None` when there are not more observations than parameters.
pub fn r_squared_each(rows: &[Vec<f64>]) -> Option<Vec<f64>> {
    let n = rows.len();
    let m = rows.iter().map(Vec::len).min().unwrap_or(0);
    if m <= n {
        return None;
    }
    // Gram matrix of [1, row_0, ..., row_{n-1}]: each entry the sum over
    // k of the products in order, as `Iterator::sum` adds them (from its
    // own starting value), the n + 1 - a sums of row a side by side.
    let q = n + 1;
    let mut x = vec![1.0; m * q];
    for (j, row) in rows.iter().enumerate() {
        for (k, &v) in row[..m].iter().enumerate() {
            x[k * q + j + 1] = v;
        }
    }
    let start: f64 = std::iter::empty::<f64>().sum();
    let mut g = vec![vec![0.0; q]; q];
    let mut acc = vec![start; q];
    for a in 0..q {
        let acc = &mut acc[a..];
        acc.fill(start);
        for xk in x.chunks_exact(q) {
            let xa = xk[a];
            for (s, &xb) in acc.iter_mut().zip(&xk[a..]) {
                *s += xa * xb;
            }
        }
        for (b, &v) in (a..q).zip(acc.iter()) {
            g[a][b] = v;
            g[b][a] = v;
        }
    }
    // One inversion of the Gram matrix gives every regression at once:
    // the residual sum of squares of column j on all the others is
    // 1 / (G^-1)_jj. Singular matrices take the slow path below.
    if let Some(inv) = invert(&g) {
        let out: Vec<f64> = (0..n)
            .map(|i| {
                let yy = g[i + 1][i + 1];
                let sum_y = g[0][i + 1];
                let sst = yy - sum_y * sum_y / m as f64;
                1.0 - (1.0 / inv[i + 1]) / sst
            })
            .collect();
        if out.iter().all(|r| r.is_finite()) {
            return Some(out);
        }
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let idx: Vec<usize> = (0..=n).filter(|&j| j != i + 1).collect();
        let p = idx.len();
        let mut a = vec![vec![0.0; p + 1]; p];
        for (r, &ir) in idx.iter().enumerate() {
            for (c, &ic) in idx.iter().enumerate() {
                a[r][c] = g[ir][ic];
            }
            a[r][p] = g[ir][i + 1];
        }
        let mut singular = false;
        for k in 0..p {
            let piv = (k..p)
                .max_by(|&x, &y| a[x][k].abs().total_cmp(&a[y][k].abs()))
                .unwrap_or(k);
            a.swap(k, piv);
            if a[k][k].abs() < 1e-12 {
                singular = true;
                break;
            }
            for r in 0..p {
                if r != k {
                    let f = a[r][k] / a[k][k];
                    if f != 0.0 {
                        for c in k..=p {
                            a[r][c] -= f * a[k][c];
                        }
                    }
                }
            }
        }
        if singular {
            out.push(f64::NAN);
            continue;
        }
        // SSR = y'y - b'c at the least-squares solution.
        let yy = g[i + 1][i + 1];
        let bc: f64 = (0..p).map(|k| a[k][p] / a[k][k] * g[idx[k]][i + 1]).sum();
        let sum_y = g[0][i + 1];
        let sst = yy - sum_y * sum_y / m as f64;
        out.push(1.0 - (yy - bc) / sst);
    }
    Some(out)
}

/// Diagonal of the inverse of a small symmetric matrix, by Gauss-Jordan
/// with partial pivoting on [G | I]; `None` when it is (nearly) singular.
/// Rows are flat slices so that the eliminations run over contiguous
/// memory (each element gets the same operations in any order).
fn invert(g: &[Vec<f64>]) -> Option<Vec<f64>> {
    let p = g.len();
    let w = 2 * p;
    let mut a = vec![0.0; p * w];
    for (r, row) in g.iter().enumerate() {
        a[r * w..r * w + p].copy_from_slice(row);
        a[r * w + p + r] = 1.0;
    }
    let scale = g
        .iter()
        .enumerate()
        .map(|(i, r)| r[i].abs())
        .fold(0.0, f64::max)
        .max(1.0);
    let mut pivot = vec![0.0; w];
    for k in 0..p {
        let piv = (k..p).max_by(|&x, &y| a[x * w + k].abs().total_cmp(&a[y * w + k].abs()))?;
        if piv != k {
            let (lo, hi) = a.split_at_mut(piv * w);
            lo[k * w..(k + 1) * w].swap_with_slice(&mut hi[..w]);
        }
        if a[k * w + k].abs() < 1e-10 * scale {
            return None;
        }
        let d = a[k * w + k];
        for c in &mut a[k * w..(k + 1) * w] {
            *c /= d;
        }
        pivot.copy_from_slice(&a[k * w..(k + 1) * w]);
        for r in 0..p {
            if r != k {
                let row = &mut a[r * w..(r + 1) * w];
                let f = row[k];
                if f != 0.0 {
                    for (c, &pk) in row.iter_mut().zip(&pivot) {
                        *c -= f * pk;
                    }
                }
            }
        }
    }
    Some((0..p).map(|i| a[i * w + p + i]).collect())
}

/// Pearson correlation of two equally long series (0 when either is flat).
pub fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    if n < 2 {
        return 0.0;
    }
    let ma = a[..n].iter().sum::<f64>() / n as f64;
    let mb = b[..n].iter().sum::<f64>() / n as f64;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for i in 0..n {
        sab += (a[i] - ma) * (b[i] - mb);
        saa += (a[i] - ma).powi(2);
        sbb += (b[i] - mb).powi(2);
    }
    if saa <= 0.0 || sbb <= 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_on_a_line() {
        let (a, b) = linear_fit(&[1.0, 2.0, 3.0, 4.0]).unwrap_or_default();
        assert!((a - 0.0).abs() < 1e-12 && (b - 1.0).abs() < 1e-12);
        assert_eq!(linear_fit(&[1.0, 2.0]), None);
    }

    /// Percentile and IQR from a full sort, as their definitions read.
    #[test]
    fn order_statistics_match_a_sort() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for n in 1..=40 {
            let v: Vec<f64> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Repeats and zeros of both signs among the values.
                    [0.0, -0.0, 0.5, (x % 1000) as f64 / 7.0][(x % 4) as usize]
                })
                .collect();
            let mut s = v.clone();
            s.sort_by(f64::total_cmp);
            let nf = n as f64;
            let pos = 50.0 * (nf + 1.0) / 100.0;
            let fpos = pos.floor();
            let want = if n == 1 || pos < 1.0 {
                s[0]
            } else if pos >= nf {
                s[n - 1]
            } else {
                let i = fpos as usize;
                s[i - 1] + (pos - fpos) * (s[i] - s[i - 1])
            };
            assert_eq!(median(&v).to_bits(), want.to_bits(), "median, n {n}");
            let q1 = ((0.25 * (nf + 1.0) + 0.5).floor() as usize).saturating_sub(1);
            let q3 = ((0.75 * (nf + 1.0) + 0.5).floor() as usize).saturating_sub(1);
            let want = if q3 >= n { 0.0 } else { s[q3] - s[q1] };
            assert_eq!(iqr(&v).to_bits(), want.to_bits(), "iqr, n {n}");
        }
    }

    #[test]
    fn robust_statistics() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(mad(&[1.0, 1.0, 2.0, 2.0, 4.0, 6.0, 9.0]), 1.0);
        // n = 7: q1 = round(2) - 1 = 1, q3 = round(6) - 1 = 5.
        assert_eq!(iqr(&[7.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), 4.0);
        assert_eq!(count_non_zero_beginning(&[1.0, 2.0, 0.0, 0.0]), 2);
        assert_eq!(count_non_zero_beginning(&[0.0, 0.0]), 1);
    }

    #[test]
    fn r_squared_of_exact_fit_is_one() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [3.0, 5.0, 7.0, 9.0, 11.0];
        let r = r_squared(&[&x], &y).unwrap_or_default();
        assert!((r - 1.0).abs() < 1e-9);
        assert_eq!(r_squared(&[&x[..2]], &y[..2]), None);
    }

    #[test]
    fn gram_r_squared_matches_direct() {
        let a = vec![1.0, 3.0, 2.0, 5.0, 4.0, 6.0, 8.0];
        let b = vec![2.0, 1.0, 4.0, 3.0, 6.0, 5.0, 7.0];
        let c = vec![0.5, 0.1, 0.9, 0.4, 0.7, 0.2, 0.3];
        let rows = vec![a.clone(), b.clone(), c.clone()];
        let each = r_squared_each(&rows).unwrap_or_default();
        let direct = r_squared(&[&b, &c], &a).unwrap_or_default();
        assert!((each[0] - direct).abs() < 1e-9, "{} {}", each[0], direct);
        let direct = r_squared(&[&a, &b], &c).unwrap_or_default();
        assert!((each[2] - direct).abs() < 1e-9);
    }
}
