//! The one place that calls `matrixmultiply`'s unsafe GEMM entry point, with every stride and
//! extent checked against the slices first.

/// A row-major view: `rows × cols` with row stride `ld` (elements), starting at `offset`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View {
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
    pub offset: usize,
    /// Read the view transposed (`cols × rows`).
    pub trans: bool,
}

impl View {
    pub fn new(rows: usize, cols: usize, ld: usize, offset: usize) -> Self {
        View { rows, cols, ld, offset, trans: false }
    }

    pub fn t(self) -> Self {
        View { trans: !self.trans, ..self }
    }

    /// (rows, cols) as seen by the product.
    fn dims(&self) -> (usize, usize) {
        if self.trans {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }

    /// (row stride, column stride) as seen by the product.
    fn strides(&self) -> (isize, isize) {
        if self.trans {
            (1, self.ld as isize)
        } else {
            (self.ld as isize, 1)
        }
    }

    fn fits(&self, len: usize) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        self.cols <= self.ld
            && self
                .offset
                .checked_add((self.rows - 1) * self.ld + self.cols)
                .is_some_and(|end| end <= len)
    }
}

/// `c = alpha·a·b + beta·c` in f32. Panics (a programming error, never input-driven) when a
/// view does not fit its slice or the dimensions disagree.
#[allow(clippy::too_many_arguments)] // the BLAS signature: three operands, their views, alpha, beta
pub(crate) fn sgemm(
    alpha: f32,
    a: &[f32],
    va: View,
    b: &[f32],
    vb: View,
    beta: f32,
    c: &mut [f32],
    vc: View,
) {
    let (m, k) = va.dims();
    let (k2, n) = vb.dims();
    let (m2, n2) = vc.dims();
    assert!(k == k2 && m == m2 && n == n2 && !vc.trans, "sgemm: dimension mismatch");
    assert!(va.fits(a.len()) && vb.fits(b.len()) && vc.fits(c.len()), "sgemm: view out of bounds");
    if m == 0 || n == 0 {
        return;
    }
    let (rsa, csa) = va.strides();
    let (rsb, csb) = vb.strides();
    let (rsc, csc) = vc.strides();
    // SAFETY: every view was checked to lie inside its slice (`fits`), the output does not alias
    // the inputs (distinct borrows), and the dimensions agree.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr().add(va.offset),
            rsa,
            csa,
            b.as_ptr().add(vb.offset),
            rsb,
            csb,
            beta,
            c.as_mut_ptr().add(vc.offset),
            rsc,
            csc,
        );
    }
}
